//! The embedded broker: a single node's channels, history and idempotency keys in memory.
//!
//! State is sharded by channel so publishes to different channels never contend. A publish
//! assigns the offset, appends to history and hands the message to the subscribed sink while
//! holding its channel's lock, which is what keeps delivery in offset order without a queue.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasher, RandomState},
    sync::{Arc, Weak},
    time::Duration,
};

use async_trait::async_trait;
use herald_core::{ChannelName, Epoch, Message, StreamPosition, protocol::Publish};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::{Broker, BrokerError, History, Published, Sink, now_us};

const SHARDS: usize = 64;

/// Retention settings.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Most messages kept per channel.
    pub history_size: usize,
    /// How long a message (and an idempotency key) is kept.
    pub history_ttl: Duration,
    /// Most idempotency keys remembered per channel; the oldest are forgotten first.
    pub max_idempotency_keys: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            max_idempotency_keys: 10_000,
        }
    }
}

struct Retained {
    msg: Arc<Message>,
    at: Instant,
}

struct ChannelState {
    epoch: Epoch,
    last_offset: u64,
    history: VecDeque<Retained>,
    /// Where live messages go; `None` while no node-local subscriber exists.
    sink: Option<Arc<dyn Sink>>,
    /// Idempotency key -> offset, with insertion order for eviction.
    keys: HashMap<String, u64>,
    key_order: VecDeque<(String, Instant)>,
    /// Last publish, read or subscribe: idle channels are swept after the TTL.
    touched: Instant,
}

impl ChannelState {
    fn new(now: Instant) -> Self {
        Self {
            epoch: Epoch::from_random(rand::random()),
            last_offset: 0,
            history: VecDeque::new(),
            sink: None,
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            touched: now,
        }
    }

    fn expire(&mut self, now: Instant, cfg: &MemoryConfig) {
        while self
            .history
            .front()
            .is_some_and(|r| now.duration_since(r.at) >= cfg.history_ttl)
        {
            self.history.pop_front();
        }
        while let Some((key, at)) = self.key_order.front() {
            if now.duration_since(*at) < cfg.history_ttl
                && self.key_order.len() <= cfg.max_idempotency_keys
            {
                break;
            }
            self.keys.remove(key);
            self.key_order.pop_front();
        }
    }

    fn top(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.last_offset,
        }
    }
}

/// The embedded single-node broker.
pub struct MemoryBroker {
    shards: Box<[Mutex<HashMap<ChannelName, ChannelState>>]>,
    hasher: RandomState,
    config: MemoryConfig,
}

impl MemoryBroker {
    /// Creates the broker and, when called inside a tokio runtime, a background task that drops
    /// idle channels (their epoch then changes, as their history is gone).
    pub fn new(config: MemoryConfig) -> Arc<Self> {
        let broker = Arc::new(Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            config,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_loop(Arc::downgrade(&broker)));
        }
        broker
    }

    fn shard(&self, channel: &ChannelName) -> &Mutex<HashMap<ChannelName, ChannelState>> {
        &self.shards[self.hasher.hash_one(channel.as_str()) as usize % SHARDS]
    }

    fn with_channel<R>(
        &self,
        channel: &ChannelName,
        f: impl FnOnce(&mut ChannelState, Instant) -> R,
    ) -> R {
        let now = Instant::now();
        let mut shard = self.shard(channel).lock();
        let state = shard
            .entry(channel.clone())
            .or_insert_with(|| ChannelState::new(now));
        state.expire(now, &self.config);
        state.touched = now;
        f(state, now)
    }

    /// Drops channels with no subscriber, no retained message and no recent activity.
    pub fn sweep(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            shard.lock().retain(|_, s| {
                s.expire(now, &self.config);
                s.sink.is_some()
                    || !s.history.is_empty()
                    || now.duration_since(s.touched) < self.config.history_ttl
            });
        }
    }

    /// Number of channels currently held (for tests and metrics).
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

async fn sweep_loop(broker: Weak<MemoryBroker>) {
    let period = match broker.upgrade() {
        Some(b) => {
            (b.config.history_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
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

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError> {
        let cfg = &self.config;
        Ok(self.with_channel(&publish.channel, |state, now| {
            if let Some(&offset) = publish
                .idempotency_key
                .as_ref()
                .and_then(|k| state.keys.get(k))
            {
                return Published {
                    position: StreamPosition {
                        epoch: state.epoch.clone(),
                        offset,
                    },
                    duplicate: true,
                };
            }
            state.last_offset += 1;
            let msg = Arc::new(Message {
                channel: publish.channel.clone(),
                offset: state.last_offset,
                epoch: state.epoch.clone(),
                event: publish.event,
                data: publish.data,
                published_at_us: now_us(),
            });
            if cfg.history_size > 0 {
                if state.history.len() >= cfg.history_size {
                    state.history.pop_front();
                }
                state.history.push_back(Retained {
                    msg: msg.clone(),
                    at: now,
                });
            }
            if let Some(key) = publish.idempotency_key {
                state.keys.insert(key.clone(), state.last_offset);
                state.key_order.push_back((key, now));
                state.expire(now, cfg);
            }
            // Delivered under the channel lock: this is what keeps the sink in offset order.
            if let Some(sink) = &state.sink {
                sink.deliver(msg);
            }
            Published {
                position: state.top(),
                duplicate: false,
            }
        }))
    }

    async fn history(
        &self,
        channel: &ChannelName,
        since: Option<&StreamPosition>,
        limit: usize,
    ) -> Result<History, BrokerError> {
        Ok(self.with_channel(channel, |state, _| {
            let top = state.top();
            let (after, same_epoch) = match since {
                Some(p) => (
                    p.offset,
                    p.epoch == state.epoch && p.offset <= state.last_offset,
                ),
                None => (0, true),
            };
            if !same_epoch {
                return History {
                    messages: Vec::new(),
                    top,
                    recovered: false,
                };
            }
            let messages: Vec<Arc<Message>> = state
                .history
                .iter()
                .filter(|r| r.msg.offset > after)
                .take(limit)
                .map(|r| r.msg.clone())
                .collect();
            let first_needed = after + 1;
            let complete_start = match messages.first() {
                Some(m) => m.offset == first_needed,
                None => after == state.last_offset,
            };
            let complete_end = messages
                .last()
                .is_none_or(|m| m.offset == state.last_offset);
            let recovered = since.is_some() && complete_start && complete_end;
            History {
                messages,
                top,
                recovered,
            }
        }))
    }

    async fn subscribe(
        &self,
        channel: &ChannelName,
        sink: Arc<dyn Sink>,
    ) -> Result<(), BrokerError> {
        self.with_channel(channel, |state, _| state.sink = Some(sink));
        Ok(())
    }

    async fn unsubscribe(&self, channel: &ChannelName) {
        if let Some(state) = self.shard(channel).lock().get_mut(channel) {
            state.sink = None;
        }
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests;
