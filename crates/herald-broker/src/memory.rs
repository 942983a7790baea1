//! The embedded broker: a single node's channels, history and idempotency keys in memory, within
//! a byte bound (`max_bytes`) that publishes fail loudly against instead of forgetting anything.
//!
//! State is sharded by channel so publishes to different channels never contend. A publish
//! assigns the offset, appends to history and hands the message to the subscribed sink while
//! holding its channel's lock, which is what keeps delivery in offset order without a queue.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use herald_core::{ChannelName, Epoch, Message, StreamPosition, protocol::Publish};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{
    Broker, BrokerError, History, HistoryQuery, Published, Retention, Sink, now_us,
    presence::{
        Presence, RoomsConfig,
        memory::{MemoryPresence, Rooms},
    },
};

mod channel;

use channel::{ChannelState, message_cost};

const SHARDS: usize = 64;

/// Retention and memory settings.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Most messages kept per channel.
    pub history_size: usize,
    /// How long a message, an idempotency key and a channel's epoch are kept after its last
    /// publish.
    pub history_ttl: Duration,
    /// Namespaces whose channels keep their own size and TTL instead (the server's
    /// `[namespaces.NAME]` tables; see [`Retention::of`]).
    pub retention_by_namespace: HashMap<String, Retention>,
    /// Most bytes of history, idempotency keys and channel state the broker keeps. A publish
    /// that would go beyond fails with [`BrokerError::Full`] (nothing is stored or forgotten).
    pub max_bytes: usize,
    /// Which channels are rooms (presence, join/leave) and how they behave.
    pub rooms: RoomsConfig,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            retention_by_namespace: HashMap::new(),
            max_bytes: 512 << 20,
            rooms: RoomsConfig::default(),
        }
    }
}

/// What the broker holds, for metrics.
#[derive(Debug, Default)]
pub struct MemoryStats {
    /// Bytes counted against [`MemoryConfig::max_bytes`].
    pub bytes: AtomicUsize,
    /// Channels with an entry (published within the TTL, or subscribed on this node).
    pub channels: AtomicUsize,
}

/// The embedded single-node broker.
pub struct MemoryBroker {
    shards: Box<[Mutex<HashMap<ChannelName, ChannelState>>]>,
    hasher: RandomState,
    config: MemoryConfig,
    stats: Arc<MemoryStats>,
    /// Presence and join/leave state of the node's rooms.
    rooms: Rooms,
}

impl MemoryBroker {
    /// Creates the broker and, when called inside a tokio runtime, a background task that drops
    /// expired history and keys and idle channels (their epoch then changes, as their history
    /// is gone).
    pub fn new(config: MemoryConfig) -> Arc<Self> {
        let broker = Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            rooms: Rooms::new(config.rooms.clone()),
            config,
            stats: Arc::default(),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_loop(Arc::downgrade(&broker)));
        }
        broker
    }

    /// The channel's retention: its namespace's, else the configured default.
    fn retention(&self, channel: &ChannelName) -> Retention {
        Retention::of(
            channel,
            self.default_retention(),
            &self.config.retention_by_namespace,
        )
    }

    fn default_retention(&self) -> Retention {
        Retention {
            size: self.config.history_size,
            ttl: self.config.history_ttl,
        }
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, ChannelState>> {
        &self.shards[self.hasher.hash_one(channel.as_str()) as usize % SHARDS]
    }

    fn add_bytes(&self, n: usize) {
        self.stats.bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn sub_bytes(&self, n: usize) {
        self.stats.bytes.fetch_sub(n, Ordering::Relaxed);
    }

    /// Drops `channel`'s entry if nothing needs it any more.
    fn drop_if_idle(
        &self,
        shard: &mut HashMap<ChannelName, ChannelState>,
        channel: &ChannelName,
        now: Instant,
    ) {
        let retention = self.retention(channel);
        if shard
            .get(channel)
            .is_some_and(|s| s.is_idle(now, retention))
            && let Some(state) = shard.remove(channel)
        {
            self.sub_bytes(state.bytes);
            self.stats.channels.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops expired messages and keys everywhere, and channels nothing needs any more.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            let mut freed = 0;
            let mut dropped = 0;
            shard.retain(|channel, s| {
                let retention = self.retention(channel);
                freed += s.expire(now, retention);
                let keep = !s.is_idle(now, retention);
                if !keep {
                    freed += s.bytes;
                    dropped += 1;
                }
                keep
            });
            self.sub_bytes(freed);
            self.stats.channels.fetch_sub(dropped, Ordering::Relaxed);
        }
    }

    /// Number of channels currently held (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub(crate) fn rooms(&self) -> &Rooms {
        &self.rooms
    }

    /// What the broker holds, for metrics.
    pub fn stats(&self) -> Arc<MemoryStats> {
        self.stats.clone()
    }

    fn full(&self) -> BrokerError {
        BrokerError::Full(format!(
            "the embedded broker holds its limit of {} bytes of history and idempotency keys \
             (memory_max_bytes); retry after older messages expire",
            self.config.max_bytes
        ))
    }
}

async fn sweep_loop(broker: Weak<MemoryBroker>) {
    let period = match broker.upgrade() {
        // Paced by the shortest TTL, so that a namespace with a short one frees its memory (and
        // lets refused publishes through) about as soon as its messages expire.
        Some(b) => {
            let ttl =
                Retention::shortest_ttl(b.default_retention(), &b.config.retention_by_namespace);
            (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        }
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        match broker.upgrade() {
            Some(b) => b.sweep(),
            None => return,
        }
    }
}

impl MemoryBroker {
    /// The publish itself, synchronous: nothing in it waits, so the room state can publish its
    /// join and leave messages under its own lock, in the order their transitions happened.
    pub(crate) fn publish_now(&self, publish: Publish) -> Result<Published, BrokerError> {
        let now = Instant::now();
        let retention = self.retention(&publish.channel);
        let mut shard = self.shard(&publish.channel).lock();
        let state = match shard.get_mut(&publish.channel) {
            Some(state) => state,
            None => {
                let state = ChannelState::new(now, publish.channel.as_str().len());
                if self.stats.bytes.load(Ordering::Relaxed) + state.bytes > self.config.max_bytes {
                    return Err(self.full());
                }
                self.add_bytes(state.bytes);
                self.stats.channels.fetch_add(1, Ordering::Relaxed);
                shard.entry(publish.channel.clone()).or_insert(state)
            }
        };
        self.sub_bytes(state.expire(now, retention));
        if !state.epoch.is_none() && state.is_idle(now, retention) {
            // Idle past the TTL: its history is gone, so it starts over in a new epoch, as a
            // Redis channel whose keys expired does.
            state.epoch = Epoch::none();
            state.last_offset = 0;
        }
        if let Some(offset) = publish
            .idempotency_key
            .as_deref()
            .and_then(|k| state.key(k))
        {
            return Ok(Published {
                position: StreamPosition {
                    epoch: state.epoch.clone(),
                    offset,
                },
                duplicate: true,
            });
        }
        // The first publish creates the epoch; reads and subscribes never do.
        let epoch = if state.epoch.is_none() {
            Epoch::from_random(rand::random())
        } else {
            state.epoch.clone()
        };
        let msg = Arc::new(Message {
            channel: publish.channel.clone(),
            offset: state.last_offset + 1,
            epoch: epoch.clone(),
            event: publish.event,
            data: publish.data,
            published_at_us: now_us(),
            sender: publish.sender,
        });
        let cost = state.append_cost(
            message_cost(&msg),
            publish.idempotency_key.as_deref(),
            retention,
        );
        if cost > 0
            && self.stats.bytes.load(Ordering::Relaxed) + cost as usize > self.config.max_bytes
        {
            let err = self.full();
            self.drop_if_idle(&mut shard, &publish.channel, now);
            return Err(err);
        }
        let before = state.bytes;
        state.epoch = epoch;
        state.last_offset += 1;
        state.touched = now;
        state.append(&msg, publish.idempotency_key, now, retention);
        if state.bytes >= before {
            self.add_bytes(state.bytes - before);
        } else {
            self.sub_bytes(before - state.bytes);
        }
        // Delivered under the channel lock: this is what keeps the sink in offset order.
        if let Some(sink) = &state.sink {
            sink.deliver(msg);
        }
        Ok(Published {
            position: state.top(),
            duplicate: false,
        })
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError> {
        self.publish_now(publish)
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        let now = Instant::now();
        let retention = self.retention(channel);
        let mut shard = self.shard(channel).lock();
        // A read of a channel without an entry creates none.
        let Some(state) = shard.get_mut(channel) else {
            return Ok(query.page(StreamPosition::start(), Vec::new()));
        };
        self.sub_bytes(state.expire(now, retention));
        if state.is_idle(now, retention) {
            // Idle past the TTL: gone, as its Redis keys would be.
            self.drop_if_idle(&mut shard, channel, now);
            return Ok(query.page(StreamPosition::start(), Vec::new()));
        }
        // Like Redis refreshing the meta key's TTL: a read channel keeps its epoch while quiet.
        state.touched = now;
        let top = state.top();
        let retained = match query.after_offset(&top) {
            Some(after) if query.limit > 0 => state
                .retained_after(after)
                .take(query.limit)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Ok(query.page(top, retained))
    }

    async fn subscribe(
        &self,
        channel: &ChannelName,
        sink: Arc<dyn Sink>,
    ) -> Result<(), BrokerError> {
        // A subscribed channel needs an entry to hold the sink, published or not; it is dropped
        // again on unsubscribe if nothing was published. Only the hub subscribes (once per
        // channel with local subscribers), so this is bounded by the node's subscriptions.
        let mut shard = self.shard(channel).lock();
        let state = shard.entry(channel.clone()).or_insert_with(|| {
            let state = ChannelState::new(Instant::now(), channel.as_str().len());
            self.add_bytes(state.bytes);
            self.stats.channels.fetch_add(1, Ordering::Relaxed);
            state
        });
        state.sink = Some(sink);
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) {
        let mut shard = self.shard(channel).lock();
        if let Some(state) = shard.get_mut(channel) {
            state.sink = None;
        }
        self.drop_if_idle(&mut shard, channel, Instant::now());
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn presence(self: Arc<Self>) -> Option<Arc<dyn Presence>> {
        Some(Arc::new(MemoryPresence(self)))
    }
}

#[cfg(test)]
mod tests;
