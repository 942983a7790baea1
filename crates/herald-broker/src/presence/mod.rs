//! Presence: who is in a room (a channel of a namespace with `presence`), across every node,
//! and the join and leave messages a room with `join_leave` gets in its stream.
//!
//! The server tells the broker when one of its connections enters or leaves a room
//! ([`Presence::enter`], [`Presence::exit`]) and asks who is there ([`Presence::roster`]); the
//! broker keeps the room's state and publishes `herald.join` / `herald.leave` messages through
//! the channel's stream, so they get offsets, are kept in history and reach every node in the
//! channel's order, exactly like any other message. The rules, the same for both brokers:
//!
//! - A member is one connection of a user. A user **joins** when its first connection enters,
//!   unless it left less than the room's `grace` ago (a page reload): then nothing is sent.
//! - A user **leaves** when its last connection has been gone for `grace`. A node that stops
//!   refreshing its presence (killed, cut off from Redis) loses its members when its presence
//!   expires (`ttl`); their users leave then, with no further grace.
//! - Each transition is one message, whichever node sees it: the state changes and the message
//!   are one atomic step of the broker (one Redis script; one lock in memory).
//! - No join or leave messages in a room with more than `max_members` connections.
//!
//! [`memory`] keeps rooms in the process; [`redis`] keeps them in Redis with a per-node
//! heartbeat, so that a dead node's members expire.

pub(crate) mod memory;
pub(crate) mod redis;

use std::{collections::HashMap, time::Duration};

use async_trait::async_trait;
use herald_core::{
    ChannelName,
    auth::namespace_of,
    room::{Member, Roster},
};

use crate::BrokerError;

/// How the rooms of one namespace behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomPolicy {
    /// Publish `herald.join` / `herald.leave` messages into the channel.
    pub join_leave: bool,
    /// How long a user's last connection must have been gone before it leaves.
    pub grace: Duration,
    /// No join or leave messages while the room holds more connections than this.
    pub max_members: usize,
}

/// Presence settings of a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomsConfig {
    /// Namespaces with presence and their policies; channels of other namespaces are not rooms.
    pub by_namespace: HashMap<String, RoomPolicy>,
    /// How long a node's presence lasts without a refresh (Redis): a node that dies drops out of
    /// its rooms within this time. Nodes refresh every third of it.
    pub ttl: Duration,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            by_namespace: HashMap::new(),
            ttl: Duration::from_secs(15),
        }
    }
}

impl RoomsConfig {
    /// The policy of `channel`'s room, or `None` when its namespace has no presence.
    pub fn policy(&self, channel: &ChannelName) -> Option<RoomPolicy> {
        if self.by_namespace.is_empty() {
            return None;
        }
        self.by_namespace
            .get(namespace_of(channel.as_str()))
            .copied()
    }
}

/// Rooms, as the server sees them.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Connection `client` of this node entered `channel`'s room: as `member` (a user), or as
    /// an anonymous subscriber (`None`), which is no member but has this node watch the room's
    /// expiries. Resolves once the room's state has it (or could not be reached: the node
    /// registers it again as soon as it can). Does nothing for a channel that is not a room.
    async fn enter(
        &self,
        channel: &ChannelName,
        client: &str,
        member: Option<Member>,
    ) -> Result<(), BrokerError>;

    /// Connection `client` left `channel` (unsubscribed or disconnected). Never waits.
    fn exit(&self, channel: &ChannelName, client: &str);

    /// Who is in `channel`'s room: at most `limit` members (0: only the counts), from every
    /// node.
    async fn roster(&self, channel: &ChannelName, limit: usize) -> Result<Roster, BrokerError>;
}
