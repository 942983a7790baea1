//! The relay: the one task that turns backbone pushes into sink deliveries, per channel in
//! offset order, exactly once, filling node-level gaps from history first.
//!
//! Every push, baseline and resync goes through one bounded queue into this task, so
//! per-channel state (the cursor = last offset handed to the sink) has a single writer and
//! deliveries for one channel can never race: only this task calls a sink. A message that does
//! not continue the cursor is parked in the channel's `pending` queue while the gap before it is
//! read from history (the same read script as `Broker::history`, in "follow" mode so an epoch
//! change reads the new epoch from its start); then whatever is parked and newer than the
//! cursor is delivered. After a read, a gap that history could not fill (trimmed or expired) is
//! skipped rather than waited for, and a new epoch is delivered as-is: the hub detects it.
//!
//! A read happens when a message skips ahead, when the epoch changes, after every (re)connect
//! (`Resync`: anything published while the connection was down), when the queue overflowed,
//! and on a timer for channels whose read failed. Reads never run on the relay loop: each is
//! its own task ([`fill`], at most [`FILL_CONCURRENCY`] reading at once, one per channel),
//! whose result comes back to the loop as a [`Filled`]. So a slow read stalls only its own
//! channel, whose live messages wait parked meanwhile (at most [`MAX_PENDING`]).
//!
//! The queue is bounded ([`RedisConfig::relay_queue`](super::RedisConfig)): a push that finds it
//! full is dropped and counted, and every channel then reads history before delivering more,
//! which brings back exactly what was dropped. Memory stays bounded however far the relay falls
//! behind. Disconnects and self-probe echoes never enter the queue: the pub/sub connection's
//! push handler acts on them at once ([`accept`]), so a probe is never late because of a busy
//! relay.
//!
//! A read also checks that history still contains what this node delivered ([`lost`]): after a
//! failover to a replica that had not received the last messages the channel moves to a new
//! epoch, so every subscriber gets an explicit reset rather than silence.
//!
//! With replicated durability, live pushes first wait in [`held`] until a replica has them.

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use herald_core::{ChannelName, Epoch, Message, StreamPosition};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::{self, Receiver, error::TrySendError};

use super::{RedisStats, Shared, codec, hooks::Hold};
use crate::Sink;

mod fill;
mod held;
mod lost;

use fill::Fills;
use held::Held;

/// Gap fills read concurrently across channels (after a reconnect, say), at most this many at
/// once; the others wait for a turn.
const FILL_CONCURRENCY: usize = 16;
/// How often channels whose gap read failed are retried.
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// Most messages parked per channel while its gap is read or cannot be read; the oldest go
/// first (history returns them: the channel reads it again before delivering more).
const MAX_PENDING: usize = 10_000;

pub(crate) enum Event {
    /// A live message from pub/sub connection generation `generation`.
    Push { generation: u64, info: PushInfo },
    /// `subscribe` confirmed subscription `sub` and read the channel's top: live messages
    /// after `top` are what the sink gets.
    Baseline {
        channel: ChannelName,
        sub: u64,
        top: StreamPosition,
    },
    /// Connection `generation` is subscribed to everything: read what was missed while it was down.
    Resync,
}

/// A subscribed channel's delivery state.
pub(crate) struct Slot {
    pub sink: Arc<dyn Sink>,
    /// Identifies one `subscribe` call, so late events of an earlier subscription are ignored.
    pub sub: u64,
    /// The last position handed to the sink (the baseline at first); `None` until the baseline.
    cursor: Option<StreamPosition>,
    /// Messages received but not yet delivered, in arrival order.
    pending: VecDeque<Arc<Message>>,
    /// History must be read before the next delivery (after a reconnect, an overflow or a
    /// failed read).
    needs_fill: bool,
    /// A read of this channel is in flight: nothing is delivered until it is back.
    filling: bool,
    /// A fill was owed while a read was in flight, which may have read too early: read again.
    refill: bool,
    /// The last read failed: only the retry timer reads again, so a struggling Redis is not
    /// asked once per live message.
    read_failed: bool,
    /// The last message handed to the sink, to check that history still holds it.
    last: Option<Arc<Message>>,
}

impl Slot {
    pub(crate) fn new(sink: Arc<dyn Sink>, sub: u64) -> Self {
        Self {
            sink,
            sub,
            cursor: None,
            pending: VecDeque::new(),
            needs_fill: false,
            filling: false,
            refill: false,
            read_failed: false,
            last: None,
        }
    }

    /// History must be read before anything more is delivered.
    fn owe_fill(&mut self) {
        self.needs_fill = true;
        self.refill |= self.filling;
    }
}

/// Every channel reads history before delivering more (live messages were dropped); the
/// retry tick starts the reads.
fn owe_fill_everywhere(shared: &Shared) {
    for slot in shared.channels.lock().values_mut() {
        slot.owe_fill();
    }
    shared.stale.store(true, Ordering::Relaxed);
}

/// The pub/sub connection's push handler (called by the connection's driver, must not block).
/// Disconnects and probe echoes are acted on here; live messages go into the relay's queue, or
/// are dropped and owed from history when it is full. `Err` only once the relay stopped.
pub(crate) fn accept(shared: &Shared, generation: u64, info: PushInfo) -> Result<(), ()> {
    match info.kind {
        PushKind::Disconnection => {
            shared.mark_broken(generation);
            return Ok(());
        }
        PushKind::Message | PushKind::SMessage => {}
        _ => return Ok(()), // subscription confirmations and the like
    }
    if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (info.data.first(), info.data.get(1))
        && shared.probes.on_push(channel, payload)
    {
        return Ok(());
    }
    match shared.events.try_send(Event::Push { generation, info }) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => {
            if !shared.overflowed.swap(true, Ordering::AcqRel) {
                tracing::warn!("redis relay queue full: dropping live messages, history fills in");
            }
            RedisStats::inc(&shared.stats.relay_overflows);
            Ok(())
        }
        Err(TrySendError::Closed(_)) => Err(()),
    }
}

pub(crate) async fn run(shared: Arc<Shared>, mut events: Receiver<Event>) {
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (filled_tx, mut filled) = mpsc::unbounded_channel();
    let fills = Fills::new(filled_tx, FILL_CONCURRENCY);
    let mut held = Held::default();
    loop {
        held.start(&shared);
        tokio::select! {
            event = events.recv() => {
                shared.hooks.pass(&Hold::Relay).await;
                match event {
                    Some(Event::Push { generation, info }) if Held::takes(&shared, &info) => {
                        held.hold(&shared, generation, info);
                    }
                    Some(event) => {
                        if matches!(event, Event::Resync) {
                            held.clear();
                        }
                        handle(&shared, &fills, event);
                    }
                    None => return,
                }
                if shared.overflowed.swap(false, Ordering::AcqRel) {
                    // Pushes were dropped: every channel reads history before delivering more.
                    for slot in shared.channels.lock().values_mut() {
                        slot.owe_fill();
                    }
                    sync_all(&shared, &fills, |slot| slot.needs_fill, false);
                }
            }
            // The loop holds a sender, so this never ends.
            Some(done) = filled.recv() => fill::finish(&shared, &fills, done),
            Some((lane, result)) = held.confirmed(), if held.confirming() => {
                for info in held.finish(&shared, lane, result) {
                    on_push(&shared, &fills, info.data);
                }
            }
            _ = retry.tick() => {
                held.retry();
                if shared.stale.swap(false, Ordering::Relaxed) {
                    sync_all(&shared, &fills, |slot| slot.needs_fill, true);
                }
            }
        }
    }
}

fn handle(shared: &Arc<Shared>, fills: &Fills, event: Event) {
    match event {
        Event::Push { info, .. } => on_push(shared, fills, info.data),
        Event::Baseline { channel, sub, top } => {
            if let Some(slot) = shared.channels.lock().get_mut(&channel)
                && slot.sub == sub
                && slot.cursor.is_none()
            {
                slot.cursor = Some(top);
                slot.last = None;
            }
            sync(shared, fills, &channel, sub, false, None);
        }
        Event::Resync => {
            for slot in shared.channels.lock().values_mut() {
                slot.owe_fill();
            }
            sync_all(shared, fills, |slot| slot.needs_fill, true);
        }
    }
}

fn on_push(shared: &Arc<Shared>, fills: &Fills, data: Vec<Value>) {
    let mut data = data.into_iter();
    let (Some(Value::BulkString(_)), Some(Value::BulkString(payload))) = (data.next(), data.next())
    else {
        RedisStats::inc(&shared.stats.decode_errors);
        return;
    };
    let mut msg = match codec::decode(Bytes::from(payload)) {
        Ok(m) => m,
        Err(e) => {
            RedisStats::inc(&shared.stats.decode_errors);
            tracing::debug!(error = %e, "dropping backbone message");
            return;
        }
    };
    let channel = msg.channel.clone();
    let sub = {
        let mut map = shared.channels.lock();
        let Some(slot) = map.get_mut(&channel) else {
            return;
        };
        // One epoch allocation per channel, so the hub checks it per subscriber by pointer.
        if let Some(cursor) = &slot.cursor {
            msg.epoch.adopt(&cursor.epoch);
        }
        let msg = Arc::new(msg);
        if slot.pending.len() >= MAX_PENDING {
            slot.pending.pop_front();
            slot.owe_fill();
        }
        slot.pending.push_back(msg);
        slot.sub
    };
    sync(shared, fills, &channel, sub, false, None);
}

/// Runs [`sync`] for every channel that `want`s it and has a baseline.
fn sync_all(shared: &Arc<Shared>, fills: &Fills, want: impl Fn(&Slot) -> bool, retry: bool) {
    let todo: Vec<(ChannelName, u64)> = shared
        .channels
        .lock()
        .iter()
        .filter(|(_, s)| s.cursor.is_some() && want(s))
        .map(|(c, s)| (c.clone(), s.sub))
        .collect();
    for (channel, sub) in todo {
        sync(shared, fills, &channel, sub, retry, None);
    }
}

/// What a fill must read before more of the channel can be delivered.
struct Gap {
    cursor: StreamPosition,
    limit: usize,
}

/// Delivers `channel`'s pending messages that continue its cursor, and starts a history read
/// when they do not (or when a fill is owed), unless one is in flight. After a failed read only
/// a `retry` reads again. `read_epoch`: the channel was just read, in that epoch (what is still
/// parked is delivered as-is, see [`advance`]).
fn sync(
    shared: &Arc<Shared>,
    fills: &Fills,
    channel: &ChannelName,
    sub: u64,
    retry: bool,
    read_epoch: Option<&Epoch>,
) {
    let mut out = Vec::new();
    let (sink, read) = {
        let mut map = shared.channels.lock();
        let Some(slot) = map.get_mut(channel) else {
            return;
        };
        if slot.sub != sub || slot.filling {
            return;
        }
        let history_size = shared.retention(channel).size;
        let gap = advance(slot, read_epoch, history_size, &mut out);
        if let Some(m) = out.last() {
            slot.last = Some(m.clone());
        }
        // Right after a read, a second one could only spin on a stale message.
        let read = gap
            .filter(|_| read_epoch.is_none() && (retry || !slot.read_failed))
            .map(|gap| {
                slot.filling = true;
                (gap, slot.last.clone())
            });
        (slot.sink.clone(), read)
    };
    deliver(shared, &sink, out, false);
    if let Some((gap, last)) = read {
        fills.start(shared, channel.clone(), sub, gap, last);
    }
}

/// Moves deliverable messages from `pending` to `out`, advancing the cursor; returns the read
/// needed before anything else can go, if any.
fn advance(
    slot: &mut Slot,
    read_epoch: Option<&Epoch>,
    history_size: usize,
    out: &mut Vec<Arc<Message>>,
) -> Option<Gap> {
    let mut cursor = slot.cursor.clone()?;
    let mut gap = None;
    while let Some(front) = slot.pending.front() {
        let same_epoch = front.epoch == cursor.epoch;
        if same_epoch && front.offset <= cursor.offset {
            slot.pending.pop_front(); // already delivered (live or from history)
            continue;
        }
        if slot.needs_fill {
            break;
        }
        // Also offset 1 of the first epoch after a baseline taken before the channel had one.
        let next = cursor.is_followed_by(&front.epoch, front.offset);
        match read_epoch {
            _ if next => {}
            Some(e) if *e == front.epoch => {}
            Some(_) => {
                slot.pending.pop_front();
                continue;
            }
            None => {
                let limit = if same_epoch {
                    usize::try_from(front.offset - cursor.offset - 1).unwrap_or(usize::MAX)
                } else {
                    front
                        .offset
                        .saturating_sub(1)
                        .try_into()
                        .unwrap_or(usize::MAX)
                };
                gap = Some(limit.min(history_size));
                break;
            }
        }
        if let Some(m) = slot.pending.pop_front() {
            cursor = m.position();
            out.push(m);
        }
    }
    slot.cursor = Some(cursor.clone());
    if slot.needs_fill {
        gap = Some(history_size);
    }
    gap.map(|limit| Gap { cursor, limit })
}

fn deliver(shared: &Shared, sink: &Arc<dyn Sink>, msgs: Vec<Arc<Message>>, filled: bool) {
    let n = msgs.len() as u64;
    for m in msgs {
        sink.deliver(m);
    }
    shared.stats.delivered.fetch_add(n, Ordering::Relaxed);
    if filled {
        shared
            .stats
            .gap_fill_messages
            .fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
