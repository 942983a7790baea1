//! Rooms of the embedded broker, in the process.
//!
//! One node, so no heartbeat: a room holds its members, a connection count per user, and the
//! users inside their leave grace. Transitions and their join/leave messages happen under the
//! room's shard lock (the publish is synchronous, see `MemoryBroker::publish_now`), so each is
//! sent once and in order. A grace is ended by a timer task that sweeps the room; a sweep only
//! sends the leaves whose grace is over and whose user did not come back, so any number of
//! sweeps send each leave once.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Arc, Weak},
};

use async_trait::async_trait;
use bytes::Bytes;
use herald_core::{
    ChannelName, EventName,
    protocol::Publish,
    room::{Member, Roster},
};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Presence, RoomPolicy, RoomsConfig};
use crate::{BrokerError, MemoryBroker};

const SHARDS: usize = 16;

/// Every room of the node.
pub(crate) struct Rooms {
    config: RoomsConfig,
    shards: Box<[Mutex<HashMap<ChannelName, Room>>]>,
    hasher: RandomState,
}

#[derive(Default)]
struct Room {
    /// Connection id -> member.
    members: HashMap<Box<str>, Member>,
    /// User -> connections in the room.
    users: HashMap<Box<str>, usize>,
    /// Users whose last connection left: when their grace ends, and the member to announce.
    leaving: HashMap<Box<str>, (Instant, Bytes)>,
}

impl Room {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.leaving.is_empty()
    }

    /// A transition is announced when the room holds at most the policy's cap after it.
    fn announces(&self, policy: &RoomPolicy) -> bool {
        policy.join_leave && self.members.len() <= policy.max_members
    }
}

/// Publishes a join or leave message into `channel`'s stream.
fn announce(broker: &MemoryBroker, channel: &ChannelName, event: EventName, json: Bytes) {
    let publish = Publish {
        channel: channel.clone(),
        event: Some(event),
        data: json,
        idempotency_key: None,
        sender: None,
    };
    if let Err(e) = broker.publish_now(publish) {
        tracing::warn!(%channel, error = %e, "a join or leave message could not be published");
    }
}

impl Rooms {
    pub(crate) fn new(config: RoomsConfig) -> Self {
        Self {
            config,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, Room>> {
        &self.shards[self.hasher.hash_one(channel.as_str()) as usize % SHARDS]
    }

    fn enter(&self, broker: &Arc<MemoryBroker>, channel: &ChannelName, member: Member) {
        let Some(policy) = self.config.policy(channel) else {
            return;
        };
        let mut shard = self.shard(channel).lock();
        let room = shard.entry(channel.clone()).or_default();
        if room.members.contains_key(&member.client) {
            return;
        }
        room.members.insert(member.client.clone(), member.clone());
        let count = room.users.entry(member.user.clone()).or_insert(0);
        *count += 1;
        // Back within the grace (a page reload): no leave was sent, so no join either.
        if *count == 1 && room.leaving.remove(&member.user).is_none() && room.announces(&policy) {
            announce(broker, channel, EventName::join(), member.json);
        }
    }

    fn exit(&self, broker: &Arc<MemoryBroker>, channel: &ChannelName, client: &str) {
        let Some(policy) = self.config.policy(channel) else {
            return;
        };
        let mut shard = self.shard(channel).lock();
        let Some(room) = shard.get_mut(channel) else {
            return;
        };
        let Some(member) = room.members.remove(client) else {
            return;
        };
        let last = match room.users.get_mut(&member.user) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            _ => {
                room.users.remove(&member.user);
                true
            }
        };
        // Whether the leave is sent is decided now, by the room's size; it goes out when the
        // grace ends, unless the user comes back.
        if last && room.announces(&policy) {
            if policy.grace.is_zero() {
                announce(broker, channel, EventName::leave(), member.json);
            } else {
                let at = Instant::now() + policy.grace;
                room.leaving.insert(member.user.clone(), (at, member.json));
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(sweep_at(Arc::downgrade(broker), channel.clone(), at));
                }
            }
        }
        if room.is_empty() {
            shard.remove(channel);
        }
    }

    /// Sends the leaves whose grace is over.
    fn sweep(&self, broker: &MemoryBroker, channel: &ChannelName) {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        let Some(room) = shard.get_mut(channel) else {
            return;
        };
        let due: Vec<Box<str>> = room
            .leaving
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(user, _)| user.clone())
            .collect();
        for user in due {
            if let Some((_, json)) = room.leaving.remove(&user)
                && !room.users.contains_key(&user)
            {
                announce(broker, channel, EventName::leave(), json);
            }
        }
        if room.is_empty() {
            shard.remove(channel);
        }
    }

    fn roster(&self, channel: &ChannelName, limit: usize) -> Roster {
        let shard = self.shard(channel).lock();
        let Some(room) = shard.get(channel) else {
            return Roster::default();
        };
        Roster {
            members: room
                .members
                .values()
                .take(limit)
                .map(|m| m.json.clone())
                .collect(),
            truncated: room.members.len() > limit,
            clients: room.members.len() as u64,
            users: room.users.len() as u64,
        }
    }
}

async fn sweep_at(broker: Weak<MemoryBroker>, channel: ChannelName, at: Instant) {
    tokio::time::sleep_until(at).await;
    if let Some(broker) = broker.upgrade() {
        broker.rooms().sweep(&broker, &channel);
    }
}

/// The embedded broker's [`Presence`].
pub(crate) struct MemoryPresence(pub Arc<MemoryBroker>);

#[async_trait]
impl Presence for MemoryPresence {
    async fn enter(
        &self,
        channel: &ChannelName,
        _client: &str,
        member: Option<Member>,
    ) -> Result<(), BrokerError> {
        // An anonymous subscriber changes nothing: there is no expiry to watch in one process.
        if let Some(member) = member {
            self.0.rooms().enter(&self.0, channel, member);
        }
        Ok(())
    }

    fn exit(&self, channel: &ChannelName, client: &str) {
        self.0.rooms().exit(&self.0, channel, client);
    }

    async fn roster(&self, channel: &ChannelName, limit: usize) -> Result<Roster, BrokerError> {
        Ok(self.0.rooms().roster(channel, limit))
    }
}

#[cfg(test)]
mod tests;
