//! The accept loop, per-connection HTTP serving, and graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use herald_broker::{Broker, BrokerError, MemoryBroker, MemoryConfig, RedisBroker, RedisConfig};
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

use crate::{
    app::App,
    auth::Auth,
    config::Config,
    conn,
    hub::{Hub, HubConfig},
    metrics::{BrokerStats, Metrics},
    tls::Tls,
};

/// Most messages in one history page (of the history endpoint and of resumes); pages are also
/// bounded by `history_page_bytes`.
pub const PAGE_MESSAGES: usize = 1000;

/// Where the node accepts connections: a bound TCP socket, speaking TLS when `tls` is set.
pub struct Listener {
    pub tcp: TcpListener,
    pub tls: Option<Arc<Tls>>,
}

impl From<TcpListener> for Listener {
    /// Plain HTTP.
    fn from(tcp: TcpListener) -> Self {
        Self { tcp, tls: None }
    }
}

/// The broker the configuration asks for: Redis when `redis_url` is set, else in-memory. Also
/// returns the broker's counters, for metrics. Fails on what retrying cannot fix (credentials
/// Redis rejects, an untrusted certificate); an unreachable Redis is retried in the background.
pub async fn build_broker(config: &Config) -> Result<(Arc<dyn Broker>, BrokerStats), BrokerError> {
    if config.redis_url.is_empty() {
        let broker = MemoryBroker::new(MemoryConfig {
            history_size: config.history_size,
            history_ttl: config.history_ttl,
            retention_by_namespace: config.retention_by_namespace(),
            max_bytes: config.memory_max_bytes,
            rooms: config.rooms_config(),
        });
        let stats = BrokerStats::Memory(broker.stats());
        return Ok((broker, stats));
    }
    let redis = RedisBroker::connect(RedisConfig {
        url: config.redis_url.to_string(),
        history_size: config.history_size,
        history_ttl: config.history_ttl,
        retention_by_namespace: config.retention_by_namespace(),
        timeout: config.redis_timeout,
        page_bytes: config.history_page_bytes,
        max_entry_bytes: config.max_message_bytes + 1024,
        probe_interval: config.redis_probe_interval,
        probe_timeout: config.redis_timeout,
        rooms: config.rooms_config(),
        ..config.production_redis()
    })
    .await?;
    let stats = BrokerStats::Redis(redis.stats());
    Ok((redis, stats))
}

/// Serves Herald on `listener` with `broker` (from [`build_broker`], built before the node says
/// it is listening) and `auth` (subscriber keys and namespace rules) until `shutdown` resolves, then drains: readiness fails at once,
/// streaming clients are told to reconnect at random moments over `drain_window`, and the
/// function returns once they are gone (at most 2 s after the window). During the drain the
/// listener stays open, so load balancers see `/readyz` fail and publishes still succeed, while
/// new streams are refused with `503 draining`.
pub async fn run(
    listener: impl Into<Listener>,
    config: Config,
    (broker, broker_stats): (Arc<dyn Broker>, BrokerStats),
    auth: Auth,
    shutdown: impl Future<Output = ()>,
) {
    let metrics = Metrics::new(broker_stats);
    let hub = Hub::new(
        broker,
        HubConfig {
            linger: config.channel_linger,
            page_messages: PAGE_MESSAGES,
            page_bytes: config.history_page_bytes,
        },
        metrics.hub.clone(),
    );
    let app = App::new(config, hub, metrics, auth);
    let Listener { tcp: listener, tls } = listener.into();
    // Certificate rotation runs for as long as the node serves.
    let _reloads = tls.clone().map(|tls| {
        let watch = tls.watch(
            app.config.tls_reload_interval,
            app.metrics.tls_reloads.clone(),
        );
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(watch))
    });
    // The address is logged too: with stdout gone (`| head -1` exited), stderr still has it.
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(broker = app.hub.broker().kind(), %addr, "herald serving");
    crate::posture::warn_if_open(&app.config);

    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => accept(&app, &tls, accepted, false, &mut backoff).await,
            () = &mut shutdown => break,
        }
    }

    tracing::info!(window = ?app.config.drain_window, "draining");
    app.start_draining();
    app.shutdown.cancel();
    app.tasks.close();
    let deadline = Instant::now() + app.config.drain_window + Duration::from_secs(2);
    loop {
        tokio::select! {
            accepted = listener.accept() => accept(&app, &tls, accepted, true, &mut backoff).await,
            () = app.tasks.wait() => break,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(remaining = app.tasks.len(), "drain window over: closing remaining connections");
                break;
            }
        }
    }
}

/// How long the accept loop pauses after a failed accept: doubling from 5 ms to 1 s while
/// accepts keep failing (out of file descriptors, the usual cause, lasts until connections
/// close; retrying at once would spin a core), back to nothing after a success.
#[derive(Default)]
struct AcceptBackoff {
    delay: Option<Duration>,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    async fn failed(&mut self, app: &App, e: &std::io::Error) {
        app.metrics.accept_errors.inc();
        let delay = match self.delay {
            None => {
                tracing::warn!(error = %e, "accept failed: backing off until accepts succeed");
                Self::FIRST
            }
            Some(d) => {
                tracing::debug!(error = %e, "accept failed again");
                (d * 2).min(Self::MAX)
            }
        };
        self.delay = Some(delay);
        tokio::time::sleep(delay).await;
    }
}

async fn accept(
    app: &Arc<App>,
    tls: &Option<Arc<Tls>>,
    accepted: std::io::Result<(TcpStream, std::net::SocketAddr)>,
    draining: bool,
    backoff: &mut AcceptBackoff,
) {
    match accepted {
        Ok((stream, peer)) => {
            backoff.delay = None;
            // The request-head deadline runs from here, whatever happens to the socket next.
            let head_deadline = Instant::now() + app.config.header_read_timeout;
            match app.connections.admit_socket(peer.ip()) {
                Ok(permit) => {
                    app.tasks.spawn(conn::serve(
                        app.clone(),
                        tls.clone(),
                        stream,
                        permit,
                        head_deadline,
                        draining,
                    ));
                }
                // On a TLS port a refused socket is closed unanswered: a plain-text answer means
                // nothing to a TLS client, and a handshake is what an overload cannot afford.
                // (Refused streams still get their JSON 503 over the connection they came on.)
                Err(_) if tls.is_some() => drop(stream),
                Err(refusal) => app.connections.refuse(stream, refusal),
            }
        }
        Err(e) => backoff.failed(app, &e).await,
    }
}
