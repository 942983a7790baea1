//! The replication barrier behind `publish_durability = "replicated"`: group commit of `WAIT`.
//!
//! `WAIT n timeout` blocks the connection it is sent on until the replicas have acknowledged
//! every write *that connection* made. Sent on the shared command connection it would stall
//! every publish, read and probe behind it; sent per publish it would cost one blocked
//! connection per in-flight publish. So the barrier has connections of its own and serves every
//! waiter in rounds: take everyone waiting, write once and send `WAIT 1 <ms>` on the barrier's
//! connection, answer them all with the result, repeat.
//!
//! Why the write: `WAIT` counts from the client's own last write, and the writes a round must
//! cover were made by other connections (the publish script on the command connection, another
//! node's script, a publish whose retry found its idempotency key). Redis's replication offset
//! is per server and global to it, so a write on the barrier connection made *after* those
//! writes finished moves the barrier's offset past all of them, and `WAIT` then covers them
//! too. A waiter joins a round only after its own write (or read) completed, so the round's
//! write comes after it.
//!
//! A round only vouches for writes made on the server it ran on: a waiter says where its write
//! went ([`Site`]), and one whose server is not the one the round ran on (the primary changed in
//! between) fails as unavailable instead of being confirmed by another server's replicas.
//!
//! A standalone or Sentinel-managed Redis has one primary: [`primary`] runs one round at a time
//! for everyone. A Cluster has one primary per shard, and `WAIT` on one says nothing about
//! another: [`shards`] runs a round per shard, on that shard's primary, concurrently across
//! shards. Either way a shard's rounds never overlap: waiters that arrive while its `WAIT` is
//! out go into its next round, so one `WAIT` covers any number of concurrent publishes and a
//! stuck replica costs one blocked connection, not one per publish, and delays only its shard.

mod primary;
mod shards;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    RedisStats,
    commands::{Commands, Server},
    endpoint::Endpoint,
};
use crate::BrokerError;

/// Where a write (or read) ran: what a round must have run on to vouch for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Site {
    /// A standalone or Sentinel-managed primary, `host:port`.
    Server(Server),
    /// A Cluster shard: the slot of the channel, and the id of the node that ran the script
    /// (`None` for a live message, whose node is not known: the slot's primary then).
    Shard { slot: u16, node: Option<Server> },
}

/// A waiter: where its write went, and where to send the verdict.
type Waiter = (Site, oneshot::Sender<Result<(), BrokerError>>);

pub(crate) struct Barrier {
    requests: mpsc::UnboundedSender<Waiter>,
    /// Set when the primary changed: the next round reconnects (through discovery).
    stale: Arc<AtomicBool>,
    /// How long a waiter may wait in total: its round's `WAIT` plus one connect and round trip.
    bound: Duration,
}

/// What every round needs.
struct Settings {
    endpoint: Arc<Endpoint>,
    /// The broker's command connection, for what must not queue behind a barrier's `WAIT`.
    commands: Arc<Commands>,
    wait_timeout: Duration,
    timeout: Duration,
    stats: Arc<RedisStats>,
}

impl Settings {
    /// The `WAIT` timeout argument.
    fn wait_ms(&self) -> u64 {
        u64::try_from(self.wait_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// The longest one round may take: its `WAIT` plus a connect and a round trip.
    fn round_bound(&self) -> Duration {
        self.wait_timeout + self.timeout * 2
    }

    /// The response timeout of a barrier connection: the reply to `WAIT` comes after up to
    /// `wait_timeout`.
    fn response_timeout(&self) -> Duration {
        self.wait_timeout + self.timeout
    }

    /// A round that got `acks` replica acknowledgements: whether it vouches for anything.
    fn acknowledged(&self, acks: i64) -> Result<(), BrokerError> {
        if acks > 0 {
            return Ok(());
        }
        RedisStats::inc(&self.stats.replica_ack_timeouts);
        Err(BrokerError::Unavailable(format!(
            "no replica acknowledged the write within {:?}",
            self.wait_timeout
        )))
    }
}

/// A round that did not run where the waiter's write went.
fn elsewhere(wrote: &str, ran: &str) -> BrokerError {
    BrokerError::Unavailable(format!(
        "the redis primary changed (from {wrote} to {ran}) while the write was in flight"
    ))
}

impl Barrier {
    /// Starts the barrier task (per shard on Cluster); it ends when the `Barrier` is dropped.
    pub(crate) fn start(
        endpoint: Arc<Endpoint>,
        commands: Arc<Commands>,
        wait_timeout: Duration,
        timeout: Duration,
        stats: Arc<RedisStats>,
    ) -> Self {
        let (requests, rx) = mpsc::unbounded_channel();
        let stale = Arc::new(AtomicBool::new(false));
        let cluster = endpoint.is_cluster();
        let settings = Settings {
            endpoint,
            commands,
            wait_timeout,
            timeout,
            stats,
        };
        if cluster {
            tokio::spawn(shards::run(settings, rx));
        } else {
            tokio::spawn(primary::run(settings, stale.clone(), rx));
        }
        Self {
            requests,
            stale,
            // A waiter may arrive just after a round started: it waits for that one and its own.
            bound: (wait_timeout + timeout) * 2,
        }
    }

    /// Resolves once every write that completed at `site` before this call is on at least one
    /// replica; `Unavailable` when no replica acknowledged in time, Redis could not be asked, or
    /// `site` is no longer where writes go. The returned future owns what it needs.
    pub(crate) fn wait(
        &self,
        site: Site,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let sent = self.requests.send((site, tx)).is_ok();
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

    /// The primary changed (Sentinel): the next round uses a new connection.
    pub(crate) fn reset(&self) {
        self.stale.store(true, Ordering::Relaxed);
    }
}
