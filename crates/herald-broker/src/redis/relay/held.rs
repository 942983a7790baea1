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
//! Dropping held pushes is always safe as long as a fill from history follows (history reads
//! wait for the barrier too): that is what happens on a reconnect (`Resync`), when pushes pile
//! up beyond [`MAX_HELD`], or when they came from a connection that is no longer current.

use std::{future::Future, pin::Pin};

use redis::{PushInfo, PushKind, Value};

use super::Shared;
use crate::{BrokerError, redis::commands::Server};

/// Most pushes held while no barrier confirms them (e.g. no replica reachable); beyond it they
/// are dropped and every channel is filled from history once replicas confirm again.
const MAX_HELD: usize = 100_000;

pub(super) type Confirmation = Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

#[derive(Default)]
pub(super) struct Held {
    /// Pushes not yet covered by a barrier round, with the connection they came from.
    waiting: Vec<PushInfo>,
    from: Option<(u64, Server)>,
    /// Pushes the barrier round in flight covers.
    in_flight: Vec<PushInfo>,
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
        if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (info.data.first(), info.data.get(1))
            && shared.probes.on_push(channel, payload)
        {
            return;
        }
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
            if !self.waiting.is_empty() || !self.in_flight.is_empty() {
                self.drop_all(shared);
            }
            self.from = Some(source);
        }
        if self.waiting.len() >= MAX_HELD {
            tracing::warn!(
                held = MAX_HELD,
                "no replica confirms live messages; dropping them, history will fill in"
            );
            self.drop_all(shared);
            return;
        }
        self.waiting.push(info);
    }

    /// Starts a barrier round for everything waiting, if none is in flight.
    pub(super) fn start(&mut self, shared: &Shared, idle: bool) -> Option<Confirmation> {
        if !idle || self.failed || self.waiting.is_empty() {
            return None;
        }
        let barrier = shared.barrier.as_ref()?;
        let (_, server) = self.from.as_ref()?;
        self.in_flight = std::mem::take(&mut self.waiting);
        Some(Box::pin(barrier.wait(server.clone())))
    }

    /// The round in flight ended: what may go to subscribers now, in arrival order.
    pub(super) fn finish(&mut self, result: Result<(), BrokerError>) -> Vec<PushInfo> {
        let batch = std::mem::take(&mut self.in_flight);
        match result {
            Ok(()) => batch,
            Err(e) => {
                tracing::debug!(error = %e, held = batch.len(), "live messages wait for a replica");
                self.failed = true;
                let newer = std::mem::replace(&mut self.waiting, batch);
                self.waiting.extend(newer);
                Vec::new()
            }
        }
    }

    /// The retry tick: a failed round may be tried again.
    pub(super) fn retry(&mut self) {
        self.failed = false;
    }

    /// Forgets every held push (a reconnect's fill from history covers them).
    pub(super) fn clear(&mut self) {
        self.waiting.clear();
        self.in_flight.clear();
        self.from = None;
        self.failed = false;
    }

    /// Forgets every held push and makes every channel fill from history instead.
    fn drop_all(&mut self, shared: &Shared) {
        self.clear();
        super::owe_fill_everywhere(shared);
    }
}
