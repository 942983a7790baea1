//! HTTP/2 connections: ALPN `h2` over TLS, or prior knowledge on a plain port.
//!
//! **One stream, one task.** hyper hands every stream's future to the connection's executor
//! ([`StreamExec`]), which runs it in a task of its own carrying a cancellation token that the
//! request's handler finds (a task-local) and uses as its [`ConnectionSignal`]. An SSE stream
//! whose outbox closes (slow consumer, drain, expiry) cancels it; the task then gives the
//! stream's final event the notice deadline and drops the stream, which resets it (`RST_STREAM CANCEL`):
//! that stream only, the others on the connection keep going. This is how a slow consumer is cut
//! off per stream: hyper stops polling a body whose stream has no flow-control window left (a
//! client that stopped reading that stream), so the body itself cannot notice, just as the
//! HTTP/1.1 connection task cuts off a connection.
//!
//! **Settings.** `h2_max_concurrent_streams` per connection; request headers up to
//! `h2_max_header_bytes` (larger: h2's own `431`); pings every `h2_ping_interval`, a connection
//! that does not answer within `h2_ping_timeout` is closed; at most [`MAX_PENDING_RESETS`]
//! streams reset by the client before they were accepted and [`MAX_ERROR_RESETS`] streams reset
//! for the client's errors, beyond which the connection is closed (`GOAWAY ENHANCE_YOUR_CALM`:
//! the "rapid reset" flood, CVE-2023-44487); per-stream send buffers of
//! [`MAX_SEND_BUFFER`], so a stream that is not read holds at most that much beyond its outbox.
//!
//! **Timeouts.** hyper's HTTP/2 server has no header or idle timeout, so this module keeps them:
//! the first stream must open before the connection's head deadline (`header_read_timeout` from
//! accept), and a connection with no open stream for `keep_alive_timeout` is closed (`GOAWAY`),
//! each counted in `herald_limit_rejections_total` like their HTTP/1.1 counterparts.

use std::{pin::Pin, sync::Arc, time::Duration};

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::Conn;
use crate::{
    limits::{Limit, Peer},
    metrics::LimitCounters,
    transport::{self, sse::ConnectionSignal},
};

/// Streams the client may reset before the server accepted them (h2's default, made explicit).
pub const MAX_PENDING_RESETS: usize = 20;
/// Streams the server may reset because of the client's errors (hyper's default).
pub const MAX_ERROR_RESETS: usize = 1024;
/// Bytes of response data buffered per stream beyond what the client's window admits.
pub const MAX_SEND_BUFFER: usize = 128 * 1024;
/// Receive windows: publish bodies are at most `max_body_bytes` (256 KiB by default).
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;

tokio::task_local! {
    /// The cancellation token of the stream whose task is running (see the module docs).
    static STREAM: CancellationToken;
}

pub(super) async fn serve<I>(conn: &Conn, io: TokioIo<I>, draining: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = &conn.app;
    let config = &app.config;
    let (open, watch_open) = watch::channel(0usize);
    let gone = CancellationToken::new();
    // Stream tasks never outlive their connection.
    let _gone = gone.clone().drop_guard();
    let exec = StreamExec {
        tasks: app.tasks.clone(),
        open: Arc::new(open),
        gone,
        streams: app.metrics.h2_streams.clone(),
    };
    let peer: Peer = conn.peer;
    let service_app = app.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let app = service_app.clone();
        // Boxed: hyper keeps a stream's service future inside the stream's task until the
        // response head is sent; unboxed, every idle SSE stream's task would stay sized for the
        // whole request handler.
        let answer: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
            // Read while polled inside the stream's task (hyper calls the service before it
            // hands the stream to the executor, so not in the closure above).
            let signal = STREAM
                .try_with(CancellationToken::clone)
                .unwrap_or_default();
            req.extensions_mut().insert(ConnectionSignal(signal));
            req.extensions_mut().insert(peer);
            super::respond(app, req).await
        });
        answer
    });
    let mut builder = hyper::server::conn::http2::Builder::new(exec);
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(config.h2_max_concurrent_streams).unwrap_or(u32::MAX))
        .max_header_list_size(u32::try_from(config.h2_max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(config.h2_ping_interval)
        .keep_alive_timeout(config.h2_ping_timeout);
    let http = builder.serve_connection(io, service);
    tokio::pin!(http);
    let idle = idle(
        watch_open,
        conn.head_deadline,
        config.keep_alive_timeout,
        app.metrics.limits.clone(),
    );
    tokio::select! {
        biased;
        res = http.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "HTTP/2 connection ended with error");
            }
            return;
        }
        () = idle => {}
        // Like HTTP/1.1 keep-alive connections: each closes at its own moment in the drain
        // window (its SSE streams end themselves, each at its own moment too).
        () = app.drained(), if !draining => {}
        () = app.shutdown.cancelled(), if draining => {}
    }
    // GOAWAY: requests in flight finish, no new stream is accepted.
    http.as_mut().graceful_shutdown();
    if let Err(e) = http.await {
        tracing::debug!(error = %e, "HTTP/2 connection ended with error during shutdown");
    }
}

/// Resolves when the connection should close for inactivity: no stream opened before
/// `head_deadline`, or none open for `keep_alive` (see the module docs).
async fn idle(
    mut open: watch::Receiver<usize>,
    head_deadline: Instant,
    keep_alive: Duration,
    limits: LimitCounters,
) {
    let (mut deadline, mut limit) = (head_deadline, Limit::HeaderReadTimeout);
    loop {
        let streams = *open.borrow_and_update();
        let changed = if streams == 0 {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    limits.hit(limit);
                    return;
                }
                changed = open.changed() => changed,
            }
        } else {
            open.changed().await
        };
        if changed.is_err() {
            // The executor is gone: the connection is ending anyway.
            return std::future::pending().await;
        }
        // A stream opened or closed: idleness counts from now.
        (deadline, limit) = (Instant::now() + keep_alive, Limit::KeepAliveTimeout);
    }
}

/// Runs each stream of one connection in a task of its own (see the module docs).
#[derive(Clone)]
struct StreamExec {
    tasks: TaskTracker,
    /// Open streams on this connection.
    open: Arc<watch::Sender<usize>>,
    /// Cancelled when the connection's task ends.
    gone: CancellationToken,
    /// `herald_h2_streams`: open streams on every connection.
    streams: IntGauge,
}

/// Counts one open stream for as long as it lives.
struct OpenStream {
    open: Arc<watch::Sender<usize>>,
    streams: IntGauge,
}

impl OpenStream {
    fn new(exec: &StreamExec) -> Self {
        exec.open.send_modify(|n| *n += 1);
        exec.streams.inc();
        Self {
            open: exec.open.clone(),
            streams: exec.streams.clone(),
        }
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
        self.streams.dec();
    }
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let open = OpenStream::new(self);
        let gone = self.gone.clone();
        let kill = CancellationToken::new();
        let task = STREAM.scope(kill.clone(), async move {
            let _open = open;
            tokio::pin!(fut);
            tokio::select! {
                biased;
                _ = &mut fut => {}
                () = gone.cancelled() => {}
                () = kill.cancelled() => {
                    // The stream is closing: its final event gets a moment to go out; dropping
                    // the stream afterwards resets it even if the client is not reading it.
                    let notice = tokio::time::timeout(transport::FINAL_NOTICE_DEADLINE, fut);
                    let _ = Box::pin(notice).await;
                }
            }
        });
        self.tasks.spawn(task);
    }
}
