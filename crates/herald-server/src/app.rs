//! What every request handler shares: configuration, the hub, metrics and the drain signal.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use herald_broker::Broker;
use herald_core::protocol::Limits;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    auth::Auth, config::Config, hub::Hub, limits::ConnectionLimits, metrics::Metrics,
    publishers::Publishers, rooms::Rooms,
};

pub struct App {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// Where publishes go (the hub's broker: the one the node subscribes through).
    pub broker: Arc<dyn Broker>,
    /// Presence and join/leave: which subscriptions make a connection a room member.
    pub rooms: Rooms,
    /// Subscriber tokens and namespace rules: who may read and publish what.
    pub auth: Auth,
    pub limits: Limits,
    /// Who may publish over HTTP.
    pub publishers: Publishers,
    /// Connections per node and per client address.
    pub connections: Arc<ConnectionLimits>,
    pub metrics: Metrics,
    /// Cancelled when the server starts draining: streaming connections end and tell their
    /// clients to reconnect.
    pub shutdown: CancellationToken,
    /// Tracks every connection task (including upgraded WebSockets) so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Set first on shutdown so `/readyz` fails before connections are closed.
    draining: AtomicBool,
}

impl App {
    pub fn new(config: Config, hub: Arc<Hub>, metrics: Metrics, auth: Auth) -> Arc<Self> {
        let broker = hub.broker().clone();
        let rooms = Rooms::new(&config, broker.clone().presence(), metrics.presence.clone());
        Arc::new(Self {
            auth,
            broker,
            rooms,
            limits: config.limits(),
            publishers: Publishers::new(&config.api_keys, &metrics),
            connections: ConnectionLimits::new(&config, metrics.limits.clone()),
            metrics,
            config,
            hub,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            draining: AtomicBool::new(false),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Resolves when this connection's turn to close has come: at a uniformly random moment within
    /// the drain window after shutdown began, so a fleet restart spreads reconnects out instead of
    /// sending every client to the other nodes at once.
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static {
        let shutdown = self.shutdown.clone();
        let delay = self.drain_delay();
        async move {
            shutdown.cancelled().await;
            tokio::time::sleep(delay).await;
        }
    }

    /// How long after shutdown began a connection's turn to close comes (see [`App::drained`]),
    /// for a connection that waits for the shutdown and then for this itself.
    pub fn drain_delay(&self) -> std::time::Duration {
        self.config.drain_window.mul_f64(rand::random::<f64>())
    }
}
