//! The accept loop, per-connection HTTP serving, and graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use herald_broker::{Broker, BrokerError, MemoryBroker, MemoryConfig, RedisBroker, RedisConfig};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::{
    net::{TcpListener, TcpStream},
    time::Instant,
};

use crate::{
    app::App,
    auth::Auth,
    config::Config,
    http,
    hub::{Hub, HubConfig},
    limits::{Limit, Permit, timer::HeadTimer},
    metrics::{BrokerStats, Metrics},
    transport::{self, sse::ConnectionSignal},
};

/// Most messages in one history page (of the history endpoint and of resumes); pages are also
/// bounded by `history_page_bytes`.
pub const PAGE_MESSAGES: usize = 1000;

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
    listener: TcpListener,
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
            accepted = listener.accept() => accept(&app, accepted, false, &mut backoff).await,
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
            accepted = listener.accept() => accept(&app, accepted, true, &mut backoff).await,
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
                    app.tasks
                        .spawn(serve(app.clone(), stream, permit, head_deadline, draining));
                }
                Err(refusal) => app.connections.refuse(stream, refusal),
            }
        }
        Err(e) => backoff.failed(app, &e).await,
    }
}

/// Serves one TCP connection. `draining`: accepted during the drain, so it serves one request
/// without keep-alive instead of being told to shut down before its first request.
///
/// `permit` holds the connection's place in the connection limits until the task ends (a
/// WebSocket takes its own); `head_deadline` is when a connection without a complete request
/// head is closed (`header_read_timeout` after accept).
async fn serve(
    app: Arc<App>,
    stream: TcpStream,
    permit: Permit,
    head_deadline: Instant,
    draining: bool,
) {
    let _ = stream.set_nodelay(true);
    let peer = permit.peer();
    let stream = if draining {
        stream
    } else {
        match transport::sse_direct::try_serve(&app, stream, peer, head_deadline).await {
            Some(stream) => stream,
            None => return, // served as an SSE stream, or closed
        }
    };
    // The drain may have begun while the first request was awaited: serve that one and close.
    let draining = draining || app.is_draining();
    let service_app = app.clone();
    let kill = tokio_util::sync::CancellationToken::new();
    let signal = ConnectionSignal(kill.clone());
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(signal.clone());
        req.extensions_mut().insert(peer);
        let app = service_app.clone();
        async move {
            let mut resp = http::handle(app.clone(), req).await?;
            // Keep-alive clients (and load balancers) leave a draining node after this response
            // instead of racing its idle-connection close with their next request.
            if app.is_draining() && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
                resp.headers_mut().insert(
                    hyper::header::CONNECTION,
                    hyper::header::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    // HTTP/1.1 only: browsers speak HTTP/2 only over TLS, which ends at the load balancer, and
    // hyper's http1 connection hands WebSocket upgrades back as the bare `TcpStream`.
    // hyper enforces the header read timeout only with a timer; ours also makes it the
    // keep-alive idle timeout after the first request (see `limits::timer`).
    let counters = &app.metrics.limits;
    let timer = HeadTimer::new(
        head_deadline,
        app.config.keep_alive_timeout,
        counters.get(Limit::HeaderReadTimeout).clone(),
        counters.get(Limit::KeepAliveTimeout).clone(),
    );
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(!draining)
        .timer(timer)
        .header_read_timeout(app.config.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: its first request is already in the socket (peeked above), and
        // being polled reads it, so a drain moment that has already passed lets that request be
        // answered instead of closing the connection under it.
        biased;
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "connection ended with error");
            }
            return;
        }
        // Keep-alive connections close at their own random moment in the drain window, like
        // streams: publishers keep working meanwhile and closes do not all land at once.
        () = app.drained(), if !draining => {}
        () = kill.cancelled() => {
            // The SSE stream on this connection closed: give its final event the notice deadline
            // to go out, then drop the connection even if the peer is not reading.
            let _ = tokio::time::timeout(transport::FINAL_NOTICE_DEADLINE, conn.as_mut()).await;
            return;
        }
    }
    // Let the in-flight request (or the SSE stream, which ends itself during the drain) finish.
    conn.as_mut().graceful_shutdown();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with error during shutdown");
    }
}
