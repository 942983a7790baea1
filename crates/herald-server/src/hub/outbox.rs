//! A connection's bounded outbound queue.
//!
//! The hub pushes into it from the broker's delivery path (never blocking, never awaiting); the
//! connection's writer takes everything queued at once and writes it in one go. When a push would
//! exceed the bounds the outbox closes itself as a slow consumer and frees what it held: one slow
//! client costs at most its bound and never slows the fan-out to others.

use std::{
    collections::VecDeque,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use herald_core::{ChannelName, StreamPosition};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::Delivery;

/// Something queued for one connection. Pointer-sized payloads keep the queues small: the
/// common item is a shared message; the others are rare and boxed.
pub enum Item {
    /// A channel message, shared by every subscriber of the channel.
    Message(Arc<Delivery>),
    /// A subscription went live (or its stream was reset); rendered per transport because the
    /// SSE form carries the connection's own resume token.
    Subscribed(Box<Subscribed>),
    /// Bytes already encoded for this connection's transport (a WebSocket frame).
    Raw(Box<bytes::Bytes>),
}

/// See [`Item::Subscribed`].
pub struct Subscribed {
    pub id: Option<u64>,
    pub channel: ChannelName,
    pub position: StreamPosition,
    pub recovered: bool,
}

impl Item {
    pub fn raw(bytes: bytes::Bytes) -> Self {
        Item::Raw(Box::new(bytes))
    }

    pub fn subscribed(
        id: Option<u64>,
        channel: ChannelName,
        position: StreamPosition,
        recovered: bool,
    ) -> Self {
        Item::Subscribed(Box::new(Subscribed {
            id,
            channel,
            position,
            recovered,
        }))
    }

    /// What the item costs against the byte bound.
    fn cost(&self) -> usize {
        match self {
            Item::Message(d) => d.msg.data.len() + 64,
            Item::Subscribed(_) => 128,
            Item::Raw(b) => b.len(),
        }
    }
}

/// Why an outbox stopped accepting items; the writer tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue bound was hit: the client reads too slowly.
    SlowConsumer,
    /// The server is shutting down or draining.
    Shutdown,
    /// The connection is ending for a reason found on its read side (the client closed, broke
    /// the protocol, or stopped answering pings); `code` is the WebSocket close code.
    Closed { code: u16, reason: &'static str },
}

/// Queue bounds, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_items: usize,
    pub max_bytes: usize,
}

struct Inner {
    items: VecDeque<Item>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// The writer waiting for items, if it is parked.
    waker: Option<Waker>,
}

/// Queue capacity (items) a connection keeps between batches; more was a burst.
const KEEP_CAPACITY: usize = 16;

/// The queue between the hub and one connection's writer.
pub struct Outbox {
    inner: Mutex<Inner>,
    bounds: Bounds,
    /// Cancelled when the outbox closes. A writer blocked on a full socket cannot see the queue,
    /// so it (or the HTTP connection carrying an SSE stream) races its write against this.
    signal: CancellationToken,
}

/// What a writer takes out in one go.
pub struct Batch {
    pub items: VecDeque<Item>,
    /// Set when the outbox is closed: write `items`, then tell the client why and end.
    pub closed: Option<CloseReason>,
}

impl Outbox {
    /// An outbox whose closing cancels `signal`.
    pub fn new(bounds: Bounds, signal: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                closed: None,
                waker: None,
            }),
            bounds,
            signal,
        })
    }

    /// Queues `item`. Returns false when the outbox is (or just became) closed.
    pub fn push(&self, item: Item) -> bool {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return false;
        }
        let cost = item.cost();
        if inner.items.len() >= self.bounds.max_items || inner.bytes + cost > self.bounds.max_bytes
        {
            // Drop what is queued now rather than when the connection ends: the client will
            // resume from history anyway, and this is what bounds memory under a slow reader.
            inner.items = VecDeque::new();
            inner.bytes = 0;
            inner.closed = Some(CloseReason::SlowConsumer);
        } else {
            inner.items.push_back(item);
            inner.bytes += cost;
        }
        let ok = inner.closed.is_none();
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        drop(inner);
        if !ok {
            self.signal.cancel();
        }
        ok
    }

    /// Stops accepting items; the writer sees `reason` after draining what is queued.
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.inner.lock();
        if inner.closed.is_none() {
            inner.closed = Some(reason);
        }
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        drop(inner);
        self.signal.cancel();
    }

    /// Why the outbox closed, if it did.
    pub fn reason(&self) -> Option<CloseReason> {
        self.inner.lock().closed
    }

    /// Cancelled once the outbox is closed.
    pub fn signal(&self) -> &CancellationToken {
        &self.signal
    }

    /// Moves everything queued into `into` (which the caller has emptied), or registers the
    /// writer's waker when there is nothing to do. Ready with the close reason, if closed.
    ///
    /// The queues are swapped, not reallocated: a writer's emptied buffer becomes the next
    /// queue, so a steady stream costs no allocation per batch. A buffer grown by a burst is
    /// released instead of being kept by an otherwise idle connection.
    pub fn poll_take(
        &self,
        cx: &mut Context<'_>,
        into: &mut VecDeque<Item>,
    ) -> Poll<Option<CloseReason>> {
        debug_assert!(into.is_empty());
        if into.capacity() > KEEP_CAPACITY {
            *into = VecDeque::new();
        }
        let mut inner = self.inner.lock();
        if inner.items.is_empty() && inner.closed.is_none() {
            if !inner
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                inner.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        inner.bytes = 0;
        std::mem::swap(&mut inner.items, into);
        Poll::Ready(inner.closed)
    }

    /// Awaits the next batch into `into` (see [`Outbox::poll_take`]).
    pub async fn take_into(&self, into: &mut VecDeque<Item>) -> Option<CloseReason> {
        std::future::poll_fn(|cx| self.poll_take(cx, into)).await
    }

    /// Awaits the next batch in a new buffer.
    pub async fn take(&self) -> Batch {
        let mut items = VecDeque::new();
        let closed = self.take_into(&mut items).await;
        Batch { items, closed }
    }

    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Items currently queued and the bytes they count for (for metrics and tests).
    pub fn queued(&self) -> (usize, usize) {
        let inner = self.inner.lock();
        (inner.items.len(), inner.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer_and_frees_the_queue() {
        let o = Outbox::new(
            Bounds {
                max_items: 2,
                max_bytes: 1000,
            },
            CancellationToken::default(),
        );
        assert!(o.push(Item::raw(Bytes::from_static(b"a"))));
        assert!(o.push(Item::raw(Bytes::from_static(b"b"))));
        assert!(!o.push(Item::raw(Bytes::from_static(b"c"))));
        assert_eq!(o.queued(), (0, 0));
        assert!(o.signal().is_cancelled(), "a blocked writer learns of it");
        let batch = o.take().await;
        assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
        assert!(!o.push(Item::raw(Bytes::from_static(b"d"))), "stays closed");
    }

    #[tokio::test]
    async fn byte_bound_applies_too() {
        let o = Outbox::new(
            Bounds {
                max_items: 100,
                max_bytes: 10,
            },
            CancellationToken::default(),
        );
        assert!(o.push(Item::raw(Bytes::from_static(b"0123456789"))));
        assert!(!o.push(Item::raw(Bytes::from_static(b"x"))));
    }

    #[tokio::test]
    async fn take_returns_everything_in_order_and_wakes_on_push() {
        let o = Outbox::new(
            Bounds {
                max_items: 100,
                max_bytes: 1000,
            },
            CancellationToken::default(),
        );
        let o2 = o.clone();
        let reader = tokio::spawn(async move { o2.take().await.items.len() });
        tokio::task::yield_now().await;
        o.push(Item::raw(Bytes::from_static(b"a")));
        assert_eq!(reader.await.expect("task"), 1);
        o.push(Item::raw(Bytes::from_static(b"b")));
        o.push(Item::raw(Bytes::from_static(b"c")));
        o.close(CloseReason::Shutdown);
        let batch = o.take().await;
        assert_eq!(batch.items.len(), 2);
        assert_eq!(batch.closed, Some(CloseReason::Shutdown));
    }
}
