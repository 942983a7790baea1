//! [`RedisBroker`]: the `Broker` trait over Redis, and the state its tasks share.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use herald_core::{ChannelName, Epoch, EventName, StreamPosition, protocol::Publish};
use parking_lot::{Mutex, RwLock};
use redis::Script;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use super::{
    RedisConfig, RedisStats,
    commands::{Commands, Server},
    config::Durability,
    durability::{Barrier, Site},
    endpoint::{self, Endpoint},
    hooks::{Gate, Hold, Hooks},
    keys,
    probe::{self, Probes},
    pubsub::PubSub,
    refresh::{self, Refreshes},
    relay::{self, Event, Slot},
    scripts::{self, ReadReply},
    sentinel,
    serial::ChannelLocks,
    supervisor,
};
use crate::{
    Broker, BrokerError, History, HistoryQuery, Published, Retention, Sink, Start, now_us,
    presence::{Presence, redis::RedisPresence},
};

/// State shared by the broker handle and its tasks.
pub(crate) struct Shared {
    pub cfg: RedisConfig,
    pub endpoint: Arc<Endpoint>,
    pub commands: Arc<Commands>,
    /// With `Durability::Replicated`: what publishes, reads and live messages wait for.
    pub barrier: Option<Barrier>,
    publish_script: Script,
    /// Which channels' key TTLs this node refreshed recently (publishes skip the refresh).
    refreshes: Refreshes,
    read_script: Script,
    reset_script: Script,
    pub channels: Mutex<HashMap<ChannelName, Slot>>,
    /// Serialises subscribe and unsubscribe per channel.
    pub sub_locks: ChannelLocks,
    /// The current pub/sub connection, `None` while reconnecting.
    pub pubsub: RwLock<Option<PubSub>>,
    /// True once the current connection is subscribed to every channel.
    pub connected: watch::Sender<bool>,
    /// The newest pub/sub connection generation known to be broken.
    pub broken: watch::Sender<u64>,
    /// The relay's queue (bounded: see [`relay::accept`]).
    pub events: mpsc::Sender<Event>,
    /// A live push found the relay's queue full and was dropped: history must fill in.
    pub overflowed: AtomicBool,
    pub hooks: Hooks,
    pub probes: Probes,
    pub stats: Arc<RedisStats>,
    /// Some channel owes a history read that failed; the relay retries.
    pub stale: AtomicBool,
    /// The last attempt to (re)connect the pub/sub connection failed: Redis is known to be
    /// unreachable, so a subscribe fails at once instead of waiting for a reconnect.
    pub unreachable: AtomicBool,
    /// The primary Sentinel announced last (`+switch-master`), to act once per switch.
    announced_primary: Mutex<String>,
    next_sub: AtomicU64,
}

impl Shared {
    pub(crate) fn mark_broken(&self, generation: u64) {
        self.broken.send_if_modified(|b| {
            let newer = generation > *b;
            if newer {
                *b = generation;
            }
            newer
        });
    }

    pub(crate) fn disconnected(&self) {
        self.connected.send_replace(false);
        *self.pubsub.write() = None;
    }

    /// The current connection's generation, if it is fully subscribed.
    pub(crate) fn current_gen(&self) -> Option<u64> {
        if !*self.connected.borrow() {
            return None;
        }
        self.pubsub.read().as_ref().map(|c| c.generation)
    }

    /// The channel's retention: its namespace's, else the configured default.
    pub(crate) fn retention(&self, channel: &ChannelName) -> Retention {
        let default = Retention {
            size: self.cfg.history_size,
            ttl: self.cfg.history_ttl,
        };
        Retention::of(channel, default, &self.cfg.retention_by_namespace)
    }

    /// Runs the read script for one page (see [`scripts::READ`]). `follow` (the relay's gap
    /// fills): a position in another epoch reads the current epoch from its start.
    pub(crate) async fn read(
        &self,
        channel: &ChannelName,
        query: &HistoryQuery,
        follow: bool,
    ) -> Result<ReadReply, BrokerError> {
        let retention = self.retention(channel);
        let (mode, epoch, offset) = match &query.start {
            Start::After(p) => (if follow { "f" } else { "a" }, p.epoch.as_str(), p.offset),
            Start::AfterOffset(o) => ("o", "", *o),
            Start::Latest => ("l", "", 0),
        };
        let mut inv = self.read_script.prepare_invoke();
        inv.key(keys::meta(channel))
            .key(keys::stream(channel))
            .arg(ttl_ms(retention.ttl))
            .arg(mode)
            .arg(epoch)
            .arg(offset)
            .arg(query.limit.min(retention.size))
            .arg(query.max_bytes)
            .arg(self.cfg.max_entry_bytes)
            .arg(self.node_ids())
            .arg(refresh::key_ttl_ms(retention.ttl));
        let (reply, server) = self
            .commands
            .script(&inv, self.cfg.timeout)
            .await
            .inspect_err(|_| RedisStats::inc(&self.stats.command_errors))?;
        let (reply, node) = scripts::parse_read(reply)?;
        // What a read returns is shown to clients (positions, history): with replicated
        // durability only once a replica has it, so a failover cannot take back what was shown.
        self.replicated(channel, server, node).await?;
        Ok(reply)
    }

    /// Whether the scripts must say which node ran them (`'1'`): for the replication barrier
    /// on Cluster, which must run where the write went.
    fn node_ids(&self) -> &'static str {
        if self.barrier.is_some() && self.commands.is_cluster() {
            "1"
        } else {
            "0"
        }
    }

    /// With replicated durability: waits until every write that completed where a script on
    /// `channel` just ran (`server`; on Cluster, the node whose id the script returned) is on a
    /// replica. Without it: nothing to wait for.
    pub(crate) async fn replicated(
        &self,
        channel: &ChannelName,
        server: Server,
        node: String,
    ) -> Result<(), BrokerError> {
        let Some(barrier) = &self.barrier else {
            return Ok(());
        };
        let site = if self.commands.is_cluster() {
            Site::Shard {
                slot: keys::channel_slot(channel),
                // Empty: the script did not say (a room call); the slot's current primary.
                node: (!node.is_empty()).then(|| Server::from(node)),
            }
        } else {
            Site::Server(server)
        };
        barrier.wait(site).await
    }

    /// `channel`'s history lost messages this node had delivered (behind `seen`): moves the
    /// channel to a new epoch, unless someone already did. Returns whether this call did.
    pub(crate) async fn reset_channel(
        &self,
        channel: &ChannelName,
        seen: &StreamPosition,
    ) -> Result<bool, BrokerError> {
        let mut inv = self.reset_script.prepare_invoke();
        inv.key(keys::meta(channel))
            .key(keys::stream(channel))
            .arg(seen.epoch.as_str());
        let (reply, _) = self
            .commands
            .script(&inv, self.cfg.timeout)
            .await
            .inspect_err(|_| RedisStats::inc(&self.stats.command_errors))?;
        Ok(matches!(reply, redis::Value::Int(1)))
    }

    /// Sentinel announced `addr` as the new primary: every connection elsewhere moves there.
    /// Every Sentinel announces it: only the first announcement of an address acts.
    pub(crate) fn primary_switched(&self, addr: &str) {
        {
            let mut last = self.announced_primary.lock();
            if *last == addr {
                return;
            }
            addr.clone_into(&mut last);
        }
        let stale_pubsub = self
            .pubsub
            .read()
            .as_ref()
            .filter(|c| c.addr != addr)
            .map(|c| c.generation);
        RedisStats::inc(&self.stats.primary_switches);
        tracing::warn!(
            primary = addr,
            "redis sentinel switched the primary; reconnecting"
        );
        self.commands.reset();
        if let Some(b) = &self.barrier {
            b.reset();
        }
        if let Some(generation) = stale_pubsub {
            self.mark_broken(generation);
        }
    }

    /// Where the current pub/sub connection goes, for logs.
    pub(crate) fn pubsub_addr(&self) -> String {
        self.pubsub
            .read()
            .as_ref()
            .map(|c| c.addr.clone())
            .unwrap_or_default()
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The Redis-backed broker: standalone Redis, a Sentinel-managed primary, or Redis Cluster.
pub struct RedisBroker {
    shared: Arc<Shared>,
    presence: Arc<RedisPresence>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl RedisBroker {
    /// Checks the configuration and starts the pub/sub supervisor, relay, probe (and, with
    /// Sentinel, `+switch-master` follower) tasks, so it must be called inside a tokio runtime.
    /// Fails on an invalid configuration and on what retrying cannot fix (credentials Redis
    /// rejects, a certificate that is not trusted, a primary name Sentinel does not know): when
    /// Redis is merely unreachable it waits up to `timeout` for the first connection, then
    /// returns anyway and keeps reconnecting in the background (`ready()` reports it).
    pub async fn connect(config: RedisConfig) -> Result<Arc<Self>, BrokerError> {
        let default = Retention {
            size: config.history_size,
            ttl: config.history_ttl,
        };
        if Retention::shortest_ttl(default, &config.retention_by_namespace).is_zero() {
            return Err(BrokerError::Internal(
                "history_ttl (and every namespace's) must be positive".into(),
            ));
        }
        let endpoint = Arc::new(Endpoint::new(&config)?);
        // Wrong credentials, an untrusted certificate or an unknown primary name will not fix
        // themselves: refuse to start. An unreachable Redis may come back: start and retry.
        // On Cluster, the commands only Cluster needs: an ACL that forgot them fails here.
        let mut cluster_commands = vec![redis::cmd("CLUSTER").arg("SLOTS").to_owned()];
        if config.durability == Durability::Replicated {
            cluster_commands.push(redis::cmd("CLUSTER").arg("MYID").to_owned());
        }
        if let Err(e) = endpoint.preflight(config.timeout, &cluster_commands).await
            && let Some(why) = endpoint::fatal(&e)
        {
            return Err(BrokerError::Internal(format!("{why}: {e}")));
        }
        let stats: Arc<RedisStats> = Arc::default();
        let commands = Arc::new(Commands::new(endpoint.clone(), config.timeout));
        let barrier = (config.durability == Durability::Replicated).then(|| {
            Barrier::start(
                endpoint.clone(),
                commands.clone(),
                config.wait_timeout,
                config.timeout,
                stats.clone(),
            )
        });
        let node_id = match &config.node_id {
            Some(id) => id.clone(),
            None => format!("{:016x}", rand::random::<u64>()),
        };
        let (events, events_rx) = mpsc::channel(config.relay_queue.max(1));
        let rooms = config.rooms.clone();
        let shared = Arc::new(Shared {
            probes: Probes::new(node_id.clone()),
            cfg: config,
            endpoint,
            commands,
            barrier,
            publish_script: Script::new(scripts::PUBLISH),
            refreshes: Refreshes::default(),
            read_script: Script::new(scripts::READ),
            reset_script: Script::new(scripts::RESET),
            channels: Mutex::new(HashMap::new()),
            sub_locks: ChannelLocks::default(),
            pubsub: RwLock::new(None),
            connected: watch::Sender::new(false),
            broken: watch::Sender::new(0),
            events,
            overflowed: AtomicBool::new(false),
            hooks: Hooks::default(),
            stats,
            stale: AtomicBool::new(false),
            unreachable: AtomicBool::new(false),
            announced_primary: Mutex::new(String::new()),
            next_sub: AtomicU64::new(1),
        });
        let (presence, presence_task) = RedisPresence::start(shared.clone(), node_id, rooms);
        let mut tasks = vec![
            tokio::spawn(relay::run(shared.clone(), events_rx)),
            tokio::spawn(supervisor::supervise(shared.clone())),
            tokio::spawn(probe::run(shared.clone())),
            presence_task,
        ];
        if let Some(s) = shared.endpoint.sentinel()
            && shared.cfg.follow_switch_master
        {
            for idx in 0..s.len() {
                tasks.push(tokio::spawn(sentinel::follow(shared.clone(), idx)));
            }
        }
        let broker = Arc::new(Self {
            shared,
            presence,
            tasks,
        });
        if broker.wait_connected(false).await.is_err() {
            tracing::warn!("redis is not reachable yet; retrying in the background");
        } else {
            broker.check_eviction().await;
        }
        Ok(broker)
    }

    /// Warns when Redis may evict keys: every Herald key has a TTL, so any eviction policy can
    /// drop idempotency keys (a retried publish would then be a duplicate) or history before its
    /// time. With `noeviction` a full Redis fails publishes instead (loudly). Managed Redis
    /// services that refuse CONFIG are skipped.
    async fn check_eviction(&self) {
        let cmd = redis::cmd("CONFIG").arg("GET").arg("maxmemory*").to_owned();
        let Ok(redis::Value::Array(v)) = self
            .shared
            .commands
            .query(&cmd, self.shared.cfg.timeout)
            .await
            .map(|v| match v {
                redis::Value::Map(pairs) => {
                    redis::Value::Array(pairs.into_iter().flat_map(|(k, v)| [k, v]).collect())
                }
                other => other,
            })
        else {
            return;
        };
        let text = |v: &redis::Value| match v {
            redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            redis::Value::SimpleString(s) => s.clone(),
            _ => String::new(),
        };
        let get = |name: &str| {
            v.chunks(2)
                .find(|kv| kv.len() == 2 && text(&kv[0]) == name)
                .map(|kv| text(&kv[1]))
        };
        let limited = get("maxmemory").is_some_and(|m| m != "0");
        let policy = get("maxmemory-policy").unwrap_or_default();
        if limited && policy != "noeviction" {
            tracing::warn!(
                policy,
                "redis may evict keys under memory pressure: idempotency keys and history can \
                 be lost early (set maxmemory-policy noeviction)"
            );
        }
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Arc<RedisStats> {
        self.shared.stats.clone()
    }

    /// Test hook: makes the current pub/sub connection silently drop every message, like a
    /// connection that stays open but stopped delivering. Only the self-probe can notice.
    #[doc(hidden)]
    pub fn debug_mute_pubsub(&self) {
        if let Some(conn) = self.shared.pubsub.read().as_ref() {
            conn.mute();
        }
    }

    /// Test hook: holds the work `hold` names until the returned gate is released.
    #[doc(hidden)]
    pub fn debug_hold(&self, hold: Hold) -> Arc<Gate> {
        self.shared.hooks.arm(hold)
    }

    /// Waits (up to `timeout`) until the pub/sub connection is up. With `fail_fast` (subscribes)
    /// it fails at once while Redis is known to be unreachable (a reconnect attempt failed), so
    /// subscribers get their 503 without waiting out the timeout.
    async fn wait_connected(&self, fail_fast: bool) -> Result<(), BrokerError> {
        let mut rx = self.shared.connected.subscribe();
        if fail_fast && !*rx.borrow() && self.shared.unreachable.load(Ordering::Relaxed) {
            return Err(BrokerError::Unavailable(
                "redis is unreachable (the pub/sub connection is down)".into(),
            ));
        }
        match tokio::time::timeout(self.shared.cfg.timeout, rx.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(BrokerError::Unavailable(
                "redis pub/sub connection is down".into(),
            )),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, publish: Publish) -> Result<Published, BrokerError> {
        let s = &self.shared;
        let c = &publish.channel;
        let retention = s.retention(c);
        let generation = s.commands.generation();
        let refresh = s.refreshes.due(c, generation);
        // Only a refreshing call needs to know when it was sent.
        let sent = refresh.then(std::time::Instant::now);
        // The EVALSHA is built in one buffer (see `Commands::evalsha`); the keys are written
        // into it, and the epoch a new channel would get is formatted on the stack.
        let idempotency = publish.idempotency_key.as_deref().map(|k| [":i:", k]);
        // Sized up front (argument count, then bytes: the fixed-size arguments, each key's
        // `herald:{}` and suffix, the variable ones), so adding arguments never reallocates.
        let variable = 4 * c.as_str().len()
            + publish.data.len()
            + publish.idempotency_key.as_ref().map_or(0, String::len)
            + publish.event.as_ref().map_or(0, |e| e.as_str().len())
            + publish.sender.as_ref().map_or(0, |sender| sender.len());
        let mut cmd = redis::Cmd::with_capacity(20, 256 + variable);
        cmd.arg("EVALSHA")
            .arg(s.publish_script.get_hash())
            .arg(if idempotency.is_some() { 4 } else { 3 })
            .arg(keys::Key::meta(c))
            .arg(keys::Key::stream(c))
            .arg(keys::Key::backbone(c));
        if let Some(suffix) = &idempotency {
            cmd.arg(keys::Key::idempotency(c, suffix));
        }
        cmd.arg(&Epoch::random_hex(rand::random())[..])
            .arg(retention.size)
            .arg(ttl_ms(retention.ttl))
            .arg(now_us())
            .arg(publish.event.as_ref().map_or("", EventName::as_str))
            .arg(c.as_str())
            .arg(&publish.data[..])
            .arg(if s.commands.is_cluster() { "s" } else { "p" });
        match &publish.sender {
            Some(sender) => cmd
                .arg(sender.user.as_bytes())
                .arg(sender.info.as_deref().unwrap_or_default()),
            None => cmd.arg("").arg(""),
        };
        cmd.arg(s.node_ids())
            .arg(refresh::key_ttl_ms(retention.ttl))
            .arg(if refresh { "1" } else { "0" });
        let (reply, server) = s
            .commands
            .evalsha(&s.publish_script, &cmd, s.cfg.timeout)
            .await
            .inspect_err(|_| RedisStats::inc(&s.stats.command_errors))?;
        let (position, duplicate, node) = scripts::parse_publish(reply)?;
        // A duplicate returned before appending: it refreshed nothing.
        if let Some(sent) = sent
            && !duplicate
        {
            s.refreshes.refreshed(c, retention.ttl, sent, generation);
        }
        // Acknowledge only what a replica has (a duplicate too: its first publish may not have
        // reached a replica when the client gave up on it). The barrier's own write covers a
        // first publish made by another connection or node.
        s.replicated(c, server, node).await?;
        Ok(Published {
            position,
            duplicate,
        })
    }

    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        RedisStats::inc(&self.shared.stats.history_reads);
        let reply = self.shared.read(channel, &query, false).await?;
        Ok(query.page(reply.top, reply.messages))
    }

    async fn subscribe(
        &self,
        channel: &ChannelName,
        sink: Arc<dyn Sink>,
    ) -> Result<(), BrokerError> {
        let s = &self.shared;
        self.wait_connected(true).await?;
        // This channel's lock only: subscribes to other channels go on meanwhile.
        let _guard = s.sub_locks.lock(channel).await;
        let sub = s.next_sub.fetch_add(1, Ordering::Relaxed);
        s.channels
            .lock()
            .insert(channel.clone(), Slot::new(sink, sub));
        let conn = s.pubsub.read().clone();
        let backbone = keys::backbone(channel);
        let result = async {
            let conn = conn.ok_or_else(|| {
                BrokerError::Unavailable("redis pub/sub connection is down".into())
            })?;
            conn.subscribe(std::slice::from_ref(&backbone)).await?;
            s.hooks.pass(&Hold::Subscribe(channel.clone())).await;
            // Only now, with the subscription confirmed, is the top a safe baseline: every
            // later publish reaches this node live.
            let top = s.read(channel, &HistoryQuery::top(), false).await?.top;
            Ok::<_, BrokerError>((conn, top))
        }
        .await;
        match result {
            Ok((_, top)) => {
                s.events
                    .send(Event::Baseline {
                        channel: channel.clone(),
                        sub,
                        top,
                    })
                    .await
                    .map_err(|_| BrokerError::Internal("relay stopped".into()))?;
                Ok(())
            }
            Err(e) => {
                s.channels.lock().remove(channel);
                let conn = s.pubsub.read().clone();
                if let Some(conn) = conn {
                    conn.unsubscribe(&backbone).await;
                }
                Err(e)
            }
        }
    }

    async fn unsubscribe(&self, channel: &ChannelName) {
        let s = &self.shared;
        let _guard = s.sub_locks.lock(channel).await;
        if s.channels.lock().remove(channel).is_some() {
            let conn = s.pubsub.read().clone();
            if let Some(conn) = conn {
                conn.unsubscribe(&keys::backbone(channel)).await;
            }
        }
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        let s = &self.shared;
        if s.current_gen().is_none() {
            return Err(BrokerError::Unavailable(
                "redis pub/sub connection is down".into(),
            ));
        }
        let timeout = s.cfg.timeout.min(Duration::from_secs(1));
        s.commands
            .query(&redis::cmd("PING"), timeout)
            .await
            .map(drop)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn presence(self: Arc<Self>) -> Option<Arc<dyn Presence>> {
        Some(self.presence.clone())
    }
}
