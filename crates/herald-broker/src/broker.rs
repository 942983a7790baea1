//! The contract between the server and a message backbone.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_trait::async_trait;
use herald_core::{ChannelName, Message, StreamPosition, auth::namespace_of, protocol::Publish};

use crate::presence::Presence;

/// Failures a broker reports. The server maps them to 503 (retryable) or 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached or did not answer in time. Retry (with the same
    /// idempotency key) later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker reached a configured memory bound (`memory_max_bytes` for the embedded
    /// broker) and refuses new data until history or idempotency keys expire. Nothing was stored.
    #[error("broker full: {0}")]
    Full(String),
    /// Something unexpected, e.g. a reply the broker does not understand.
    #[error("broker error: {0}")]
    Internal(String),
}

/// How much history one channel keeps. Brokers ask for it in one place, their
/// `retention(channel)`, on every publish, read and gap fill: a broker-wide default
/// (`history_size`, `history_ttl`) unless the channel's namespace has its own (see
/// [`Retention::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most messages kept (0: no history, live delivery only).
    pub size: usize,
    /// How long a message, an idempotency key and the channel's epoch are kept after the last
    /// publish.
    pub ttl: Duration,
}

impl Retention {
    /// `channel`'s retention: the entry of its namespace (what precedes the first `:`, see
    /// [`namespace_of`]) in `by_namespace`, else `default`. The server fills `by_namespace` from
    /// its `[namespaces.NAME]` tables; a channel's answer never changes while the process runs,
    /// so asking again on every call is consistent.
    pub fn of(
        channel: &ChannelName,
        default: Retention,
        by_namespace: &HashMap<String, Retention>,
    ) -> Retention {
        if by_namespace.is_empty() {
            return default;
        }
        by_namespace
            .get(namespace_of(channel.as_str()))
            .copied()
            .unwrap_or(default)
    }

    /// The shortest TTL of `default` and every namespace's (what expiry sweeps are paced by).
    pub fn shortest_ttl(default: Retention, by_namespace: &HashMap<String, Retention>) -> Duration {
        by_namespace
            .values()
            .map(|r| r.ttl)
            .fold(default.ttl, Duration::min)
    }
}

/// The result of a publish: where the message sits in its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub position: StreamPosition,
    /// True when an earlier publish with the same idempotency key was found and this call
    /// published nothing.
    pub duplicate: bool,
}

/// Where a history read starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// The messages after this position. A position in another epoch gets none (the channel's
    /// history was lost since), except `("", 0)`, the position of a channel seen before its
    /// first message, which continues at offset 1 of whatever epoch the channel has now.
    After(StreamPosition),
    /// The messages after this offset of the channel's current epoch.
    AfterOffset(u64),
    /// The newest `limit` messages.
    Latest,
}

/// One page of a history read: bounded by count and by bytes, so that no single read holds the
/// broker (Redis is single-threaded) or the node's memory for long. Longer reads are several
/// pages, each continuing after the last message of the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryQuery {
    pub start: Start,
    /// Most messages in the page; 0 reads only the channel's top.
    pub limit: usize,
    /// Most message bytes (data and header) in the page; a page holds at least one message even
    /// when that one alone is larger.
    pub max_bytes: usize,
}

impl HistoryQuery {
    /// The channel's top position only.
    pub fn top() -> Self {
        Self {
            start: Start::Latest,
            limit: 0,
            max_bytes: 0,
        }
    }

    /// Up to `limit` messages (and `max_bytes`) after `position`.
    pub fn after(position: StreamPosition, limit: usize, max_bytes: usize) -> Self {
        Self {
            start: Start::After(position),
            limit,
            max_bytes,
        }
    }

    /// The offset of the channel's current epoch after which this read returns messages, or
    /// `None` when the read asks about another epoch (it returns nothing).
    pub fn after_offset(&self, top: &StreamPosition) -> Option<u64> {
        match &self.start {
            Start::After(p) if p.epoch == top.epoch => Some(p.offset),
            Start::After(p) if *p == StreamPosition::start() => Some(0),
            Start::After(_) => None,
            Start::AfterOffset(o) => Some(*o),
            Start::Latest => Some(top.offset.saturating_sub(self.limit as u64)),
        }
    }

    /// Applies the page rules every broker shares to messages read after [`Self::after_offset`]
    /// (ascending, possibly more than the page may hold): drops what does not belong, cuts the
    /// page by count and bytes, and decides `recovered`.
    pub fn page(&self, top: StreamPosition, retained: Vec<Arc<Message>>) -> History {
        let Some(after) = self.after_offset(&top) else {
            return History {
                messages: Vec::new(),
                top,
                recovered: false,
            };
        };
        let mut bytes = 0;
        let mut messages = Vec::new();
        for m in retained {
            if m.offset <= after || m.epoch != top.epoch {
                continue;
            }
            let size = m.stored_len();
            if messages.len() >= self.limit
                || (!messages.is_empty() && bytes + size > self.max_bytes)
            {
                break;
            }
            bytes += size;
            messages.push(m);
        }
        // A position beyond the top belongs to another incarnation of the channel.
        let recovered = !matches!(self.start, Start::Latest)
            && after <= top.offset
            && messages
                .first()
                .map_or(after == top.offset, |m| m.offset == after + 1);
        History {
            messages,
            top,
            recovered,
        }
    }
}

/// One page of a channel's retained history.
#[derive(Debug, Clone)]
pub struct History {
    /// Retained messages, ascending by offset and contiguous, at most the page's bounds.
    pub messages: Vec<Arc<Message>>,
    /// The channel's epoch and last assigned offset when the page was read: `("", 0)` for a
    /// channel without history. Messages after the page's last one and up to `top` need another
    /// read.
    pub top: StreamPosition,
    /// For [`Start::After`] and [`Start::AfterOffset`]: the page continues exactly from the
    /// requested position (same epoch, its next offset is the first message, or nothing came
    /// after it). Says nothing about where the page ends: a page cut by its bounds is still
    /// recovered, and the read goes on after its last message. Always false for
    /// [`Start::Latest`].
    pub recovered: bool,
}

impl History {
    /// True when the page reaches the channel's top: nothing more to read.
    pub fn is_complete(&self) -> bool {
        self.messages
            .last()
            .is_none_or(|m| m.offset >= self.top.offset)
    }
}

/// Receives a channel's live messages from the broker: the server's local hub.
///
/// Calls for one channel arrive in offset order and are not concurrent with each other, so a
/// sink needs no reordering. Implementations must not block: they run on the broker's delivery
/// path.
pub trait Sink: Send + Sync + 'static {
    fn deliver(&self, msg: Arc<Message>);
}

/// A message backbone: assigns offsets, keeps bounded history and relays live messages.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Assigns the next offset and appends to history, then relays to subscribed nodes. Returns
    /// only once the message is in history. A publish whose idempotency key was seen before (within
    /// the history TTL) returns the first result with `duplicate: true` and publishes nothing.
    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError>;

    /// One page of retained history (see [`HistoryQuery`]), oldest first. Never creates anything:
    /// a channel without history reads as top `("", 0)` with no messages.
    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError>;

    /// Starts relaying `channel`'s live messages to `sink`. Resolves once relaying is active: any
    /// publish acknowledged after this returns is delivered to the sink. The server calls it once
    /// per channel (not per client) and calls [`Broker::unsubscribe`] when its last local
    /// subscriber has gone.
    async fn subscribe(
        &self,
        channel: &ChannelName,
        sink: Arc<dyn Sink>,
    ) -> Result<(), BrokerError>;

    /// Stops relaying `channel` to this node.
    async fn unsubscribe(&self, channel: &ChannelName);

    /// Ok when the broker can serve publishes and live delivery; otherwise why not.
    async fn ready(&self) -> Result<(), BrokerError>;

    /// A short name for logs (`memory`, `redis`).
    fn kind(&self) -> &'static str;

    /// The broker's rooms (presence, join and leave, see [`crate::presence`]); `None` for a
    /// broker without them.
    fn presence(self: Arc<Self>) -> Option<Arc<dyn Presence>> {
        None
    }
}
