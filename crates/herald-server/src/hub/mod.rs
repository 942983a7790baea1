//! The local hub: which connections on this node subscribe to which channels.
//!
//! The registry is sharded by channel so fan-out to different channels never contends on one
//! lock, and no lock is held across an await. The broker feeds the hub through [`Sink`]; the hub
//! wraps each message once in a shared [`Delivery`] and pushes a refcounted handle into each
//! subscriber's [`Outbox`].
//!
//! Subscribing with a resume position closes the seam between history and live messages: the
//! subscription is registered (buffering live messages) before history is read, then history and
//! the buffered messages are delivered, deduplicated by offset. History too long for one go is
//! replayed page by page as the client reads ([`replay`]).

mod delivery;
pub mod outbox;
mod replay;
mod top;

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

pub use delivery::Delivery;
use herald_broker::{Broker, BrokerError, History, HistoryQuery, Sink};
use herald_core::{ChannelName, Epoch, Message, StreamPosition};
pub use outbox::{Bounds, CloseReason, Item, Outbox, Pushed, Sent, Totals, Wire};
use replay::{Pending, Step};

use crate::metrics::HubMetrics;
use parking_lot::Mutex;

const SHARDS: usize = 64;

/// Most subscribers of one message that the fan-out writes to itself (see [`outbox`]); the
/// others get it queued for their writers. Writing directly saves a task wake-up per delivery,
/// but it is one `send` after another on the thread that fans out, under the shard lock: for a
/// channel with thousands of local subscribers at a high rate, the writers, on every worker
/// thread and batching what piles up (one vectored write for several frames), deliver more per
/// CPU second, and one message no longer holds the relay for thousands of syscalls. (With the
/// direct path for every subscriber, 1 x 2,000 WebSocket at 200 msg/s fell seconds behind.)
const DIRECT_WRITES_PER_MESSAGE: usize = 64;

/// Why a subscribe failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("already subscribed to {0}")]
    AlreadySubscribed(ChannelName),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

enum SlotState {
    /// Not live yet: history is being read or replayed, live messages wait (see [`replay`]).
    Pending(Box<Pending>),
    /// Delivering; `last` drops duplicates at the seam, `epoch` detects a stream reset.
    Live { epoch: Epoch, last: u64 },
}

struct Slot {
    conn: u64,
    outbox: Arc<Outbox>,
    state: SlotState,
}

struct Entry {
    slots: Vec<Slot>,
    /// Whether the broker relays this channel to us. The async mutex serialises the broker's
    /// subscribe and unsubscribe calls for the channel.
    backbone: Arc<tokio::sync::Mutex<bool>>,
    /// Bumped on every subscribe so a pending linger knows it was overtaken.
    generation: u64,
    /// Top-position reads shared by subscribers that start from now.
    top: Arc<top::TopReads>,
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// How long the backbone subscription outlives the last local subscriber.
    pub linger: Duration,
    /// Most messages in one history page of a resume.
    pub page_messages: usize,
    /// Most message bytes in one history page of a resume (and at most half the connection's
    /// byte bound).
    pub page_bytes: usize,
}

pub struct Hub {
    shards: Box<[Mutex<HashMap<ChannelName, Entry>>]>,
    hasher: RandomState,
    broker: Arc<dyn Broker>,
    config: HubConfig,
    /// Handed to the broker as the channels' sink; weak so the broker does not keep the hub alive.
    sink: Arc<dyn Sink>,
    next_conn: AtomicU64,
    metrics: HubMetrics,
    /// What the outboxes made by [`Hub::outbox`] hold, for the gauges.
    totals: Arc<Totals>,
}

/// A snapshot of the hub's size, for gauges.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubStats {
    pub channels: usize,
    pub subscriptions: usize,
    /// Items queued in the connections' outboxes.
    pub queued: usize,
    /// Every byte held for those connections: queued, being written, and held by resumes in
    /// progress (buffered live messages and history pages).
    pub queued_bytes: usize,
}

struct HubSink(Weak<Hub>);

impl Sink for HubSink {
    fn deliver(&self, msg: Arc<Message>) {
        if let Some(hub) = self.0.upgrade() {
            hub.deliver(msg);
        }
    }
}

impl Hub {
    pub fn new(broker: Arc<dyn Broker>, config: HubConfig, metrics: HubMetrics) -> Arc<Self> {
        Arc::new_cyclic(|weak| Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            broker,
            config,
            sink: Arc::new(HubSink(weak.clone())),
            next_conn: AtomicU64::new(1),
            metrics,
            totals: Arc::default(),
        })
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// A connection's outbox, counted in this hub's [`HubStats`].
    pub fn outbox(
        &self,
        bounds: Bounds,
        signal: Option<tokio_util::sync::CancellationToken>,
    ) -> Arc<Outbox> {
        Outbox::counted(bounds, signal, self.totals.clone())
    }

    /// A fresh connection id for `subscribe`/`unsubscribe`.
    pub fn connection_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    fn shard(&self, channel: &str) -> &Mutex<HashMap<ChannelName, Entry>> {
        &self.shards[self.hasher.hash_one(channel) as usize % SHARDS]
    }

    /// Subscribes connection `conn` to `channel`, resuming after `since` when given. Queues an
    /// [`Item::Subscribed`] and then the missed messages into `outbox`; live messages follow.
    pub async fn subscribe(
        self: &Arc<Self>,
        conn: u64,
        outbox: &Arc<Outbox>,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        request_id: Option<u64>,
    ) -> Result<(), SubscribeError> {
        let reads = {
            let mut shard = self.shard(channel.as_str()).lock();
            let entry = shard.entry(channel.clone()).or_insert_with(|| Entry {
                slots: Vec::new(),
                backbone: Arc::new(tokio::sync::Mutex::new(false)),
                generation: 0,
                top: Arc::default(),
            });
            if entry.slots.iter().any(|s| s.conn == conn) {
                return Err(SubscribeError::AlreadySubscribed(channel.clone()));
            }
            entry.generation += 1;
            entry.slots.push(Slot {
                conn,
                outbox: outbox.clone(),
                state: SlotState::Pending(Pending::new(
                    self.next_conn.fetch_add(1, Ordering::Relaxed),
                )),
            });
            (entry.backbone.clone(), entry.top.clone())
        };
        // Until the subscription is live, the slot is removed again if the broker fails or if
        // this future is dropped: a client that goes away mid-subscribe (an HTTP/2 stream reset,
        // a closed connection) must not leave a buffering slot behind.
        let mut unwind = Unwind {
            hub: self,
            conn,
            channel,
            armed: true,
        };
        let live = self
            .go_live(conn, outbox, channel, since, request_id, reads)
            .await;
        unwind.armed = live.is_err();
        drop(unwind);
        live.map_err(Into::into)
    }

    /// One page of history after `from`, sized for `outbox`.
    fn page(&self, from: StreamPosition, outbox: &Outbox) -> HistoryQuery {
        let bytes = self.config.page_bytes.min(outbox.bounds().max_bytes / 2);
        HistoryQuery::after(from, self.config.page_messages, bytes)
    }

    async fn go_live(
        self: &Arc<Self>,
        conn: u64,
        outbox: &Arc<Outbox>,
        channel: &ChannelName,
        since: Option<StreamPosition>,
        request_id: Option<u64>,
        (backbone, top): (Arc<tokio::sync::Mutex<bool>>, Arc<top::TopReads>),
    ) -> Result<(), BrokerError> {
        {
            let mut subscribed = backbone.lock().await;
            if !*subscribed {
                self.broker.subscribe(channel, self.sink.clone()).await?;
                *subscribed = true;
            }
        }
        // Read after the backbone subscription is live: whatever history misses, the buffer has.
        let timer = self.metrics.history_duration.start_timer();
        let first = match &since {
            Some(pos) => {
                let query = self.page(pos.clone(), outbox);
                self.broker.history(channel, query).await?
            }
            // Starting from now needs only the top, and concurrent subscribers share that read.
            None => History {
                messages: Vec::new(),
                top: top.read(&self.broker, channel).await?,
                recovered: false,
            },
        };
        timer.observe_duration();
        self.metrics.history_reads.inc();
        let recovered = since.is_some() && first.recovered;
        let outcome = since.as_ref().map(|pos| {
            let same_epoch = pos.epoch == first.top.epoch || *pos == StreamPosition::start();
            match (recovered, same_epoch) {
                (true, _) => "recovered",
                (false, true) => "partial",
                (false, false) => "reset",
            }
        });
        // Where this subscription continues from: just before the first message history returned
        // for a resume (the client's position when nothing is missing), else the channel's top.
        let start = match (&since, first.messages.first()) {
            (Some(_), Some(m)) => StreamPosition {
                epoch: first.top.epoch.clone(),
                offset: m.offset - 1,
            },
            _ => first.top.clone(),
        };

        let mut shard = self.shard(channel.as_str()).lock();
        let Some(slot) = shard
            .get_mut(channel)
            .and_then(|e| e.slots.iter_mut().find(|s| s.conn == conn))
        else {
            return Ok(()); // the connection went away meanwhile
        };
        let SlotState::Pending(pending) = &mut slot.state else {
            return Ok(());
        };
        slot.outbox.push(Item::subscribed(
            request_id,
            channel.clone(),
            start.clone(),
            recovered,
        ));
        pending.start(&slot.outbox, start, first, outcome);
        let id = pending.id;
        let step = self.step(slot, channel);
        if !matches!(step, Step::Live(_)) {
            // The rest at the client's pace, in a task of its own: the caller (an SSE stream
            // that has not sent its headers yet, a WebSocket's op loop) must not wait for it.
            let outbox = slot.outbox.clone();
            drop(shard);
            tokio::spawn(self.clone().replay(conn, channel.clone(), outbox, id, step));
        }
        Ok(())
    }

    /// Removes `conn`'s subscription to `channel`. When the channel has no local subscriber left,
    /// the backbone subscription is dropped after the linger period unless someone resubscribes.
    pub fn unsubscribe(self: &Arc<Self>, conn: u64, channel: &ChannelName) -> bool {
        let mut shard = self.shard(channel.as_str()).lock();
        let Some(entry) = shard.get_mut(channel) else {
            return false;
        };
        let Some(i) = entry.slots.iter().position(|s| s.conn == conn) else {
            return false;
        };
        let mut slot = entry.slots.swap_remove(i);
        if let SlotState::Pending(pending) = &mut slot.state {
            pending.release(&slot.outbox);
            slot.outbox.nudge(); // its replay task, if any, looks again and ends
            if pending.outcome.is_some() {
                // A resume whose replay did not finish: the client did not get everything.
                self.metrics
                    .recoveries
                    .with_label_values(&["abandoned"])
                    .inc();
            }
        }
        if entry.slots.is_empty() {
            let generation = entry.generation;
            let hub = self.clone();
            let channel = channel.clone();
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(async move { hub.linger(channel, generation).await });
            }
        }
        true
    }

    async fn linger(self: Arc<Self>, channel: ChannelName, generation: u64) {
        tokio::time::sleep(self.config.linger).await;
        let idle = |hub: &Self| {
            hub.shard(channel.as_str())
                .lock()
                .get(&channel)
                .filter(|e| e.slots.is_empty() && e.generation == generation)
                .map(|e| e.backbone.clone())
        };
        let Some(backbone) = idle(&self) else { return };
        let mut subscribed = backbone.lock().await;
        // A subscriber that arrived meanwhile bumped the generation and is waiting on the lock.
        if idle(&self).is_none() {
            return;
        }
        if *subscribed {
            self.broker.unsubscribe(&channel).await;
            *subscribed = false;
        }
        let mut shard = self.shard(channel.as_str()).lock();
        if shard
            .get(&channel)
            .is_some_and(|e| e.slots.is_empty() && e.generation == generation)
        {
            shard.remove(&channel);
        }
    }

    /// Fans one live message out to the channel's local subscribers: written to the socket of
    /// each idle connection, queued for the others (see [`outbox`]).
    fn deliver(&self, msg: Arc<Message>) {
        let delivery = Delivery::new(msg);
        let mut shard = self.shard(delivery.msg.channel.as_str()).lock();
        let Some(entry) = shard.get_mut(&delivery.msg.channel) else {
            return;
        };
        let mut dropped = 0u64;
        let mut written = Written::default();
        for (i, slot) in entry.slots.iter_mut().enumerate() {
            match offer(slot, delivery.clone(), i < DIRECT_WRITES_PER_MESSAGE) {
                Pushed::Refused => dropped += 1,
                Pushed::Written(transport) => {
                    if !written.add(transport) {
                        self.metrics.wrote(transport, 1);
                    }
                }
                Pushed::Queued => {}
            }
        }
        drop(shard);
        if dropped > 0 {
            self.metrics
                .dropped
                .with_label_values(&["slow_consumer"])
                .inc_by(dropped);
        }
        written.record(&self.metrics, delivery.msg.published_at_us);
    }

    /// Counts channels, subscriptions and queued items. Takes every shard lock in turn, for as
    /// long as it takes to add up its channels' subscriber counts (no outbox is looked at: what
    /// they hold is kept in [`Totals`] as it changes), so a scrape does not stall the fan-out.
    pub fn stats(&self) -> HubStats {
        let mut stats = HubStats::default();
        for shard in self.shards.iter() {
            let shard = shard.lock();
            stats.channels += shard.len();
            stats.subscriptions += shard.values().map(|e| e.slots.len()).sum::<usize>();
        }
        (stats.queued, stats.queued_bytes) = self.totals.get();
        stats
    }

    /// Local channels with at least one subscriber or a lingering backbone subscription.
    pub fn channel_count(&self) -> usize {
        self.stats().channels
    }

    /// Local subscriptions (connection x channel).
    pub fn subscription_count(&self) -> usize {
        self.stats().subscriptions
    }
}

/// Removes a subscription that did not go live (see [`Hub::subscribe`]).
struct Unwind<'a> {
    hub: &'a Arc<Hub>,
    conn: u64,
    channel: &'a ChannelName,
    armed: bool,
}

impl Drop for Unwind<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.unsubscribe(self.conn, self.channel);
        }
    }
}

/// Deliveries written straight to sockets by one fan-out, per transport: counted once per
/// message instead of once per connection.
#[derive(Default)]
struct Written {
    counts: [(&'static str, u64); 4],
}

impl Written {
    /// Counts one; false when every slot holds another transport (the caller counts it).
    fn add(&mut self, transport: &'static str) -> bool {
        for (t, n) in &mut self.counts {
            if *n == 0 || *t == transport {
                *t = transport;
                *n += 1;
                return true;
            }
        }
        false
    }

    fn record(&self, metrics: &HubMetrics, published_at_us: u64) {
        let mut any = false;
        for &(transport, n) in &self.counts {
            if n > 0 {
                metrics.wrote(transport, n);
                any = true;
            }
        }
        if any {
            metrics.fanout_age(published_at_us);
        }
    }
}

/// Hands `d` to one subscriber: buffer it, drop it as a duplicate, or push it (announcing a
/// stream reset first when the epoch changed), written directly only if `direct`.
fn offer(slot: &mut Slot, d: Arc<Delivery>, direct: bool) -> Pushed {
    match &mut slot.state {
        SlotState::Pending(pending) => {
            pending.buffer(&slot.outbox, d);
            Pushed::Queued
        }
        SlotState::Live { epoch, last } => {
            // `adopt`: after the first message of a channel the check is a pointer compare.
            if !epoch.adopt(&d.msg.epoch) {
                if epoch.is_none() && *last == 0 && d.msg.offset == 1 {
                    // The channel's first message: its publish created the epoch.
                    *epoch = d.msg.epoch.clone();
                } else {
                    // The channel's history was lost (e.g. Redis restarted empty): tell the
                    // client explicitly instead of silently continuing in a new stream.
                    *epoch = d.msg.epoch.clone();
                    *last = d.msg.offset.saturating_sub(1);
                    slot.outbox.push_as(
                        Item::subscribed(
                            None,
                            d.msg.channel.clone(),
                            StreamPosition {
                                epoch: epoch.clone(),
                                offset: *last,
                            },
                            false,
                        ),
                        direct,
                    );
                }
            } else if d.msg.offset <= *last {
                return Pushed::Queued; // already delivered (the resume seam)
            }
            *last = d.msg.offset;
            slot.outbox.push_as(Item::Message(d), direct)
        }
    }
}

#[cfg(test)]
mod tests;
