//! HTTP/1.1 connections, plain or over TLS.

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Conn;
use crate::{
    limits::{Limit, timer::HeadTimer},
    transport::{self, sse::ConnectionSignal},
};

/// Serves HTTP/1.1 on `io` until the client or the drain ends it. hyper's HTTP/1 connection hands
/// WebSocket upgrades back as the bare stream (see `transport::ws`).
pub(super) async fn serve<I>(conn: &Conn, io: TokioIo<I>, draining: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = &conn.app;
    let peer = conn.peer;
    let service_app = app.clone();
    // An SSE stream on this connection cancels it when its outbox closes (see below).
    let kill = tokio_util::sync::CancellationToken::new();
    let signal = ConnectionSignal(kill.clone());
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(signal.clone());
        req.extensions_mut().insert(peer);
        super::respond(service_app.clone(), req)
    });
    // hyper enforces the header read timeout only with a timer; ours also makes it the
    // keep-alive idle timeout after the first request (see `limits::timer`).
    let counters = &app.metrics.limits;
    let timer = HeadTimer::new(
        conn.head_deadline,
        app.config.keep_alive_timeout,
        counters.get(Limit::HeaderReadTimeout).clone(),
        counters.get(Limit::KeepAliveTimeout).clone(),
    );
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(!draining)
        .timer(timer)
        .header_read_timeout(app.config.header_read_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(http);
    tokio::select! {
        // The connection first: its first request is already in the socket (peeked above), and
        // being polled reads it, so a drain moment that has already passed lets that request be
        // answered instead of closing the connection under it.
        biased;
        res = http.as_mut() => {
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
            let _ = tokio::time::timeout(transport::FINAL_NOTICE_DEADLINE, http.as_mut()).await;
            return;
        }
    }
    // Let the in-flight request (or the SSE stream, which ends itself during the drain) finish.
    http.as_mut().graceful_shutdown();
    if let Err(e) = http.await {
        tracing::debug!(error = %e, "connection ended with error during shutdown");
    }
}
