//! Counters the server exports as Prometheus metrics. Plain atomics so the broker does not
//! depend on a metrics library; the server reads them when scraped.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters of the Redis backbone's health and recovery work.
#[derive(Debug, Default)]
pub struct RedisStats {
    /// Pub/sub connections re-established after a loss (not counting the first).
    pub reconnects: AtomicU64,
    /// Failed attempts to establish the pub/sub connection.
    pub connect_failures: AtomicU64,
    /// Self-probes that did not come back in time (each forces a reconnect).
    pub probe_failures: AtomicU64,
    /// History reads done to fill a node-level gap (after a skip in offsets or a reconnect).
    pub gap_fills: AtomicU64,
    /// Messages delivered to a sink from history rather than live pub/sub.
    pub gap_fill_messages: AtomicU64,
    /// History reads served for the server (`Broker::history`).
    pub history_reads: AtomicU64,
    /// Commands that failed (timeouts, connection errors, error replies).
    pub command_errors: AtomicU64,
    /// Backbone payloads that could not be decoded and were dropped.
    pub decode_errors: AtomicU64,
    /// Messages handed to sinks (live and filled).
    pub delivered: AtomicU64,
    /// Sentinel announced a new primary for the one this node used (`+switch-master`).
    pub primary_switches: AtomicU64,
    /// Replication barriers (`publish_durability = "replicated"`) that no replica acknowledged
    /// in time; each failed the publishes (or held the reads) waiting on it.
    pub replica_ack_timeouts: AtomicU64,
    /// Channels whose history turned out to be behind what this node had delivered (a failover
    /// lost acknowledged messages): the channel was moved to a new epoch, an explicit reset.
    pub history_resets: AtomicU64,
    /// Live messages dropped because the relay's queue was full (history filled them in).
    pub relay_overflows: AtomicU64,
}

impl RedisStats {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A plain copy of every counter, for export.
    pub fn snapshot(&self) -> RedisStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RedisStatsSnapshot {
            reconnects: get(&self.reconnects),
            connect_failures: get(&self.connect_failures),
            probe_failures: get(&self.probe_failures),
            gap_fills: get(&self.gap_fills),
            gap_fill_messages: get(&self.gap_fill_messages),
            history_reads: get(&self.history_reads),
            command_errors: get(&self.command_errors),
            decode_errors: get(&self.decode_errors),
            delivered: get(&self.delivered),
            primary_switches: get(&self.primary_switches),
            replica_ack_timeouts: get(&self.replica_ack_timeouts),
            history_resets: get(&self.history_resets),
            relay_overflows: get(&self.relay_overflows),
        }
    }
}

/// A point-in-time copy of [`RedisStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RedisStatsSnapshot {
    pub reconnects: u64,
    pub connect_failures: u64,
    pub probe_failures: u64,
    pub gap_fills: u64,
    pub gap_fill_messages: u64,
    pub history_reads: u64,
    pub command_errors: u64,
    pub decode_errors: u64,
    pub delivered: u64,
    pub primary_switches: u64,
    pub replica_ack_timeouts: u64,
    pub history_resets: u64,
    pub relay_overflows: u64,
}
