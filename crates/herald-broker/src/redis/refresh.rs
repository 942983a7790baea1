//! How long a channel's keys live, and which channels' keys this node refreshed recently, so
//! that a publish refreshes their TTLs once per refresh interval instead of on every publish
//! (two `PEXPIRE`s were ~3.4 of the ~20 us the publish script takes).
//!
//! Every script that refreshes a channel's keys (meta and stream: publishes, reads, room
//! messages) sets their TTL to [`key_ttl_ms`]: the channel's `history_ttl` plus a slack of an
//! eighth of it, at most a minute. A publish skips the refresh only when this node refreshed the
//! channel's keys less than the slack ago (measured from before that call was sent), so the
//! keys were set to live `ttl + slack` from a moment no earlier than that, and live at least
//! `history_ttl` past this publish: what a channel keeps after its last publish is unchanged,
//! and the channel's epoch may outlive it by up to the slack. Messages themselves expire by
//! their own publish time (the read script trims them), not by the keys' TTL.
//!
//! A record is forgotten when the connection to Redis is dropped (`Commands::generation`): a
//! failover may have lost the refresh it remembers. A script that creates a channel's keys (a
//! new epoch, or a stream that is missing) refreshes them whatever the record says. Records are
//! a fixed table indexed by the channel's hash, so their memory is bounded whatever the number
//! of channels; two channels sharing a slot only cost each other extra refreshes.

use std::{
    hash::BuildHasher,
    time::{Duration, Instant},
};

use herald_core::ChannelName;
use parking_lot::Mutex;

/// Slots in the table; a node publishing to more channels than this refreshes some of them
/// more often than needed, never less.
const SLOTS: usize = 1024;

/// The refresh slack is this fraction of `history_ttl`...
const SLACK_DIVISOR: u32 = 8;
/// ...but at most this long, so that keys outlive their TTL by a minute at most.
const MAX_SLACK: Duration = Duration::from_secs(60);

/// How much longer than `ttl` a channel's keys are set to live at each refresh, and how long a
/// refresh is trusted by the node that made it.
pub(crate) fn slack(ttl: Duration) -> Duration {
    (ttl / SLACK_DIVISOR).min(MAX_SLACK)
}

/// The TTL, in milliseconds, that every script sets on a channel's meta and stream keys.
pub(crate) fn key_ttl_ms(ttl: Duration) -> u64 {
    let keep = ttl.saturating_add(slack(ttl));
    u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1)
}

struct Record {
    channel: ChannelName,
    /// Until when a publish may skip the refresh.
    until: Instant,
    /// `Commands::generation` when the refresh was made.
    generation: u64,
}

/// The channels whose keys this node refreshed recently.
pub(crate) struct Refreshes {
    slots: Box<[Mutex<Option<Record>>]>,
    hasher: std::hash::RandomState,
}

impl Default for Refreshes {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl Refreshes {
    fn slot(&self, channel: &ChannelName) -> &Mutex<Option<Record>> {
        let i = self.hasher.hash_one(channel.as_str()) as usize % self.slots.len();
        &self.slots[i]
    }

    /// Whether a publish to `channel` must refresh its keys' TTLs: no refresh of this node on
    /// the current connection (`generation`) within the slack.
    pub(crate) fn due(&self, channel: &ChannelName, generation: u64) -> bool {
        match &*self.slot(channel).lock() {
            Some(r) => {
                r.channel != *channel || r.generation != generation || Instant::now() >= r.until
            }
            None => true,
        }
    }

    /// A script refreshed `channel`'s keys; `sent` is when it was sent (the refresh happened no
    /// earlier), `generation` the connection's generation then.
    pub(crate) fn refreshed(
        &self,
        channel: &ChannelName,
        ttl: Duration,
        sent: Instant,
        generation: u64,
    ) {
        let until = sent + slack(ttl);
        let mut slot = self.slot(channel).lock();
        // Concurrent publishes may finish out of order: keep the later refresh.
        if let Some(r) = &*slot
            && r.channel == *channel
            && r.generation == generation
            && r.until >= until
        {
            return;
        }
        *slot = Some(Record {
            channel: channel.clone(),
            until,
            generation,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(name: &str) -> ChannelName {
        ChannelName::parse_with_limit(name, 64).expect("channel")
    }

    #[test]
    fn keys_live_the_ttl_plus_a_bounded_slack() {
        assert_eq!(key_ttl_ms(Duration::from_millis(800)), 900);
        assert_eq!(key_ttl_ms(Duration::from_secs(3600)), 3_660_000);
        assert_eq!(key_ttl_ms(Duration::ZERO), 1);
        assert_eq!(key_ttl_ms(Duration::MAX), u64::MAX);
    }

    #[test]
    fn a_refresh_is_trusted_for_the_slack_on_its_connection_only() {
        let r = Refreshes::default();
        let a = ch("a");
        let hour = Duration::from_secs(3600);
        assert!(r.due(&a, 1), "never refreshed");
        r.refreshed(&a, hour, Instant::now(), 1);
        assert!(!r.due(&a, 1));
        assert!(r.due(&a, 2), "another connection: maybe another server");
        assert!(r.due(&ch("b"), 1), "another channel");
        // A refresh sent longer ago than the slack is not trusted.
        let old = Instant::now() - slack(hour) - Duration::from_millis(1);
        let c = ch("c");
        r.refreshed(&c, hour, old, 1);
        assert!(r.due(&c, 1));
        // A late reply of an older refresh does not replace a newer one.
        r.refreshed(&c, hour, Instant::now(), 1);
        r.refreshed(&c, hour, old, 1);
        assert!(!r.due(&c, 1));
    }

    #[test]
    fn channels_sharing_a_slot_only_cost_extra_refreshes() {
        let r = Refreshes::default();
        let hour = Duration::from_secs(3600);
        let names: Vec<_> = (0..4 * SLOTS).map(|i| ch(&format!("c{i}"))).collect();
        for n in &names {
            r.refreshed(n, hour, Instant::now(), 1);
        }
        // Every slot holds at most one channel: the others are due again, none is wrongly fresh.
        let fresh = names.iter().filter(|n| !r.due(n, 1)).count();
        assert!(fresh <= SLOTS, "{fresh}");
        assert!(
            !r.due(names.last().expect("names"), 1),
            "the last one kept its slot"
        );
    }
}
