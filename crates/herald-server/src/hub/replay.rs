//! A subscription that is not live yet: history is delivered page by page at the pace the client
//! reads, and live messages wait in a bounded buffer until history has caught up with them.
//!
//! Every subscription starts here (the seam: it buffers live messages from before its history
//! read), and most leave at once: a fresh subscriber after reading the top, a resume whose missed
//! messages fit one page and the queue's replay half. A longer resume stays, and a task of its
//! own ([`super::Hub`]'s `replay`) alternates between queueing what the outbox has room for and
//! reading the next page, one page at a time per connection. Once history reaches the channel's
//! top, the buffered live messages follow (deduplicated by offset) and the subscription goes
//! live.
//!
//! Nothing here grows without bound. The buffer is counted against the connection's byte bound;
//! when it would overflow it is dropped and marked as a hole, which the replay fills by reading
//! history again (a gap in what history still holds is announced, never skipped silently). The
//! page holds one read. The slow-consumer rule stays with live traffic: a replay waits for room
//! instead of overflowing the queue.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use herald_broker::History;
use herald_core::{ChannelName, StreamPosition};

use super::{Delivery, Hub, Item, Outbox, Slot, SlotState};

/// A replay whose page read failed retries after this, doubling up to the maximum.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// What a pending subscription needs next.
#[derive(Debug)]
pub(super) enum Step {
    /// History and buffer are delivered: go live after this position.
    Live(StreamPosition),
    /// The outbox has no room for the replay: wait for room generation to change.
    Wait(u64),
    /// Read the history page after this position.
    Read(StreamPosition),
}

pub(super) struct Pending {
    /// Identifies this replay: a resubscribe on the same connection is another one.
    pub id: u64,
    /// What the subscriber has been given so far; `None` until the first read.
    pub position: Option<StreamPosition>,
    /// Live messages that arrived while not live, oldest first, and the bytes they hold.
    buffer: VecDeque<Arc<Delivery>>,
    buffered: usize,
    /// The buffer dropped messages since the last history read began: read again before going
    /// live.
    pub hole: bool,
    /// Read from history (and stream notices), not yet queued, and the bytes they hold.
    page: VecDeque<Item>,
    paged: usize,
    /// The last read reached the channel's top (as of that read).
    complete: bool,
    /// The channel's epoch changed under the replay: the next page is announced as a reset.
    reset_pending: bool,
    /// For resumes: the outcome so far (`recovered`, `partial`, `reset`).
    pub outcome: Option<&'static str>,
}

fn position_of(item: &Item) -> Option<StreamPosition> {
    match item {
        Item::Message(d) => Some(d.msg.position()),
        Item::Subscribed(s) => Some(s.position.clone()),
        Item::Raw(_) => None,
    }
}

fn covers(position: &StreamPosition, d: &Delivery) -> bool {
    d.msg.epoch == position.epoch && d.msg.offset <= position.offset
}

impl Pending {
    pub fn new(id: u64) -> Box<Self> {
        Box::new(Self {
            id,
            position: None,
            buffer: VecDeque::new(),
            buffered: 0,
            hole: false,
            page: VecDeque::new(),
            paged: 0,
            complete: false,
            reset_pending: false,
            outcome: None,
        })
    }

    /// Holds a live message until history has caught up. On overflow the buffer is dropped and
    /// the loss remembered as a hole, to be read from history: memory stays bounded and nothing
    /// is lost silently.
    pub fn buffer(&mut self, outbox: &Outbox, d: Arc<Delivery>) {
        let cost = d.cost();
        if !outbox.try_hold(cost) {
            outbox.release(self.buffered);
            self.buffer.clear();
            self.buffered = 0;
            self.hole = true;
            if !outbox.try_hold(cost) {
                return;
            }
        }
        self.buffered += cost;
        self.buffer.push_back(d);
    }

    /// Stops counting what this subscription holds (it is being removed).
    pub fn release(&mut self, outbox: &Outbox) {
        outbox.release(self.buffered + self.paged);
        self.buffered = 0;
        self.paged = 0;
    }

    fn add(&mut self, outbox: &Outbox, item: Item) {
        let cost = item.cost();
        outbox.hold(cost);
        self.paged += cost;
        self.page.push_back(item);
    }

    /// The first read's messages (after the `subscribed` reply announced `start`).
    pub fn start(
        &mut self,
        outbox: &Outbox,
        start: StreamPosition,
        first: History,
        outcome: Option<&'static str>,
    ) {
        self.complete = first.is_complete();
        self.position = Some(start);
        self.outcome = outcome;
        for m in first.messages {
            self.add(outbox, Item::Message(Delivery::new(m)));
        }
    }

    /// A later page, read after `from`. A gap before it (history trimmed while the client was
    /// reading) or an epoch change is announced with a `subscribed` notice, as a live reset is.
    pub fn accept(
        &mut self,
        outbox: &Outbox,
        channel: &ChannelName,
        from: &StreamPosition,
        page: History,
    ) {
        self.complete = page.is_complete();
        let same_epoch = page.top.epoch == from.epoch || *from == StreamPosition::start();
        if !same_epoch {
            // The history being replayed was lost (e.g. Redis restarted empty): go on with the
            // new epoch from its start.
            self.outcome = self.outcome.map(|_| "reset");
            self.reset_pending = true;
            self.complete = false;
            self.position = Some(StreamPosition {
                epoch: page.top.epoch,
                offset: 0,
            });
            return;
        }
        if !page.recovered || self.reset_pending {
            if !page.recovered && self.outcome == Some("recovered") {
                self.outcome = Some("partial");
            }
            let offset = page
                .messages
                .first()
                .map_or(page.top.offset, |m| m.offset - 1);
            let at = StreamPosition {
                epoch: page.top.epoch.clone(),
                offset,
            };
            self.add(outbox, Item::subscribed(None, channel.clone(), at, false));
            self.reset_pending = false;
        }
        for m in page.messages {
            self.add(outbox, Item::Message(Delivery::new(m)));
        }
    }

    /// Queues what the outbox has room for and decides what comes next.
    pub fn step(&mut self, outbox: &Outbox, channel: &ChannelName) -> Step {
        let Some(mut position) = self.position.clone() else {
            return Step::Read(StreamPosition::start());
        };
        loop {
            while let Some(item) = self.page.pop_front() {
                let cost = item.cost();
                if let Item::Message(d) = &item
                    && covers(&position, d)
                {
                    self.paged -= cost;
                    outbox.release(cost);
                    continue;
                }
                let next = position_of(&item);
                match outbox.push_replay(item, cost) {
                    Ok(()) => {
                        self.paged -= cost;
                        if let Some(next) = next {
                            position = next;
                        }
                    }
                    Err((item, room)) => {
                        self.page.push_front(item);
                        self.position = Some(position);
                        return Step::Wait(room);
                    }
                }
            }
            self.position = Some(position.clone());
            if !self.complete || self.hole {
                return Step::Read(position);
            }
            // History is delivered up to the top of the last read; the buffer holds every live
            // message since (no hole), possibly overlapping what history gave.
            while self.buffer.front().is_some_and(|d| covers(&position, d)) {
                if let Some(d) = self.buffer.pop_front() {
                    let cost = d.cost();
                    self.buffered -= cost;
                    outbox.release(cost);
                }
            }
            let Some(front) = self.buffer.front() else {
                return Step::Live(position);
            };
            let reset = front.msg.epoch != position.epoch
                && position != StreamPosition::start()
                && front.msg.offset == 1;
            if !reset && !position.is_followed_by(&front.msg.epoch, front.msg.offset) {
                return Step::Read(position); // a gap the buffer cannot fill
            }
            if reset {
                // The channel started over after the last read: announce it like a live reset.
                let at = StreamPosition {
                    epoch: front.msg.epoch.clone(),
                    offset: 0,
                };
                self.add(outbox, Item::subscribed(None, channel.clone(), at, false));
            }
            // Queue the buffer through the same paced path (it may be large).
            let moved = std::mem::take(&mut self.buffer);
            self.paged += self.buffered;
            self.buffered = 0;
            self.page.extend(moved.into_iter().map(Item::Message));
        }
    }
}

impl Hub {
    /// Runs `f` on replay `id` of `conn`'s subscription to `channel`, under the shard lock;
    /// `None` when that replay is over (unsubscribed, or live).
    fn with_pending<R>(
        &self,
        conn: u64,
        channel: &ChannelName,
        id: u64,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Option<R> {
        let mut shard = self.shard(channel.as_str()).lock();
        let slot = shard
            .get_mut(channel)?
            .slots
            .iter_mut()
            .find(|s| s.conn == conn)?;
        match &slot.state {
            SlotState::Pending(p) if p.id == id => Some(f(slot)),
            _ => None,
        }
    }

    /// Moves a pending subscription on; switches it to live when it has caught up.
    pub(super) fn step(&self, slot: &mut Slot, channel: &ChannelName) -> Step {
        let SlotState::Pending(pending) = &mut slot.state else {
            return Step::Wait(0);
        };
        let step = pending.step(&slot.outbox, channel);
        if let Step::Live(position) = &step {
            if let Some(outcome) = pending.outcome {
                self.metrics.recoveries.with_label_values(&[outcome]).inc();
            }
            slot.state = SlotState::Live {
                epoch: position.epoch.clone(),
                last: position.offset,
            };
        }
        step
    }

    /// Replays history for a pending subscription until it is live, the subscription goes or
    /// the connection closes. Reads one page at a time per connection and queues only what the
    /// outbox has room for, so it runs at the pace the client reads.
    pub(super) async fn replay(
        self: Arc<Self>,
        conn: u64,
        channel: ChannelName,
        outbox: Arc<Outbox>,
        id: u64,
        mut step: Step,
    ) {
        let mut backoff = RETRY_MIN;
        loop {
            match step {
                Step::Live(_) => return,
                Step::Wait(room) => outbox.room(room).await,
                Step::Read(from) => {
                    let Some(turn) = outbox.page_turn().await else {
                        return; // the connection is closing
                    };
                    // Before the read's snapshot: a live message lost from the buffer from now
                    // on is newer than the read, and must be read again.
                    let ok = self.with_pending(conn, &channel, id, |slot| {
                        if let SlotState::Pending(p) = &mut slot.state {
                            p.hole = false;
                        }
                    });
                    if ok.is_none() {
                        return;
                    }
                    let timer = self.metrics.history_duration.start_timer();
                    let read = self
                        .broker
                        .history(&channel, self.page(from.clone(), &outbox))
                        .await;
                    timer.observe_duration();
                    drop(turn);
                    match read {
                        Ok(page) => {
                            backoff = RETRY_MIN;
                            let ok = self.with_pending(conn, &channel, id, |slot| {
                                if let SlotState::Pending(p) = &mut slot.state {
                                    p.accept(&slot.outbox, &channel, &from, page);
                                }
                            });
                            if ok.is_none() {
                                return;
                            }
                        }
                        Err(e) => {
                            // The client stays connected and its buffer bounded; retry.
                            tracing::debug!(%channel, error = %e, "replay page read failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(RETRY_MAX);
                        }
                    }
                }
            }
            if outbox.reason().is_some() {
                return;
            }
            step = match self.with_pending(conn, &channel, id, |slot| self.step(slot, &channel)) {
                Some(step) => step,
                None => return,
            };
        }
    }
}
