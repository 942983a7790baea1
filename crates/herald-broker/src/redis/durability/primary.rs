//! The barrier for a standalone or Sentinel-managed Redis: one primary, one round at a time for
//! every waiter, on a connection of the barrier's own (`INCR herald:durability`, `WAIT`).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;

use super::{Settings, Site, Waiter, elsewhere};
use crate::{
    BrokerError,
    redis::{
        RedisStats,
        commands::{Server, classify},
    },
};

/// The key each round increments (its value means nothing; it never expires and stays tiny).
const KEY: &str = "herald:durability";

struct Round {
    settings: Settings,
    /// Set when the primary changed: the next round reconnects (through discovery).
    stale: Arc<AtomicBool>,
    conn: Option<(redis::aio::MultiplexedConnection, Server)>,
}

pub(super) async fn run(
    settings: Settings,
    stale: Arc<AtomicBool>,
    mut rx: mpsc::UnboundedReceiver<Waiter>,
) {
    let mut round = Round {
        settings,
        stale,
        conn: None,
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        batch.retain(|(_, w)| !w.is_closed());
        if batch.is_empty() {
            continue;
        }
        let result = round.round().await;
        if let Err(e) = &result {
            tracing::debug!(error = %e, waiters = batch.len(), "replication barrier failed");
        }
        for (site, w) in batch {
            let verdict = match (&result, &site) {
                (Ok(here), Site::Server(server)) if here == server => Ok(()),
                (Ok(here), Site::Server(server)) => Err(elsewhere(server, here)),
                (Ok(_), Site::Shard { .. }) => Err(BrokerError::Internal(
                    "a Cluster write waits for a standalone barrier".into(),
                )),
                (Err(e), _) => Err(e.clone()),
            };
            let _ = w.send(verdict);
        }
    }
}

impl Round {
    /// One round; on success, the server it ran on.
    async fn round(&mut self) -> Result<Server, BrokerError> {
        if self.stale.swap(false, Ordering::Relaxed) {
            self.conn = None;
        }
        let result = tokio::time::timeout(self.settings.round_bound(), self.ask())
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "redis did not answer the replication barrier in time".into(),
                ))
            });
        match result {
            Ok((acks, server)) => self.settings.acknowledged(acks).map(|()| server),
            Err(e) => {
                RedisStats::inc(&self.settings.stats.command_errors);
                self.conn = None;
                Err(e)
            }
        }
    }

    /// One `INCR` + `WAIT` round trip: how many replicas acknowledged, on which server.
    async fn ask(&mut self) -> Result<(i64, Server), BrokerError> {
        let (conn, server) = match &mut self.conn {
            Some((c, s)) => (c, s.clone()),
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.settings.timeout))
                    .set_response_timeout(Some(self.settings.response_timeout()));
                let primary = self
                    .settings
                    .endpoint
                    .primary(&config, false)
                    .await
                    .map_err(|e| classify(&e))?;
                let server = Server::from(primary.addr);
                let (c, _) = self.conn.insert((primary.conn, server.clone()));
                (c, server)
            }
        };
        let (_, acks): (i64, i64) = redis::pipe()
            .cmd("INCR")
            .arg(KEY)
            .cmd("WAIT")
            .arg(1)
            .arg(self.settings.wait_ms())
            .query_async(conn)
            .await
            .map_err(|e| classify(&e))?;
        Ok((acks, server))
    }
}
