//! The relay: the one task that turns backbone pushes into sink deliveries, per channel in
//! offset order, exactly once, filling node-level gaps from history first.
//!
//! Every push, baseline and resync goes through one queue into this task, so per-channel state
//! (the cursor = last offset handed to the sink) has a single writer and deliveries for one
//! channel can never race. A message that does not continue the cursor is parked in the
//! channel's `pending` queue while the gap before it is read from history (the same read script
//! as `Broker::history`, in "follow" mode so an epoch change reads the new epoch from its
//! start); then whatever is parked and newer than the cursor is delivered. After a read, a gap
//! that history could not fill (trimmed or expired) is skipped rather than waited for, and a
//! new epoch is delivered as-is: the hub detects it.
//!
//! A read happens when a message skips ahead, when the epoch changes, after every (re)connect
//! (`Resync`: anything published while the connection was down), and on a timer for channels
//! whose read failed. While it is awaited the queue simply grows; nothing is lost.
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
use futures_util::StreamExt;
use herald_core::{ChannelName, Epoch, Message, StreamPosition};
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{RedisStats, Shared, codec};
use crate::{HistoryQuery, Sink};

mod held;
mod lost;

use held::Held;

/// Fills run concurrently across channels after a reconnect, at most this many at once.
const FILL_CONCURRENCY: usize = 16;
/// How often channels whose gap read failed are retried.
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// Most messages parked per channel while its gap cannot be read; the oldest go first (they
/// are the ones history will return once it can be read again).
const MAX_PENDING: usize = 10_000;

pub(crate) enum Event {
    /// A push frame from pub/sub connection generation `generation`.
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
    /// History must be read before the next delivery (after a reconnect or a failed read).
    needs_fill: bool,
    /// The last read failed: only the retry timer reads again, so a struggling Redis is not
    /// asked once per live message while the relay waits on each attempt.
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
            read_failed: false,
            last: None,
        }
    }
}

/// Every channel reads history before delivering more (live messages were dropped).
fn owe_fill_everywhere(shared: &Shared) {
    for slot in shared.channels.lock().values_mut() {
        slot.needs_fill = true;
    }
    shared.stale.store(true, Ordering::Relaxed);
}

pub(crate) async fn run(shared: Arc<Shared>, mut events: UnboundedReceiver<Event>) {
    let mut retry = tokio::time::interval(RETRY_PERIOD);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut held = Held::default();
    loop {
        held.start(&shared);
        tokio::select! {
            event = events.recv() => match event {
                Some(Event::Push { generation, info }) if Held::takes(&shared, &info) => {
                    held.hold(&shared, generation, info);
                }
                Some(event) => {
                    if matches!(event, Event::Resync) {
                        held.clear();
                    }
                    handle(&shared, event).await;
                }
                None => return,
            },
            Some((lane, result)) = held.confirmed(), if held.confirming() => {
                for info in held.finish(&shared, lane, result) {
                    on_push(&shared, info.data).await;
                }
            }
            _ = retry.tick() => {
                held.retry();
                if shared.stale.swap(false, Ordering::Relaxed) {
                    sync_all(&shared, |slot| slot.needs_fill, true).await;
                }
            }
        }
    }
}

async fn handle(shared: &Shared, event: Event) {
    match event {
        Event::Push { generation, info } => match info.kind {
            PushKind::Disconnection => shared.mark_broken(generation),
            PushKind::Message | PushKind::SMessage => on_push(shared, info.data).await,
            _ => {}
        },
        Event::Baseline { channel, sub, top } => {
            if let Some(slot) = shared.channels.lock().get_mut(&channel)
                && slot.sub == sub
                && slot.cursor.is_none()
            {
                slot.cursor = Some(top);
                slot.last = None;
            }
            sync(shared, &channel, sub, false).await;
        }
        Event::Resync => {
            for slot in shared.channels.lock().values_mut() {
                slot.needs_fill = true;
            }
            sync_all(shared, |slot| slot.needs_fill, true).await;
        }
    }
}

async fn on_push(shared: &Shared, data: Vec<Value>) {
    let mut data = data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        RedisStats::inc(&shared.stats.decode_errors);
        return;
    };
    if shared.probes.on_push(&channel, &payload) {
        return;
    }
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
            slot.needs_fill = true;
        }
        slot.pending.push_back(msg);
        slot.sub
    };
    sync(shared, &channel, sub, false).await;
}

/// Runs [`sync`] for every channel that `want`s it and has a baseline.
async fn sync_all(shared: &Shared, want: impl Fn(&Slot) -> bool, retry: bool) {
    let todo: Vec<(ChannelName, u64)> = shared
        .channels
        .lock()
        .iter()
        .filter(|(_, s)| s.cursor.is_some() && want(s))
        .map(|(c, s)| (c.clone(), s.sub))
        .collect();
    futures_util::stream::iter(todo)
        .for_each_concurrent(FILL_CONCURRENCY, |(channel, sub)| async move {
            sync(shared, &channel, sub, retry).await;
        })
        .await;
}

/// What [`sync`] must read before it can deliver more.
struct Gap {
    cursor: StreamPosition,
    limit: usize,
}

/// Delivers `channel`'s pending messages that continue its cursor, reading history once when
/// they do not (or when a fill is owed). After a failed read only a `retry` reads again.
async fn sync(shared: &Shared, channel: &ChannelName, sub: u64, retry: bool) {
    // Set after a history read: the channel's epoch at that point. Anything still parked after
    // the read is delivered if it belongs to that epoch (its gap is unrecoverable) and dropped
    // otherwise (an epoch that history no longer knows).
    let mut read_epoch: Option<Epoch> = None;
    loop {
        let mut out = Vec::new();
        let (sink, gap, last) = {
            let mut map = shared.channels.lock();
            let Some(slot) = map.get_mut(channel) else {
                return;
            };
            if slot.sub != sub {
                return;
            }
            let history_size = shared.retention(channel).size;
            let gap = advance(slot, read_epoch.as_ref(), history_size, &mut out);
            let gap = gap.filter(|_| retry || !slot.read_failed);
            if let Some(m) = out.last() {
                slot.last = Some(m.clone());
            }
            (slot.sink.clone(), gap, slot.last.clone())
        };
        deliver(shared, &sink, out, false);
        let Some(gap) = gap else { return };
        if read_epoch.is_some() {
            return; // a second read in one pass could only spin on a stale message
        }
        RedisStats::inc(&shared.stats.gap_fills);
        // Read from the last delivered message (when the cursor is one) to check it is still there.
        let verify = last.filter(|m| m.position() == gap.cursor && m.offset > 0);
        let since = match &verify {
            Some(m) => StreamPosition {
                epoch: m.epoch.clone(),
                offset: m.offset - 1,
            },
            None => gap.cursor.clone(),
        };
        let limit = gap.limit.saturating_add(usize::from(verify.is_some()));
        let query = HistoryQuery::after(since, limit, shared.cfg.page_bytes);
        let result = shared.read(channel, &query, true).await;
        let result = lost::reset_if_lost(
            shared,
            channel,
            &gap.cursor,
            verify.as_deref(),
            result,
            || shared.read(channel, &query, true),
        )
        .await;
        let mut out = Vec::new();
        {
            let mut map = shared.channels.lock();
            let Some(slot) = map.get_mut(channel) else {
                return;
            };
            if slot.sub != sub {
                return;
            }
            match result {
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "gap fill from history failed; will retry");
                    slot.needs_fill = true;
                    slot.read_failed = true;
                    shared.stale.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(reply) => {
                    let mut cursor = gap.cursor;
                    // Fewer messages than asked for, yet not up to the top: the page's byte
                    // bound cut it.
                    let cut = reply.messages.len() < limit
                        && reply
                            .messages
                            .last()
                            .is_some_and(|m| m.offset < reply.top.offset);
                    for m in reply.messages {
                        let newer = if m.epoch == cursor.epoch {
                            m.offset > cursor.offset
                        } else {
                            m.epoch == reply.top.epoch
                        };
                        if newer {
                            cursor = m.position();
                            out.push(m);
                        }
                    }
                    if let Some(m) = out.last() {
                        slot.last = Some(m.clone());
                    }
                    slot.cursor = Some(cursor);
                    slot.read_failed = false;
                    if cut {
                        // The page ended before the history did (reads are bounded pages):
                        // read on before delivering anything parked.
                        slot.needs_fill = true;
                        read_epoch = None;
                    } else {
                        slot.needs_fill = false;
                        read_epoch = Some(reply.top.epoch);
                    }
                }
            }
        }
        deliver(shared, &sink, out, true);
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
