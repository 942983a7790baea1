//! The pub/sub self-probe: proves, end to end, that the pub/sub connection still delivers.
//!
//! A connection can stay open yet deliver nothing (seen with peers after a failover), and on
//! Cluster that can happen to one shard's connection only. So the node subscribes one private
//! probe channel per shard (`herald:{probe:<node>:<i>}`, with `i` chosen so the channel hashes
//! to that shard) and every `probe_interval` publishes a counter to each through the command
//! pool. If any of them is not back within `probe_timeout`, the connection is declared broken
//! and the supervisor reconnects (which also fills gaps from history).
//!
//! The shard plan is made at every (re)connect from `CLUSTER SLOTS`; after a resharding a shard
//! may go unprobed until the next reconnect, which only weakens detection, never delivery.

use std::{collections::HashMap, sync::Arc};

use super::{
    RedisStats, Shared, keys,
    slots::{self, SlotRange},
};
use crate::BrokerError;

/// The probe channels of the current connection and the newest counter seen on each.
pub(crate) struct Probes {
    node_id: String,
    channels: parking_lot::RwLock<Vec<String>>,
    seen: tokio::sync::watch::Sender<Vec<u64>>,
}

impl Probes {
    pub(crate) fn new(node_id: String) -> Self {
        Self {
            node_id,
            channels: parking_lot::RwLock::new(Vec::new()),
            seen: tokio::sync::watch::Sender::new(Vec::new()),
        }
    }

    /// Records a message on a probe channel; false when `channel` is not one.
    pub(crate) fn on_push(&self, channel: &[u8], payload: &[u8]) -> bool {
        let Some(i) = self
            .channels
            .read()
            .iter()
            .position(|c| c.as_bytes() == channel)
        else {
            return false;
        };
        if let Some(n) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            self.seen.send_if_modified(|seen| match seen.get_mut(i) {
                Some(v) if n > *v => {
                    *v = n;
                    true
                }
                _ => false,
            });
        }
        true
    }
}

/// Picks the probe channels for the next connection: one for a standalone server, one per
/// master on Cluster. Installs them and returns them for subscribing.
pub(crate) async fn plan(shared: &Shared) -> Result<Vec<String>, BrokerError> {
    let probes = &shared.probes;
    let channels = if shared.commands.is_cluster() {
        let reply = shared
            .commands
            .query(
                &redis::cmd("CLUSTER").arg("SLOTS").to_owned(),
                shared.cfg.timeout,
            )
            .await?;
        per_master(&probes.node_id, &slots::parse(reply))
    } else {
        vec![keys::probe(&probes.node_id, 0)]
    };
    *probes.channels.write() = channels.clone();
    probes.seen.send_replace(vec![0; channels.len()]);
    Ok(channels)
}

/// One probe channel per master: the first `i` whose channel hashes into that master's slots.
fn per_master(node_id: &str, ranges: &[SlotRange]) -> Vec<String> {
    let owner = |slot: u16| slots::owner(ranges, slot).map(|r| r.addr.as_str());
    let mut wanted: HashMap<&str, Option<String>> =
        ranges.iter().map(|r| (r.addr.as_str(), None)).collect();
    let mut missing = wanted.len();
    // Each try hits a given master with probability >= its share of slots; a few thousand
    // tries cover any realistic cluster.
    for i in 0..10_000 {
        if missing == 0 {
            break;
        }
        let channel = keys::probe(node_id, i);
        if let Some(slot) = owner(keys::slot(&channel).min(16383))
            .and_then(|a| wanted.get_mut(a))
            .filter(|s| s.is_none())
        {
            *slot = Some(channel);
            missing -= 1;
        }
    }
    let mut channels: Vec<String> = wanted.into_values().flatten().collect();
    if channels.is_empty() {
        channels.push(keys::probe(node_id, 0));
    }
    channels.sort();
    channels
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut nonce = 0u64;
    let mut tick = tokio::time::interval(shared.cfg.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let verb = if shared.commands.is_cluster() {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    loop {
        tick.tick().await;
        let Some(generation) = shared.current_gen() else {
            continue;
        };
        nonce += 1;
        let mut seen = shared.probes.seen.subscribe();
        let channels = shared.probes.channels.read().clone();
        let mut published = true;
        for channel in &channels {
            let cmd = redis::cmd(verb).arg(channel).arg(nonce).to_owned();
            if let Err(e) = shared.commands.query(&cmd, shared.cfg.timeout).await {
                // Redis itself is unreachable: that is the pub/sub connection's to notice.
                RedisStats::inc(&shared.stats.command_errors);
                tracing::debug!(error = %e, "probe publish failed");
                published = false;
                break;
            }
        }
        if !published {
            continue;
        }
        let back = tokio::time::timeout(
            shared.cfg.probe_timeout,
            seen.wait_for(|s| s.len() == channels.len() && s.iter().all(|n| *n >= nonce)),
        )
        .await;
        // A reconnect in the meantime replaced the channels: this round proves nothing.
        if shared.current_gen() != Some(generation) {
            continue;
        }
        if !matches!(back, Ok(Ok(_))) {
            RedisStats::inc(&shared.stats.probe_failures);
            tracing::warn!(
                generation,
                "redis pub/sub self-probe did not come back; reconnecting"
            );
            shared.mark_broken(generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_master_gets_a_probe_channel() {
        let range = |start, end, addr: &str| SlotRange {
            start,
            end,
            addr: addr.to_owned(),
            id: String::new(),
        };
        let ranges = vec![
            range(0, 5460, "a:1"),
            range(5461, 10922, "b:2"),
            range(10923, 16383, "c:3"),
        ];
        let channels = per_master("n", &ranges);
        assert_eq!(channels.len(), 3);
        let mut owners: Vec<usize> = channels
            .iter()
            .map(|c| {
                let slot = keys::slot(c);
                ranges
                    .iter()
                    .position(|r| (r.start..=r.end).contains(&slot))
                    .expect("owned")
            })
            .collect();
        owners.sort();
        assert_eq!(owners, [0, 1, 2]);
        assert_eq!(per_master("n", &[]), vec![keys::probe("n", 0)]);
    }
}
