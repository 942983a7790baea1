//! Keeps the pub/sub connection alive: connects, subscribes every channel, tells the relay to
//! resync, and starts over when the connection breaks or the self-probe says it went silent.
//!
//! Reconnects back off exponentially (`reconnect_min` doubling to `reconnect_max`) with +-50%
//! jitter so that many nodes losing Redis at once do not return in lockstep. Besides a
//! disconnect, a failed self-probe ([`super::probe`]) also breaks the connection.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use herald_core::ChannelName;

use super::{RedisStats, Shared, keys, probe, pubsub::PubSub, relay::Event};
use crate::BrokerError;

pub(crate) async fn supervise(shared: Arc<Shared>) {
    let mut delay = shared.cfg.reconnect_min;
    let mut generation = 0;
    let mut established_before = false;
    loop {
        generation += 1;
        match establish(&shared, generation).await {
            Ok(()) => {
                shared.unreachable.store(false, Ordering::Relaxed);
                if established_before {
                    RedisStats::inc(&shared.stats.reconnects);
                }
                established_before = true;
                delay = shared.cfg.reconnect_min;
                tracing::info!(generation, server = %shared.pubsub_addr(), "redis pub/sub connected");
                let mut broken = shared.broken.subscribe();
                // The sender lives in `shared`, which this task holds: this only returns when
                // generation `generation` (or a later one) has been declared broken.
                let _ = broken.wait_for(|b| *b >= generation).await;
                shared.disconnected();
                tracing::warn!(generation, "redis pub/sub connection lost; reconnecting");
            }
            Err(e) => {
                shared.unreachable.store(true, Ordering::Relaxed);
                shared.disconnected();
                RedisStats::inc(&shared.stats.connect_failures);
                tracing::warn!(error = %e, retry_in = ?delay, "redis pub/sub connect failed");
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(shared.cfg.reconnect_max);
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random_range(0.5..1.5))
}

/// Channels subscribed per SUBSCRIBE command while resubscribing.
const RESUBSCRIBE_BATCH: usize = 1000;

async fn establish(shared: &Arc<Shared>, generation: u64) -> Result<(), BrokerError> {
    let conn = PubSub::connect(
        &shared.endpoint,
        generation,
        Arc::downgrade(shared),
        shared.cfg.timeout,
    )
    .await?;
    conn.subscribe(&probe::plan(shared).await?).await?;
    *shared.pubsub.write() = Some(conn.clone());
    // No lock is held across these round trips. A subscribe inserts its channel before it
    // looks for the connection: one that found the previous connection (or none) inserted
    // before the line above, so it is in this list; one that finds this connection subscribes
    // on it itself (a second SUBSCRIBE is harmless).
    let channels: Vec<ChannelName> = shared.channels.lock().keys().cloned().collect();
    for batch in channels.chunks(RESUBSCRIBE_BATCH) {
        let names: Vec<String> = batch.iter().map(keys::backbone).collect();
        conn.subscribe(&names).await?;
    }
    // A channel unsubscribed meanwhile may have been subscribed again just above: undo that
    // under its lock, so it cannot overtake a subscribe of the same channel.
    let gone: Vec<&ChannelName> = {
        let map = shared.channels.lock();
        channels.iter().filter(|c| !map.contains_key(*c)).collect()
    };
    for channel in gone {
        let _guard = shared.sub_locks.lock(channel).await;
        if !shared.channels.lock().contains_key(channel) {
            conn.unsubscribe(&keys::backbone(channel)).await;
        }
    }
    shared
        .events
        .send(Event::Resync)
        .await
        .map_err(|_| BrokerError::Internal("relay stopped".into()))?;
    shared.connected.send_replace(true);
    Ok(())
}
