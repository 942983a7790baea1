//! The contract between the server and a message backbone.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{ChannelName, Message, StreamPosition, protocol::Publish};

/// Failures a broker reports. The server maps them to 503 (retryable) or 500.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The backing store cannot be reached or did not answer in time. Retry (with the same
    /// idempotency key) later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// Something unexpected, e.g. a reply the broker does not understand.
    #[error("broker error: {0}")]
    Internal(String),
}

/// The result of a publish: where the message sits in its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub position: StreamPosition,
    /// True when an earlier publish with the same idempotency key was found and this call
    /// published nothing.
    pub duplicate: bool,
}

/// A read of a channel's retained history.
#[derive(Debug, Clone)]
pub struct History {
    /// Retained messages after the requested position, ascending by offset.
    pub messages: Vec<Arc<Message>>,
    /// The channel's current epoch and last assigned offset (0 if nothing was published).
    pub top: StreamPosition,
    /// For a read with a `since` position: true when `messages` continue exactly from it (same
    /// epoch, nothing missing between `since` and the first message, and not cut by `limit`).
    /// Always false for a read without `since`.
    pub recovered: bool,
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

    /// Retained messages after `since` (all retained messages when `None`), at most `limit`,
    /// oldest first; a read with `since` in another epoch returns no messages and
    /// `recovered: false`.
    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
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
}
