//! One channel of the embedded broker: its epoch, retained messages and idempotency keys, and
//! what they cost against the broker's memory bound.
//!
//! Costs are estimates of the heap a channel holds (payload, header fields and the bookkeeping
//! around them), not allocator-exact figures: they make `memory_max_bytes` a real bound on what
//! publishers can make a node keep.

use std::{collections::HashMap, collections::VecDeque, sync::Arc};

use herald_core::{Epoch, Message, StreamPosition};
use tokio::time::Instant;

use crate::{Retention, Sink};

/// What a channel costs before it holds anything (map entry, state, name).
pub(super) const CHANNEL_COST: usize = 256;
/// Bookkeeping per retained message on top of [`Message::stored_len`].
const MESSAGE_OVERHEAD: usize = 96;
/// Bookkeeping per idempotency key on top of the key itself (map slot, order queue slot).
const KEY_OVERHEAD: usize = 96;

pub(super) fn message_cost(msg: &Message) -> usize {
    msg.stored_len() + MESSAGE_OVERHEAD
}

pub(super) fn key_cost(key: &str) -> usize {
    key.len() + KEY_OVERHEAD
}

struct Retained {
    msg: Arc<Message>,
    at: Instant,
}

pub(super) struct ChannelState {
    /// [`Epoch::none`] until the first publish creates the channel's epoch.
    pub epoch: Epoch,
    pub last_offset: u64,
    history: VecDeque<Retained>,
    /// Where live messages go; `None` while no node-local subscriber exists.
    pub sink: Option<Arc<dyn Sink>>,
    /// Idempotency key -> offset; `key_order` expires them oldest first. Keys are kept for the
    /// whole TTL, however many there are: the memory bound, not eviction, limits them.
    keys: HashMap<Arc<str>, u64>,
    key_order: VecDeque<(Arc<str>, Instant)>,
    /// Last publish or read: a channel with nothing retained is dropped a TTL after this.
    pub touched: Instant,
    /// What this channel costs against the broker's bound (including [`CHANNEL_COST`]).
    pub bytes: usize,
}

impl ChannelState {
    pub fn new(now: Instant, name_len: usize) -> Self {
        Self {
            epoch: Epoch::none(),
            last_offset: 0,
            history: VecDeque::new(),
            sink: None,
            keys: HashMap::new(),
            key_order: VecDeque::new(),
            touched: now,
            bytes: CHANNEL_COST + name_len,
        }
    }

    /// Drops messages and keys older than the TTL; returns the bytes freed.
    pub fn expire(&mut self, now: Instant, retention: Retention) -> usize {
        let before = self.bytes;
        while let Some(r) = self.history.front()
            && now.duration_since(r.at) >= retention.ttl
        {
            self.bytes -= message_cost(&r.msg);
            self.history.pop_front();
        }
        while let Some((key, at)) = self.key_order.front()
            && now.duration_since(*at) >= retention.ttl
        {
            self.bytes -= key_cost(key);
            self.keys.remove(key);
            self.key_order.pop_front();
        }
        before - self.bytes
    }

    /// True when nothing is kept and no subscriber needs the entry: it may be dropped.
    pub fn is_idle(&self, now: Instant, retention: Retention) -> bool {
        self.sink.is_none()
            && self.history.is_empty()
            && self.keys.is_empty()
            && (self.epoch.is_none() || now.duration_since(self.touched) >= retention.ttl)
    }

    pub fn top(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.last_offset,
        }
    }

    pub fn key(&self, key: &str) -> Option<u64> {
        self.keys.get(key).copied()
    }

    /// What appending `msg` (and remembering `key`) would add, net of the message that the
    /// history size would push out.
    pub fn append_cost(&self, msg_cost: usize, key: Option<&str>, retention: Retention) -> isize {
        let mut cost = key.map_or(0, key_cost) as isize;
        if retention.size > 0 {
            cost += msg_cost as isize;
            if self.history.len() >= retention.size
                && let Some(oldest) = self.history.front()
            {
                cost -= message_cost(&oldest.msg) as isize;
            }
        }
        cost
    }

    /// Appends `msg` to history (evicting the oldest beyond the size) and remembers `key`.
    pub fn append(
        &mut self,
        msg: &Arc<Message>,
        key: Option<String>,
        now: Instant,
        retention: Retention,
    ) {
        if retention.size > 0 {
            while self.history.len() >= retention.size {
                if let Some(old) = self.history.pop_front() {
                    self.bytes -= message_cost(&old.msg);
                }
            }
            self.bytes += message_cost(msg);
            self.history.push_back(Retained {
                msg: msg.clone(),
                at: now,
            });
        }
        if let Some(key) = key {
            let key: Arc<str> = Arc::from(key);
            self.bytes += key_cost(&key);
            self.keys.insert(key.clone(), msg.offset);
            self.key_order.push_back((key, now));
        }
    }

    /// The retained messages after `after`, oldest first, as many as `take` wants.
    pub fn retained_after(&self, after: u64) -> impl Iterator<Item = &Arc<Message>> {
        // Offsets are contiguous in the deque, so the start is found by arithmetic.
        let first = self.history.front().map_or(0, |r| r.msg.offset);
        let skip =
            usize::try_from(after.saturating_sub(first.saturating_sub(1))).unwrap_or(usize::MAX);
        self.history.iter().skip(skip).map(|r| &r.msg)
    }
}
