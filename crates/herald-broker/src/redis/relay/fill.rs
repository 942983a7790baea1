//! Gap fills: history reads for the relay, each in its own task so that a slow read holds up
//! only its own channel.
//!
//! The relay marks the channel `filling` and starts the read here; the result comes back to
//! the relay loop as a [`Filled`], and only the loop applies it and delivers (deliveries keep a
//! single writer, so they stay in order). At most one read per channel is in flight, and at
//! most `concurrency` read at once over all channels.

use std::sync::{Arc, atomic::Ordering};

use herald_core::{ChannelName, Epoch, Message, StreamPosition};
use tokio::sync::{Semaphore, mpsc::UnboundedSender};

use super::{Gap, RedisStats, Shared, deliver, lost, sync};
use crate::{BrokerError, HistoryQuery, redis::hooks::Hold, redis::scripts::ReadReply};

/// A finished read of one channel's history, for the relay loop.
pub(super) struct Filled {
    channel: ChannelName,
    sub: u64,
    /// Where the read started from (the cursor when it was started) and how many it asked for.
    cursor: StreamPosition,
    limit: usize,
    result: Result<ReadReply, BrokerError>,
}

/// Starts reads and sends their results back to the relay loop.
pub(super) struct Fills {
    done: UnboundedSender<Filled>,
    turns: Arc<Semaphore>,
}

impl Fills {
    /// `done`: at most one message per subscribed channel is ever queued (one read in flight).
    pub(super) fn new(done: UnboundedSender<Filled>, concurrency: usize) -> Self {
        Self {
            done,
            turns: Arc::new(Semaphore::new(concurrency)),
        }
    }

    /// Reads what `gap` needs, verifying on the way that history still holds `last` (the last
    /// message delivered) when the gap starts right after it.
    pub(super) fn start(
        &self,
        shared: &Arc<Shared>,
        channel: ChannelName,
        sub: u64,
        gap: Gap,
        last: Option<Arc<Message>>,
    ) {
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
        let (shared, done, turns) = (shared.clone(), self.done.clone(), self.turns.clone());
        tokio::spawn(async move {
            // The semaphore is never closed.
            let _turn = turns.acquire_owned().await;
            shared.hooks.pass(&Hold::Fill(channel.clone())).await;
            let result = shared.read(&channel, &query, true).await;
            let result = lost::reset_if_lost(
                &shared,
                &channel,
                &gap.cursor,
                verify.as_deref(),
                result,
                || shared.read(&channel, &query, true),
            )
            .await;
            // Fails only when the relay stopped (the broker was dropped).
            let _ = done.send(Filled {
                channel,
                sub,
                cursor: gap.cursor,
                limit,
                result,
            });
        });
    }
}

/// Applies a finished read: delivers what it brought, then what was parked behind it.
pub(super) fn finish(shared: &Arc<Shared>, fills: &Fills, done: Filled) {
    let Filled {
        channel,
        sub,
        mut cursor,
        limit,
        result,
    } = done;
    let mut out = Vec::new();
    let (sink, read_epoch): (_, Option<Epoch>) = {
        let mut map = shared.channels.lock();
        let Some(slot) = map.get_mut(&channel) else {
            return;
        };
        if slot.sub != sub {
            return;
        }
        slot.filling = false;
        let refill = std::mem::take(&mut slot.refill);
        match result {
            Err(e) => {
                tracing::warn!(%channel, error = %e, "gap fill from history failed; will retry");
                slot.needs_fill = true;
                slot.read_failed = true;
                shared.stale.store(true, Ordering::Relaxed);
                return;
            }
            Ok(reply) => {
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
                // A page ended before the history did (reads are bounded pages), or a fill
                // was owed while this read was in flight: read on before delivering what is
                // parked.
                slot.needs_fill = cut || refill;
                let read_epoch = (!slot.needs_fill).then_some(reply.top.epoch);
                (slot.sink.clone(), read_epoch)
            }
        }
    };
    deliver(shared, &sink, out, true);
    sync(shared, fills, &channel, sub, false, read_epoch.as_ref());
}
