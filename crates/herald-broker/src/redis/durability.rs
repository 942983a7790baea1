//! The replication barrier behind `publish_durability = "replicated"`: group commit of `WAIT`.
//!
//! `WAIT n timeout` blocks the connection it is sent on until the replicas have acknowledged
//! every write *that connection* made. Sent on the shared command connection it would stall
//! every publish, read and probe behind it; sent per publish it would cost one blocked
//! connection per in-flight publish. So the barrier has a connection of its own and one task
//! that serves every waiter in rounds: take everyone waiting, send `INCR herald:durability`
//! then `WAIT 1 <ms>` on the dedicated connection, answer them all with the result, repeat.
//!
//! Why the `INCR`: `WAIT` counts from the client's own last write, and the writes a round must
//! cover were made by other connections (the publish script on the command connection, another
//! node's script, a publish whose retry found its idempotency key). Redis's replication offset
//! is global, so a write on the barrier connection made *after* those writes finished moves the
//! barrier's offset past all of them, and `WAIT` then covers them too. A waiter joins a round
//! only after its own write (or read) completed, so the round's `INCR` comes after it.
//!
//! A round only vouches for writes made on the server it ran on: a waiter says where its write
//! went, and one whose server is not the barrier's (the primary changed in between) fails as
//! unavailable instead of being confirmed by another server's replicas.
//!
//! Rounds never overlap: waiters that arrive while a `WAIT` is out go into the next round, so
//! one `WAIT` covers any number of concurrent publishes and a stuck replica costs one blocked
//! connection, not one per publish.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::AsyncConnectionConfig;
use tokio::sync::{mpsc, oneshot};

use super::{
    RedisStats,
    commands::{Server, classify},
    endpoint::Endpoint,
};
use crate::BrokerError;

/// The key each round increments (its value means nothing; it never expires and stays tiny).
const KEY: &str = "herald:durability";

/// Where the waiter's write went, and where to send the verdict.
type Waiter = (Server, oneshot::Sender<Result<(), BrokerError>>);

pub(crate) struct Barrier {
    requests: mpsc::UnboundedSender<Waiter>,
    /// Set when the primary changed: the next round reconnects (through discovery).
    stale: Arc<AtomicBool>,
    /// How long a waiter may wait in total: its round's `WAIT` plus one connect and round trip.
    bound: Duration,
}

impl Barrier {
    /// Starts the barrier task; it ends when the returned `Barrier` is dropped.
    pub(crate) fn start(
        endpoint: Arc<Endpoint>,
        wait_timeout: Duration,
        timeout: Duration,
        stats: Arc<RedisStats>,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let stale = Arc::new(AtomicBool::new(false));
        let round = Round {
            endpoint,
            wait_timeout,
            timeout,
            stats,
            stale: stale.clone(),
            conn: None,
        };
        tokio::spawn(round.run(rx));
        Self {
            requests,
            stale,
            // A waiter may arrive just after a round started: it waits for that one and its own.
            bound: (wait_timeout + timeout) * 2,
        }
    }

    /// Resolves once every write that completed on `server` before this call is on at least
    /// one replica; `Unavailable` when no replica acknowledged in time, Redis could not be
    /// asked, or `server` is no longer the primary. The returned future owns what it needs.
    pub(crate) fn wait(
        &self,
        server: Server,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.requests.send((server, tx)).is_ok();
        let bound = self.bound;
        async move {
            if !sent {
                return Err(BrokerError::Internal("durability barrier stopped".into()));
            }
            match tokio::time::timeout(bound, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(BrokerError::Internal("durability barrier stopped".into())),
                Err(_) => Err(BrokerError::Unavailable(format!(
                    "no replica acknowledgement within {bound:?}"
                ))),
            }
        }
    }

    /// The primary changed: the next round uses a new connection.
    pub(crate) fn reset(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }
}

struct Round {
    endpoint: Arc<Endpoint>,
    wait_timeout: Duration,
    timeout: Duration,
    stats: Arc<RedisStats>,
    stale: Arc<AtomicBool>,
    conn: Option<(redis::aio::MultiplexedConnection, Server)>,
}

impl Round {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Waiter>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            batch.retain(|(_, w)| !w.is_closed());
            if batch.is_empty() {
                continue;
            }
            let result = self.round().await;
            if let Err(e) = &result {
                tracing::debug!(error = %e, waiters = batch.len(), "replication barrier failed");
            }
            for (server, w) in batch {
                let verdict = match &result {
                    Ok(here) if *here == server => Ok(()),
                    Ok(here) => Err(BrokerError::Unavailable(format!(
                        "the redis primary changed (from {server} to {here}) while the write was \
                         in flight"
                    ))),
                    Err(e) => Err(e.clone()),
                };
                let _ = w.send(verdict);
            }
        }
    }

    /// One round; on success, the server it ran on.
    async fn round(&mut self) -> Result<Server, BrokerError> {
        if self.stale.swap(false, Ordering::Relaxed) {
            self.conn = None;
        }
        let result = tokio::time::timeout(self.wait_timeout + self.timeout * 2, self.ask())
            .await
            .unwrap_or_else(|_| {
                Err(BrokerError::Unavailable(
                    "redis did not answer the replication barrier in time".into(),
                ))
            });
        match result {
            Ok((0, _)) => {
                RedisStats::inc(&self.stats.replica_ack_timeouts);
                Err(BrokerError::Unavailable(format!(
                    "no replica acknowledged the write within {:?}",
                    self.wait_timeout
                )))
            }
            Ok((_, server)) => Ok(server),
            Err(e) => {
                RedisStats::inc(&self.stats.command_errors);
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
                    .set_connection_timeout(Some(self.timeout))
                    // The reply to WAIT comes after up to `wait_timeout`.
                    .set_response_timeout(Some(self.wait_timeout + self.timeout));
                let primary = self
                    .endpoint
                    .primary(&config, false)
                    .await
                    .map_err(|e| classify(&e))?;
                let server = Server::from(primary.addr);
                let (c, _) = self.conn.insert((primary.conn, server.clone()));
                (c, server)
            }
        };
        let wait_ms = u64::try_from(self.wait_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let (_, acks): (i64, i64) = redis::pipe()
            .cmd("INCR")
            .arg(KEY)
            .cmd("WAIT")
            .arg(1)
            .arg(wait_ms)
            .query_async(conn)
            .await
            .map_err(|e| classify(&e))?;
        Ok((acks, server))
    }
}
