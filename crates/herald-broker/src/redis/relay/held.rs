//! Live messages held back until a replica has them (`publish_durability = "replicated"`).
//!
//! The publish script relays a message on pub/sub as it writes it, before any replica has it.
//! Handing that to subscribers at once would show them something a failover can take back;
//! worse, the new primary would then give the same offsets to other messages, which clients
//! would drop as duplicates. So with replicated durability the relay holds every live push and
//! asks the replication barrier, for all pushes held so far at once, whether a replica has
//! them: the barrier's round starts after they arrived, so its `WAIT` covers their writes. Only
//! then do they go on to [`super::on_push`], in arrival order.
//!
//! On Cluster each shard has its own primary and replicas, so pushes are held per slot (a
//! lane), each lane asks the barrier about its own slot, and a shard whose replica is stuck
//! holds back only its own channels. Elsewhere there is one lane.
//!
//! Dropping held pushes is always safe as long as a fill from history follows (history reads
//! wait for the barrier too): that is what happens on a reconnect (`Resync`), when pushes pile
//! up beyond [`MAX_HELD`], or when they came from a connection that is no longer current (or
//! has broken meanwhile: its pushes may come from a primary that has been replaced).

use std::{collections::HashMap, future::Future, pin::Pin};

use futures_util::{FutureExt, StreamExt, stream::FuturesUnordered};
use redis::{PushInfo, PushKind, Value};

use super::Shared;
use crate::{
    BrokerError,
    redis::{commands::Server, durability::Site, keys},
};

/// Most pushes held while no barrier confirms them (e.g. no replica reachable); beyond it they
/// are dropped and every channel is filled from history once replicas confirm again.
const MAX_HELD: usize = 100_000;

/// A lane of held pushes: the slot on Cluster, `None` elsewhere (one lane).
type Lane = Option<u16>;

type Confirmation = Pin<Box<dyn Future<Output = (Lane, Result<(), BrokerError>)> + Send>>;

#[derive(Default)]
pub(super) struct Held {
    /// The connection (generation, server) every held push came from.
    from: Option<(u64, Server)>,
    lanes: HashMap<Lane, Pushes>,
    /// Pushes held in every lane.
    count: usize,
    /// The barrier rounds in flight, one per busy lane.
    confirming: FuturesUnordered<Confirmation>,
}

#[derive(Default)]
struct Pushes {
    /// Not yet covered by a barrier round.
    waiting: Vec<PushInfo>,
    /// Covered by the lane's round in flight.
    in_flight: Vec<PushInfo>,
    busy: bool,
    /// The last round failed: the next starts on the relay's retry tick, not at once.
    failed: bool,
}

impl Held {
    /// Whether `info` must wait for the barrier (a live message, with replicated durability).
    pub(super) fn takes(shared: &Shared, info: &PushInfo) -> bool {
        shared.barrier.is_some() && matches!(info.kind, PushKind::Message | PushKind::SMessage)
    }

    /// Holds a live push from pub/sub connection `generation` (probe replies go through).
    pub(super) fn hold(&mut self, shared: &Shared, generation: u64, info: PushInfo) {
        let channel = match (info.data.first(), info.data.get(1)) {
            (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) => {
                if shared.probes.on_push(channel, payload) {
                    return;
                }
                channel
            }
            _ => return, // not a message: the relay would drop it anyway
        };
        let lane = shared.commands.is_cluster().then(|| keys::slot(channel));
        let server = shared
            .pubsub
            .read()
            .as_ref()
            .filter(|c| c.generation == generation)
            .map(|c| c.addr.clone());
        let Some(server) = server else {
            // From a connection already replaced: the reconnect's fill covers it.
            return;
        };
        let source = (generation, Server::from(server));
        if self.from.as_ref() != Some(&source) {
            if self.count > 0 {
                self.drop_all(shared);
            }
            self.from = Some(source);
        }
        if self.count >= MAX_HELD {
            tracing::warn!(
                held = MAX_HELD,
                "no replica confirms live messages; dropping them, history will fill in"
            );
            self.drop_all(shared);
            return;
        }
        self.lanes.entry(lane).or_default().waiting.push(info);
        self.count += 1;
    }

    /// Starts a barrier round for every lane with pushes waiting and none in flight.
    pub(super) fn start(&mut self, shared: &Shared) {
        let (Some(barrier), Some((_, server))) = (shared.barrier.as_ref(), self.from.as_ref())
        else {
            return;
        };
        for (lane, pushes) in &mut self.lanes {
            if pushes.busy || pushes.failed || pushes.waiting.is_empty() {
                continue;
            }
            pushes.busy = true;
            pushes.in_flight = std::mem::take(&mut pushes.waiting);
            let site = match *lane {
                Some(slot) => Site::Shard { slot, node: None },
                None => Site::Server(server.clone()),
            };
            let lane = *lane;
            self.confirming
                .push(Box::pin(barrier.wait(site).map(move |r| (lane, r))));
        }
    }

    /// Whether a barrier round is in flight.
    pub(super) fn confirming(&self) -> bool {
        !self.confirming.is_empty()
    }

    /// The next lane whose round ended, with its result. Cancel-safe: a round not yet ended
    /// stays in flight.
    pub(super) async fn confirmed(&mut self) -> Option<(Lane, Result<(), BrokerError>)> {
        self.confirming.next().await
    }

    /// `lane`'s round ended: what may go to subscribers now, in arrival order.
    pub(super) fn finish(
        &mut self,
        shared: &Shared,
        lane: Lane,
        result: Result<(), BrokerError>,
    ) -> Vec<PushInfo> {
        let Some(pushes) = self.lanes.get_mut(&lane) else {
            return Vec::new();
        };
        pushes.busy = false;
        let batch = std::mem::take(&mut pushes.in_flight);
        // Pushes from a connection that broke meanwhile may come from a primary that has been
        // replaced since: the resync after the reconnect reads them from history instead.
        let broken = self
            .from
            .as_ref()
            .is_some_and(|(generation, _)| *shared.broken.borrow() >= *generation);
        let delivered = match result {
            Ok(()) if !broken => batch,
            Ok(()) => {
                self.count -= batch.len();
                return Vec::new();
            }
            Err(e) => {
                tracing::debug!(error = %e, held = batch.len(), "live messages wait for a replica");
                pushes.failed = true;
                let newer = std::mem::replace(&mut pushes.waiting, batch);
                pushes.waiting.extend(newer);
                Vec::new()
            }
        };
        self.count -= delivered.len();
        if pushes.waiting.is_empty() && !pushes.failed {
            self.lanes.remove(&lane);
        }
        delivered
    }

    /// The retry tick: failed rounds may be tried again.
    pub(super) fn retry(&mut self) {
        for pushes in self.lanes.values_mut() {
            pushes.failed = false;
        }
    }

    /// Forgets every held push (a reconnect's fill from history covers them).
    pub(super) fn clear(&mut self) {
        self.lanes.clear();
        self.count = 0;
        self.from = None;
        self.confirming = FuturesUnordered::new();
    }

    /// Forgets every held push and makes every channel fill from history instead.
    fn drop_all(&mut self, shared: &Shared) {
        self.clear();
        super::owe_fill_everywhere(shared);
    }
}
