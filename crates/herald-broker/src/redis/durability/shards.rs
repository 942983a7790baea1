//! The barrier on Redis Cluster: one group-committed `WAIT` per shard, on that shard's primary.
//!
//! A channel's writes go to the primary serving its slot, and `WAIT` there counts only that
//! primary's replicas. So a round is a pipeline routed to a slot of the waiters (the barrier's
//! own cluster connection sends it to the slot's primary): `SET herald:{durability:<n>}` (a key
//! in that slot, so the write lands where the `WAIT` is), `WAIT 1 <ms>`, and `CLUSTER MYID`,
//! which says which node ran the round.
//!
//! Why a round vouches for the waiters' writes: `WAIT` counts the writes of the connection it
//! is sent on, and the cluster client sends a pipeline routed to one node as one unit over its
//! one socket to that node, so the round's `SET` and `WAIT` share a connection and the `WAIT`
//! covers the `SET`. That `SET` runs on the node after every waiter's write completed there (a
//! waiter joins only once its script returned) and a node's replication offset is global to
//! it, so covering the `SET` covers them. The connection is the barrier's own (like the
//! standalone barrier's): a `WAIT` on the command connection would stall every command to that
//! node behind it.
//!
//! Waiters are grouped by node. The publish and read scripts return the id of the node that ran
//! them (`CLUSTER MYID` inside the script), and a round vouches only for waiters whose node it
//! ran on: after a failover the new primary's replicas cannot confirm a write that only the old
//! primary took. A live message does not know its node: it names its slot, which is resolved
//! to the slot's primary with `CLUSTER SLOTS` (read on the broker's command connection, which
//! never waits behind a `WAIT`; read again after any round that failed or ran somewhere
//! unexpected).
//!
//! A node's rounds never overlap (waiters that arrive meanwhile wait for its next round), and
//! rounds of different nodes run at the same time, each in a task of its own: a shard whose
//! replica is stuck delays only its own publishes and reads.

use std::collections::HashMap;

use redis::{
    Value,
    cluster_async::ClusterConnection,
    cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr},
};
use tokio::sync::{mpsc, oneshot};

use super::{Settings, Site, Waiter, elsewhere};
use crate::{
    BrokerError,
    redis::{
        RedisStats,
        commands::{Server, classify},
        keys,
        slots::{self, SlotRange},
    },
};

/// How long a barrier key lives after its last round (it is one small string per slot used).
const KEY_TTL_MS: u64 = 3_600_000;

type Verdict = oneshot::Sender<Result<(), BrokerError>>;

/// A node's waiters for its next round (with their slots), and whether a round is out.
#[derive(Default)]
struct Queue {
    waiting: Vec<(u16, Verdict)>,
    busy: bool,
}

/// A finished round: the node it was for, its waiters, and (acks, the node it ran on).
struct Done {
    node: Server,
    batch: Vec<(u16, Verdict)>,
    result: Result<(i64, Server), BrokerError>,
}

struct Shards {
    settings: Settings,
    conn: Option<ClusterConnection>,
    /// The slot map, for waiters that name a slot but no node; read again when `stale`.
    owners: Vec<SlotRange>,
    stale: bool,
    queues: HashMap<Server, Queue>,
}

pub(super) async fn run(settings: Settings, mut rx: mpsc::UnboundedReceiver<Waiter>) {
    let mut shards = Shards {
        settings,
        conn: None,
        owners: Vec::new(),
        stale: true,
        queues: HashMap::new(),
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    loop {
        let mut fresh = Vec::new();
        tokio::select! {
            waiter = rx.recv() => match waiter {
                Some(w) => fresh.push(w),
                None => return,
            },
            Some(done) = done_rx.recv() => shards.finish(done),
        }
        while let Ok(w) = rx.try_recv() {
            fresh.push(w);
        }
        shards.enqueue(fresh).await;
        shards.start(&done_tx).await;
    }
}

impl Shards {
    /// Files each waiter under its node, resolving slots to nodes where the node is not known.
    async fn enqueue(&mut self, fresh: Vec<Waiter>) {
        let mut unknown = Vec::new();
        for (site, verdict) in fresh {
            match site {
                Site::Shard {
                    slot,
                    node: Some(node),
                } => self.queue(node, slot, verdict),
                Site::Shard { slot, node: None } => unknown.push((slot, verdict)),
                Site::Server(_) => {
                    let _ = verdict.send(Err(BrokerError::Internal(
                        "a standalone write waits for a Cluster barrier".into(),
                    )));
                }
            }
        }
        if unknown.is_empty() {
            return;
        }
        if self.stale
            && let Err(e) = self.read_owners().await
        {
            for (_, verdict) in unknown {
                let _ = verdict.send(Err(e.clone()));
            }
            return;
        }
        for (slot, verdict) in unknown {
            match slots::owner(&self.owners, slot).map(|r| Server::from(r.id.as_str())) {
                Some(node) if !node.is_empty() => self.queue(node, slot, verdict),
                _ => {
                    self.stale = true;
                    let _ = verdict.send(Err(BrokerError::Unavailable(format!(
                        "no redis cluster primary serves slot {slot}"
                    ))));
                }
            }
        }
    }

    fn queue(&mut self, node: Server, slot: u16, verdict: Verdict) {
        if !verdict.is_closed() {
            self.queues
                .entry(node)
                .or_default()
                .waiting
                .push((slot, verdict));
        }
    }

    /// Starts a round for every node that has waiters and no round out.
    async fn start(&mut self, done: &mpsc::UnboundedSender<Done>) {
        let idle = |q: &Queue| !q.busy && !q.waiting.is_empty();
        if !self.queues.values().any(idle) {
            return;
        }
        let conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => {
                for q in self.queues.values_mut().filter(|q| idle(q)) {
                    for (_, verdict) in q.waiting.drain(..) {
                        let _ = verdict.send(Err(e.clone()));
                    }
                }
                self.queues.retain(|_, q| q.busy);
                return;
            }
        };
        for (node, q) in self.queues.iter_mut().filter(|(_, q)| idle(q)) {
            q.busy = true;
            let batch = std::mem::take(&mut q.waiting);
            // Any waiter's slot leads to its node; the newest knows the current map best.
            let slot = batch.last().map_or(0, |(s, _)| *s);
            let round = ask(
                conn.clone(),
                slot,
                self.settings.wait_ms(),
                self.settings.round_bound(),
            );
            let (node, done) = (node.clone(), done.clone());
            tokio::spawn(async move {
                let result = round.await;
                let _ = done.send(Done {
                    node,
                    batch,
                    result,
                });
            });
        }
    }

    /// Answers a finished round's waiters.
    fn finish(&mut self, done: Done) {
        let Done {
            node,
            batch,
            result,
        } = done;
        let verdict = match result {
            Ok((_, ran)) if ran != node => {
                self.stale = true;
                Err(elsewhere(&node, &ran))
            }
            Ok((acks, _)) => self.settings.acknowledged(acks),
            Err(e) => {
                RedisStats::inc(&self.settings.stats.command_errors);
                tracing::debug!(error = %e, %node, "replication barrier failed");
                self.conn = None;
                self.stale = true;
                Err(e)
            }
        };
        for (_, w) in batch {
            let _ = w.send(verdict.clone());
        }
        if let Some(q) = self.queues.get_mut(&node) {
            q.busy = false;
            if q.waiting.is_empty() {
                self.queues.remove(&node);
            }
        }
    }

    /// The barrier's own cluster connection (its `WAIT`s block only its own sockets).
    async fn connection(&mut self) -> Result<ClusterConnection, BrokerError> {
        if let Some(c) = &self.conn {
            return Ok(c.clone());
        }
        let builder = self.settings.endpoint.cluster().ok_or_else(|| {
            BrokerError::Internal("the Cluster barrier needs a Cluster URL".into())
        })?;
        let connect = async {
            builder
                .connection_timeout(self.settings.timeout)
                .response_timeout(self.settings.response_timeout())
                .build()?
                .get_async_connection()
                .await
        };
        let conn = tokio::time::timeout(self.settings.timeout, connect)
            .await
            .map_err(|_| BrokerError::Unavailable("redis cluster: connect timed out".into()))?
            .map_err(|e| BrokerError::Unavailable(format!("redis cluster connection: {e}")))?;
        Ok(self.conn.insert(conn).clone())
    }

    /// Reads the slot map (`CLUSTER SLOTS`) through the broker's command connection: the
    /// barrier's own connection may be blocked in another shard's `WAIT`, and the cluster
    /// client sends `CLUSTER SLOTS` to any node.
    async fn read_owners(&mut self) -> Result<(), BrokerError> {
        let cmd = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
        let reply = self
            .settings
            .commands
            .query(&cmd, self.settings.timeout)
            .await?;
        self.owners = slots::parse(reply);
        self.stale = false;
        Ok(())
    }
}

/// One round on the primary of `slot`: how many replicas acknowledged, and the node it ran on.
async fn ask(
    mut conn: ClusterConnection,
    slot: u16,
    wait_ms: u64,
    bound: std::time::Duration,
) -> Result<(i64, Server), BrokerError> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(keys::barrier(slot))
        .arg(1)
        .arg("PX")
        .arg(KEY_TTL_MS)
        .cmd("WAIT")
        .arg(1)
        .arg(wait_ms)
        .cmd("CLUSTER")
        .arg("MYID");
    let route = SingleNodeRoutingInfo::SpecificNode(Route::new(slot, SlotAddr::Master));
    let values = tokio::time::timeout(bound, conn.route_pipeline(pipe, 0, 3, route))
        .await
        .map_err(|_| {
            BrokerError::Unavailable("redis did not answer the replication barrier in time".into())
        })?
        .map_err(|e| classify(&e))?;
    let mut values = values.into_iter().map(|v| v.extract_error());
    let mut next = || {
        values
            .next()
            .unwrap_or_else(|| Ok(Value::Nil))
            .map_err(|e| classify(&e))
    };
    let _set = next()?;
    let acks = match next()? {
        Value::Int(n) => n,
        other => {
            return Err(BrokerError::Internal(format!(
                "unexpected reply to WAIT: {other:?}"
            )));
        }
    };
    let ran_on = match next()? {
        Value::BulkString(id) => String::from_utf8_lossy(&id).into_owned(),
        Value::SimpleString(id) => id,
        other => {
            return Err(BrokerError::Internal(format!(
                "unexpected reply to CLUSTER MYID: {other:?}"
            )));
        }
    };
    Ok((acks, Server::from(ran_on)))
}
