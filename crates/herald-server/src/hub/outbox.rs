//! A connection's bounded outbound queue, and the account of every byte the node holds for it.
//!
//! The hub pushes into it from the broker's delivery path (never blocking, never awaiting); the
//! connection's writer takes everything queued at once and writes it in one go. When a live push
//! would exceed the bounds (counting the batch the writer is still writing) the outbox closes
//! itself as a slow consumer and frees what it held: one slow client costs at most its bound and
//! never slows the fan-out to others.
//!
//! History replays (resumes) are paced instead: a replay pushes only while the queue is under
//! half its bounds, and otherwise waits for the writer to take ([`Outbox::room`]), so a resume of
//! any length completes for a client that reads, at the speed it reads, and never trips the
//! slow-consumer rule meant for clients that fall behind live traffic. What the hub holds for a
//! connection outside the queue (live messages buffered while a replay runs, the replay's page)
//! is counted as `held`, bounded by the same byte bound, and reported with the queue.
//!
//! Most pushes never reach the queue. A connection whose transport writes straight to its
//! socket attaches a [`Wire`]; while nothing is queued and its writer holds no batch, a push
//! writes the item to the socket at once (a non-blocking write, under this outbox's lock, so
//! it never interleaves with another write) and queues only what the kernel did not take, for
//! the writer task. A delivery then costs no task wake-up and no hand-off to another thread,
//! and order holds: anything queued goes first, the rest of a partly written frame before
//! anything else. The writer's batch is "busy" from the moment it takes it until it comes back
//! for more and finds nothing, so exactly one of the two writes at any time.
//!
//! Every outbox of a node adds what it holds to the node's [`Totals`] as it changes, so the
//! `/metrics` gauges are two atomic loads: a scrape never walks the connections or takes the
//! hub's locks (it used to, and stalled the fan-out of every channel in a shard meanwhile).

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
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
    pub fn cost(&self) -> usize {
        match self {
            Item::Message(d) => d.cost(),
            Item::Subscribed(_) => 128,
            Item::Raw(b) => b.len(),
        }
    }
}

/// A connection's socket, as the hub may write to it directly (see the module docs).
pub trait Wire: Send + Sync {
    /// Writes `item` without blocking (its encoding for this connection's transport).
    fn try_write(&self, item: Item) -> Sent;

    /// The transport's metric label (`ws`, `sse`).
    fn transport(&self) -> &'static str;
}

/// What [`Wire::try_write`] did.
pub enum Sent {
    /// The kernel took all of it.
    Whole,
    /// It took part: this is the rest of the bytes, to be written before anything else.
    Rest(Item),
    /// Nothing was written (the socket buffer is full, or the socket failed, which the writer
    /// then finds): queue this (the item, or its encoding).
    Nothing(Item),
}

/// What became of a pushed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Written to the socket (all, or a first part with the rest queued) of a connection of
    /// this transport.
    Written(&'static str),
    /// Queued for the writer.
    Queued,
    /// The outbox is (or just became) closed.
    Refused,
}

impl Pushed {
    /// Whether the item is on its way to the client (written or queued).
    pub fn accepted(self) -> bool {
        self != Pushed::Refused
    }
}

/// Why an outbox stopped accepting items; the writer tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue bound was hit: the client reads too slowly.
    SlowConsumer,
    /// The server is shutting down or draining.
    Shutdown,
    /// The subscriber's token expired (and was not refreshed): reconnect with a new token.
    TokenExpired,
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
    /// Cost of the batch the writer took and is writing (0 once it asks for more and finds
    /// nothing): still in memory, so it counts against the bound.
    writing: usize,
    closed: Option<CloseReason>,
    /// The writer waiting for items, if it is parked.
    waker: Option<Waker>,
    /// What history replays need; made on first use, so connections that only ever start from
    /// now (most of them, mostly idle) do not carry it.
    replay: Option<Box<Replay>>,
    /// The socket, for direct writes; `None` for transports that cannot take them (an SSE
    /// stream inside hyper) and until the transport attaches it.
    wire: Option<Arc<dyn Wire>>,
    /// The writer holds a batch it took and may be writing it: no direct write until it comes
    /// back for more and finds the queue empty.
    busy: bool,
    /// The front item is the rest of a partly written frame: it must be written whatever
    /// happens (dropping it would tear the frame the client is reading).
    torn: bool,
    /// What this outbox last added to its [`Totals`]: (items, bytes).
    counted: (usize, usize),
}

/// What all the outboxes of a node hold, for the `herald_queued_*` gauges.
#[derive(Debug, Default)]
pub struct Totals {
    /// Items queued, not yet taken by a writer.
    items: AtomicUsize,
    /// Every byte held: queued, being written, and held outside the queue for resumes.
    bytes: AtomicUsize,
}

impl Totals {
    /// (items, bytes) held by every outbox counted here.
    pub fn get(&self) -> (usize, usize) {
        (
            self.items.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    fn apply(&self, from: (usize, usize), to: (usize, usize)) {
        for (counter, from, to) in [(&self.items, from.0, to.0), (&self.bytes, from.1, to.1)] {
            if to > from {
                counter.fetch_add(to - from, Ordering::Relaxed);
            } else if from > to {
                counter.fetch_sub(from - to, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
struct Replay {
    /// Bytes the hub holds for this connection outside the queue (see the module docs).
    held: usize,
    /// Replays waiting for room (or for their turn to read a page).
    room: Vec<Waker>,
    /// Bumped whenever room may have appeared; a replay that found none waits for a change.
    room_gen: u64,
    /// A replay of this connection is reading a history page: one at a time per connection,
    /// so a stream resuming many channels holds one page, not one per channel.
    page_busy: bool,
}

impl Inner {
    fn replay(&mut self) -> &mut Replay {
        self.replay.get_or_insert_with(Box::default)
    }

    fn wake_room(&mut self) {
        if let Some(r) = &mut self.replay {
            r.room_gen += 1;
            for w in r.room.drain(..) {
                w.wake();
            }
        }
    }

    fn held(&self) -> usize {
        self.replay.as_ref().map_or(0, |r| r.held)
    }

    /// (items queued, every byte held), as reported by [`Outbox::queued`].
    fn holds(&self) -> (usize, usize) {
        (self.items.len(), self.bytes + self.writing + self.held())
    }

    /// Brings `totals` up to date with what this outbox holds now. Called before every unlock
    /// that may have changed it; free when nothing changed (a direct write).
    fn count(&mut self, totals: &Totals) {
        let now = self.holds();
        if now != self.counted {
            totals.apply(self.counted, now);
            self.counted = now;
        }
    }

    /// Writes `item` to the socket if the connection is idle (nothing queued, no batch held by
    /// the writer); returns whether anything was written and what is left to queue.
    fn write_direct(&mut self, item: Item) -> (Option<&'static str>, Option<Item>) {
        match &self.wire {
            Some(wire) if !self.busy && self.items.is_empty() => {
                let transport = wire.transport();
                match wire.try_write(item) {
                    Sent::Whole => (Some(transport), None),
                    Sent::Rest(rest) => {
                        self.torn = true;
                        (Some(transport), Some(rest))
                    }
                    Sent::Nothing(item) => (None, Some(item)),
                }
            }
            _ => (None, Some(item)),
        }
    }

    /// Queues the rest of a direct write (it must follow, bounds or not) or an item that fits.
    fn enqueue(&mut self, item: Item) {
        self.bytes += item.cost();
        self.items.push_back(item);
    }
}

/// Queue capacity (items) a connection keeps between batches; more was a burst.
const KEEP_CAPACITY: usize = 16;

/// The queue between the hub and one connection's writer.
pub struct Outbox {
    inner: Mutex<Inner>,
    bounds: Bounds,
    totals: Arc<Totals>,
    /// Cancelled when the outbox closes, for an SSE stream whose HTTP connection must end with
    /// it (a writer blocked on a full socket cannot see the queue). A WebSocket's task waits
    /// with [`Outbox::closed`] instead, and has none: a token is 112 B per connection.
    signal: Option<CancellationToken>,
}

/// What a writer takes out in one go.
pub struct Batch {
    pub items: VecDeque<Item>,
    /// Set when the outbox is closed: write `items`, then tell the client why and end.
    pub closed: Option<CloseReason>,
}

impl Outbox {
    /// An outbox whose closing cancels `signal`, counted in totals of its own.
    pub fn new(bounds: Bounds, signal: CancellationToken) -> Arc<Self> {
        Self::counted(bounds, signal, Arc::default())
    }

    /// An outbox that adds what it holds to `totals` (see the module docs), and whose closing
    /// cancels `signal`, if any.
    pub fn counted(
        bounds: Bounds,
        signal: impl Into<Option<CancellationToken>>,
        totals: Arc<Totals>,
    ) -> Arc<Self> {
        let signal = signal.into();
        Arc::new(Self {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                bytes: 0,
                writing: 0,
                closed: None,
                waker: None,
                replay: None,
                wire: None,
                busy: false,
                torn: false,
                counted: (0, 0),
            }),
            bounds,
            totals,
            signal,
        })
    }

    /// Lets pushes write to `wire` directly while the connection is idle (see the module docs).
    /// Call once the transport's own preamble (response head, ...) is on the socket.
    pub fn attach(&self, wire: Arc<dyn Wire>) {
        self.inner.lock().wire = Some(wire);
    }

    /// Writes `item` to the socket if the connection is idle, else queues it for the writer.
    /// A live push that would exceed the bounds closes the outbox as a slow consumer instead.
    pub fn push(&self, item: Item) -> Pushed {
        self.push_as(item, true)
    }

    /// [`Outbox::push`], writing directly only if `direct` (else always queued).
    pub fn push_as(&self, item: Item, direct: bool) -> Pushed {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Pushed::Refused;
        }
        let (written, rest) = if direct {
            inner.write_direct(item)
        } else {
            (None, Some(item))
        };
        let Some(item) = rest else {
            // Nothing changed but the socket.
            return written.map_or(Pushed::Queued, Pushed::Written);
        };
        let cost = item.cost();
        if written.is_some() {
            // The rest of a frame the client has started reading: always queued.
            inner.enqueue(item);
        } else if inner.items.len() >= self.bounds.max_items
            || inner.writing + inner.bytes + cost > self.bounds.max_bytes
        {
            // Drop what is queued now rather than when the connection ends: the client will
            // resume from history anyway, and this is what bounds memory under a slow reader.
            // Only the rest of a partly written frame stays, so the close follows whole frames.
            let mut items = std::mem::take(&mut inner.items);
            inner.bytes = 0;
            if inner.torn
                && let Some(rest) = items.pop_front()
            {
                inner.enqueue(rest);
            }
            drop(items);
            inner.closed = Some(CloseReason::SlowConsumer);
            inner.wake_room();
        } else {
            inner.enqueue(item);
        }
        let ok = inner.closed.is_none();
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        inner.count(&self.totals);
        drop(inner);
        if !ok {
            self.cancel_signal();
            return Pushed::Refused;
        }
        written.map_or(Pushed::Queued, Pushed::Written)
    }

    /// Queues a replayed history item if the queue is under half its bounds (or empty, with
    /// nothing being written: a replay always makes progress). Otherwise hands the item back with
    /// the room generation to wait on ([`Outbox::room`]); never closes the outbox.
    ///
    /// On success it also stops counting `held` bytes held outside the queue (what the replay
    /// kept for this item), under the same lock: the bytes move from held to queued at once, so
    /// a reader that has taken the item never sees them still held.
    pub fn push_replay(&self, item: Item, held: usize) -> Result<(), (Item, u64)> {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Err((item, inner.replay().room_gen));
        }
        let cost = item.cost();
        let idle = inner.items.is_empty() && inner.writing == 0;
        let fits = inner.items.len() < self.bounds.max_items / 2
            && inner.writing + inner.bytes + cost <= self.bounds.max_bytes / 2;
        if !(idle || fits) {
            return Err((item, inner.replay().room_gen));
        }
        if let Some(r) = &mut inner.replay {
            r.held = r.held.saturating_sub(held);
        }
        let (_, rest) = inner.write_direct(item);
        let Some(item) = rest else {
            inner.count(&self.totals);
            return Ok(());
        };
        inner.enqueue(item);
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        inner.count(&self.totals);
        Ok(())
    }

    /// Resolves once room may have appeared since generation `seen` (the writer took a batch or
    /// finished writing one, a page turn ended), or the outbox closed.
    pub async fn room(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            let mut inner = self.inner.lock();
            if inner.closed.is_some() {
                return Poll::Ready(());
            }
            let replay = inner.replay();
            if replay.room_gen != seen {
                return Poll::Ready(());
            }
            if !replay.room.iter().any(|w| w.will_wake(cx.waker())) {
                replay.room.push(cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// Waits for this connection's turn to read a history page; `None` if the outbox closed.
    /// The turn ends when the returned guard drops.
    pub async fn page_turn(self: &Arc<Self>) -> Option<PageTurn> {
        loop {
            let seen = {
                let mut inner = self.inner.lock();
                if inner.closed.is_some() {
                    return None;
                }
                let replay = inner.replay();
                if !replay.page_busy {
                    replay.page_busy = true;
                    return Some(PageTurn(self.clone()));
                }
                replay.room_gen
            };
            self.room(seen).await;
        }
    }

    /// Counts `bytes` the hub keeps for this connection outside the queue, if the total stays
    /// within the byte bound; false (nothing counted) otherwise.
    pub fn try_hold(&self, bytes: usize) -> bool {
        let mut inner = self.inner.lock();
        let replay = inner.replay();
        if replay.held + bytes > self.bounds.max_bytes {
            return false;
        }
        replay.held += bytes;
        inner.count(&self.totals);
        true
    }

    /// Counts `bytes` held outside the queue whatever the bound (a replay page: bounded by its
    /// read, and needed for progress).
    pub fn hold(&self, bytes: usize) {
        let mut inner = self.inner.lock();
        inner.replay().held += bytes;
        inner.count(&self.totals);
    }

    /// Stops counting `bytes` held outside the queue.
    pub fn release(&self, bytes: usize) {
        let mut inner = self.inner.lock();
        if let Some(r) = &mut inner.replay {
            r.held = r.held.saturating_sub(bytes);
        }
        inner.count(&self.totals);
    }

    /// Wakes replays waiting on this outbox so they look at their subscription again (it was
    /// removed).
    pub fn nudge(&self) {
        self.inner.lock().wake_room();
    }

    /// Stops accepting items; the writer sees `reason` after draining what is queued.
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.inner.lock();
        if inner.closed.is_none() {
            inner.closed = Some(reason);
        }
        inner.wake_room();
        if let Some(w) = inner.waker.take() {
            w.wake();
        }
        drop(inner);
        self.cancel_signal();
    }

    fn cancel_signal(&self) {
        if let Some(signal) = &self.signal {
            signal.cancel();
        }
    }

    /// Why the outbox closed, if it did.
    pub fn reason(&self) -> Option<CloseReason> {
        self.inner.lock().closed
    }

    /// Cancelled once the outbox is closed (if it was given one).
    pub fn signal(&self) -> Option<&CancellationToken> {
        self.signal.as_ref()
    }

    /// Resolves once the outbox is closed: for the writer while it writes (and so does not wait
    /// in [`Outbox::take_into`]). It waits in the writer's waker slot, so only the writer's task
    /// may call it; a push meanwhile wakes it for nothing, which is harmless.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// [`Outbox::closed`] for a hand-written future.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.inner.lock();
        if inner.closed.is_some() {
            return Poll::Ready(());
        }
        if !inner
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            inner.waker = Some(cx.waker().clone());
        }
        Poll::Pending
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
            // The writer asks for more: the previous batch is written, and pushes may write
            // directly again.
            inner.busy = false;
            if inner.writing != 0 {
                inner.writing = 0;
                inner.wake_room();
                inner.count(&self.totals);
            }
            return Poll::Pending;
        }
        inner.busy = true;
        inner.torn = false;
        inner.writing = inner.bytes;
        inner.bytes = 0;
        std::mem::swap(&mut inner.items, into);
        inner.wake_room();
        inner.count(&self.totals);
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

    /// Items currently queued, and every byte the node holds for this connection: the queue,
    /// the batch being written, and what the hub holds outside the queue (for metrics and tests).
    pub fn queued(&self) -> (usize, usize) {
        self.inner.lock().holds()
    }
}

impl Drop for Outbox {
    /// What it still holds is freed with it.
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        self.totals.apply(inner.counted, (0, 0));
    }
}

#[cfg(test)]
impl Outbox {
    /// Bytes held outside the queue.
    pub fn held(&self) -> usize {
        self.inner.lock().held()
    }
}

/// A connection's turn to read one history page (see [`Outbox::page_turn`]).
pub struct PageTurn(Arc<Outbox>);

impl Drop for PageTurn {
    fn drop(&mut self) {
        let mut inner = self.0.inner.lock();
        inner.replay().page_busy = false;
        inner.wake_room();
    }
}

#[cfg(test)]
mod tests;
