//! Rooms in Redis: presence shared by every node, expiring with the node that holds it.
//!
//! Each node knows its own connections in each room (`local`); Redis holds the union, with a
//! per-room, per-node heartbeat (see [`script`] for the keys and the one script that changes
//! them). One worker task per node owns the local state and talks to Redis:
//!
//! - `enter` and `exit` queue ops for their room; a room has at most one call in flight, which
//!   carries everything queued since the last (a join storm into one room is a few calls), so
//!   ops reach Redis in the order they happened. `enter` resolves when its call is done.
//! - Every third of the presence TTL each room with local connections gets a call even without
//!   ops: it refreshes the node's heartbeat and sweeps what expired (other nodes' members, ended
//!   graces). A call also reports the room's next deadline, and the worker calls again then, so
//!   leaves are sent when they are due, not at the next tick.
//! - A call reports how many connections Redis has for this node; if that is not what the node
//!   had when it sent the call (Redis restarted empty, the node's presence expired while it was
//!   cut off, a call failed), the next call is a resync: forget this node's connections and
//!   enter every local one again, in one atomic step (no leave or join is sent for a user that
//!   stays). Ops are idempotent, so a call that timed out but did run is harmless to repeat.
//!
//! A room stays in the worker while it has local connections or a grace this node started is
//! running (so that leave is sent even if no other node watches the room).

mod script;

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use futures_util::{StreamExt, stream::FuturesUnordered};
use herald_core::{
    ChannelName, Epoch,
    room::{Member, Roster},
};
use redis::Script;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::Instant,
};

use super::{Presence, RoomPolicy, RoomsConfig};
use crate::{
    BrokerError, now_us,
    redis::{RedisStats, Shared, keys, refresh},
};

/// Most room calls in flight at once (they share one multiplexed connection).
const MAX_IN_FLIGHT: usize = 64;
/// How long after a reported deadline the worker calls (Redis and node clocks tick apart).
const DEADLINE_SLACK: Duration = Duration::from_millis(20);

type Done = oneshot::Sender<Result<(), BrokerError>>;

enum Command {
    Enter {
        channel: ChannelName,
        client: Box<str>,
        member: Option<Member>,
        done: Done,
    },
    Exit {
        channel: ChannelName,
        client: Box<str>,
    },
}

/// One change to send.
enum Op {
    Join(Member),
    Leave(Box<str>),
    /// Forget every connection of this node (the start of a resync).
    Reset,
}

/// A room this node takes part in.
struct Room {
    policy: RoomPolicy,
    /// This node's connections in the room; `None`: an anonymous subscriber, no member.
    local: HashMap<Box<str>, Option<Member>>,
    members: u64,
    queue: Vec<Op>,
    waiting: Vec<Done>,
    /// A call is in flight.
    busy: bool,
    /// Waiting in the worker's ready queue.
    ready: bool,
    /// Redis may not hold every local member: the next call re-enters them all.
    resync: bool,
    /// A call is wanted even without ops (heartbeat, deadline, retry).
    due: bool,
    /// When the worker calls next without being asked (a deadline, a retry).
    wake: Option<Instant>,
    /// A leave grace is running in the room.
    grace_pending: bool,
}

impl Room {
    fn new(policy: RoomPolicy) -> Self {
        Self {
            policy,
            local: HashMap::new(),
            members: 0,
            queue: Vec::new(),
            waiting: Vec::new(),
            busy: false,
            ready: false,
            resync: false,
            due: false,
            wake: None,
            grace_pending: false,
        }
    }

    fn wants_call(&self) -> bool {
        !self.busy && (self.due || self.resync || !self.queue.is_empty())
    }

    fn is_idle(&self) -> bool {
        self.local.is_empty()
            && self.queue.is_empty()
            && !self.busy
            && !self.resync
            && !self.grace_pending
    }
}

/// What the worker and the callers share.
struct Inner {
    shared: Arc<Shared>,
    node: String,
    config: RoomsConfig,
    script: Script,
}

/// How one call reads and changes a room.
struct Call {
    mode: &'static str,
    limit: usize,
    ops: Vec<Op>,
}

impl Inner {
    async fn call(
        &self,
        channel: &ChannelName,
        policy: &RoomPolicy,
        call: &Call,
    ) -> Result<script::Reply, BrokerError> {
        let s = &self.shared;
        let ttl = ms(self.config.ttl);
        let grace = ms(policy.grace);
        // The room's keys outlive every node's heartbeat and grace (see `script`).
        let keep = 2 * ttl + grace;
        let retention = s.retention(channel);
        let mut inv = self.script.prepare_invoke();
        inv.key(script::members(channel))
            .key(script::users(channel))
            .key(script::nodes(channel))
            .key(script::grace(channel))
            .key(script::leaving(channel))
            .key(format!("{}{}", script::node_set_prefix(channel), self.node))
            .key(keys::meta(channel))
            .key(keys::stream(channel))
            .key(keys::backbone(channel));
        inv.arg(&self.node)
            .arg(call.mode)
            .arg(ttl)
            .arg(grace)
            .arg(if policy.join_leave { "1" } else { "0" })
            .arg(policy.max_members)
            .arg(keep)
            .arg(call.limit)
            .arg(script::node_set_prefix(channel))
            .arg(retention.size)
            .arg(refresh::key_ttl_ms(retention.ttl))
            .arg(Epoch::from_random(rand::random()).as_str())
            .arg(now_us())
            .arg(channel.as_str())
            .arg(if s.commands.is_cluster() { "s" } else { "p" });
        for op in &call.ops {
            match op {
                Op::Join(m) => inv.arg("j").arg(&*m.client).arg(&*m.user).arg(&m.json[..]),
                Op::Leave(client) => inv.arg("l").arg(&**client),
                Op::Reset => inv.arg("x"),
            };
        }
        let (reply, server) = s
            .commands
            .script(&inv, s.cfg.timeout)
            .await
            .inspect_err(|_| RedisStats::inc(&s.stats.command_errors))?;
        // With replicated durability, what a room call changed (members, join and leave
        // messages) counts only once a replica has it, like a publish. (On Cluster the room
        // script does not report its node: the round runs on the slot's current primary.)
        s.replicated(channel, server, String::new()).await?;
        script::parse(reply)
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The Redis broker's [`Presence`].
pub(crate) struct RedisPresence {
    inner: Arc<Inner>,
    commands: mpsc::UnboundedSender<Command>,
}

impl RedisPresence {
    /// Starts the worker task (inside a tokio runtime); `node` names this node in every room.
    pub(crate) fn start(
        shared: Arc<Shared>,
        node: String,
        config: RoomsConfig,
    ) -> (Arc<Self>, JoinHandle<()>) {
        let inner = Arc::new(Inner {
            shared,
            node,
            config,
            script: Script::new(script::ROOM),
        });
        let (commands, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(Worker::new(inner.clone()).run(rx));
        (Arc::new(Self { inner, commands }), task)
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn enter(
        &self,
        channel: &ChannelName,
        client: &str,
        member: Option<Member>,
    ) -> Result<(), BrokerError> {
        if self.inner.config.policy(channel).is_none() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        let cmd = Command::Enter {
            channel: channel.clone(),
            client: client.into(),
            member,
            done,
        };
        if self.commands.send(cmd).is_err() {
            return Err(BrokerError::Internal("the presence worker stopped".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(BrokerError::Internal("the presence worker stopped".into())))
    }

    fn exit(&self, channel: &ChannelName, client: &str) {
        if self.inner.config.policy(channel).is_some() {
            let _ = self.commands.send(Command::Exit {
                channel: channel.clone(),
                client: client.into(),
            });
        }
    }

    async fn roster(&self, channel: &ChannelName, limit: usize) -> Result<Roster, BrokerError> {
        let Some(policy) = self.inner.config.policy(channel) else {
            return Ok(Roster::default());
        };
        // A read also sweeps what expired, so a listing never shows a dead node's members.
        let call = Call {
            mode: "r",
            limit,
            ops: Vec::new(),
        };
        Ok(self.inner.call(channel, &policy, &call).await?.roster)
    }
}

/// The result of one room call, back in the worker.
struct Finished {
    channel: ChannelName,
    /// The node's members when the call was sent.
    expected: u64,
    waiting: Vec<Done>,
    result: Result<script::Reply, BrokerError>,
}

/// The node's presence worker (see the module docs).
struct Worker {
    inner: Arc<Inner>,
    rooms: HashMap<ChannelName, Room>,
    /// Rooms that want a call, waiting for a free slot.
    ready: VecDeque<ChannelName>,
    /// Wake-ups by time; stale entries (the room's `wake` moved) are skipped.
    timers: BinaryHeap<Reverse<(Instant, ChannelName)>>,
}

impl Worker {
    fn new(inner: Arc<Inner>) -> Self {
        Self {
            inner,
            rooms: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
        }
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let period = (self.inner.config.ttl / 3).max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut calls = FuturesUnordered::new();
        loop {
            while calls.len() < MAX_IN_FLIGHT
                && let Some(channel) = self.ready.pop_front()
            {
                if let Some(call) = self.start(channel) {
                    calls.push(call);
                }
            }
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => return,
                },
                Some(done) = calls.next(), if !calls.is_empty() => self.finish(done),
                _ = tick.tick() => {
                    let channels: Vec<ChannelName> = self.rooms.keys().cloned().collect();
                    for channel in channels {
                        self.want(&channel);
                    }
                }
                () = sleep_until(next) => self.fire_timers(),
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Enter {
                channel,
                client,
                member,
                done,
            } => {
                let Some(policy) = self.inner.config.policy(&channel) else {
                    let _ = done.send(Ok(()));
                    return;
                };
                let room = self
                    .rooms
                    .entry(channel.clone())
                    .or_insert_with(|| Room::new(policy));
                if room.local.contains_key(&client) {
                    let _ = done.send(Ok(()));
                    return;
                }
                match member {
                    Some(m) => {
                        room.members += 1;
                        room.local.insert(client, Some(m.clone()));
                        room.queue.push(Op::Join(m));
                        room.waiting.push(done);
                    }
                    None => {
                        // A watcher: the room is swept from now on (the next tick).
                        room.local.insert(client, None);
                        let _ = done.send(Ok(()));
                    }
                }
                self.schedule(&channel);
            }
            Command::Exit { channel, client } => {
                let Some(room) = self.rooms.get_mut(&channel) else {
                    return;
                };
                match room.local.remove(&client) {
                    Some(Some(_)) => {
                        room.members -= 1;
                        room.queue.push(Op::Leave(client));
                        self.schedule(&channel);
                    }
                    Some(None) => self.forget_if_idle(&channel),
                    None => {}
                }
            }
        }
    }

    /// A call is wanted for `channel` (heartbeat, deadline).
    fn want(&mut self, channel: &ChannelName) {
        if let Some(room) = self.rooms.get_mut(channel) {
            room.due = true;
            self.schedule(channel);
        }
    }

    /// Puts `channel` in the ready queue if it wants a call and is not there yet.
    fn schedule(&mut self, channel: &ChannelName) {
        if let Some(room) = self.rooms.get_mut(channel)
            && room.wants_call()
            && !room.ready
        {
            room.ready = true;
            self.ready.push_back(channel.clone());
        }
    }

    fn start(&mut self, channel: ChannelName) -> Option<impl Future<Output = Finished> + use<>> {
        let room = self.rooms.get_mut(&channel)?;
        room.ready = false;
        if !room.wants_call() {
            return None;
        }
        let ops = if room.resync {
            // Everything this node has, from scratch, atomically: users that stay see nothing.
            let mut ops = vec![Op::Reset];
            ops.extend(room.local.values().flatten().cloned().map(Op::Join));
            room.queue.clear();
            ops
        } else {
            std::mem::take(&mut room.queue)
        };
        room.busy = true;
        room.due = false;
        room.resync = false;
        let expected = room.members;
        let waiting = std::mem::take(&mut room.waiting);
        let policy = room.policy;
        let inner = self.inner.clone();
        Some(async move {
            let call = Call {
                mode: "w",
                limit: 0,
                ops,
            };
            let result = inner.call(&channel, &policy, &call).await;
            Finished {
                channel,
                expected,
                waiting,
                result,
            }
        })
    }

    fn finish(&mut self, done: Finished) {
        let Finished {
            channel,
            expected,
            waiting,
            result,
        } = done;
        let Some(room) = self.rooms.get_mut(&channel) else {
            return;
        };
        room.busy = false;
        let wake = match &result {
            Ok(reply) => {
                if reply.mine != expected {
                    room.resync = true;
                }
                // Kept while a grace runs, so its leave is sent even if no other node watches.
                room.grace_pending = reply.grace_ms.is_some();
                let next = match (reply.grace_ms, reply.node_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.map(|ms| Duration::from_millis(ms) + DEADLINE_SLACK)
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "presence update failed; retrying");
                // Retried as a resync after a pause: it repeats whatever this call carried.
                room.resync = true;
                Some(self.inner.config.ttl / 3)
            }
        };
        for w in waiting {
            let _ = w.send(result.as_ref().map(drop).map_err(Clone::clone));
        }
        let resync = room.resync;
        if let Some(after) = wake {
            let at = Instant::now() + after;
            room.wake = Some(at);
            self.timers.push(Reverse((at, channel.clone())));
        } else {
            room.wake = None;
        }
        if resync && result.is_ok() {
            self.want(&channel);
        } else {
            self.schedule(&channel);
        }
        self.forget_if_idle(&channel);
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((at, _))) = self.timers.peek()
            && *at <= now
        {
            let Some(Reverse((at, channel))) = self.timers.pop() else {
                break;
            };
            if self.rooms.get(&channel).is_some_and(|r| r.wake == Some(at)) {
                if let Some(room) = self.rooms.get_mut(&channel) {
                    room.wake = None;
                }
                self.want(&channel);
            }
        }
    }

    fn forget_if_idle(&mut self, channel: &ChannelName) {
        if self.rooms.get(channel).is_some_and(Room::is_idle) {
            self.rooms.remove(channel);
        }
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
