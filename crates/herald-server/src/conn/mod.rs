//! One client connection from accept to close: the TLS handshake (when the node has a
//! certificate), which HTTP version it speaks, and serving it with hyper.
//!
//! - **Plain TCP**: the first bytes are peeked ([`transport::sse_direct`]): a plain SSE head is
//!   served by the fast path, the HTTP/2 connection preface goes to the HTTP/2 server (prior
//!   knowledge, "h2c"), anything else to the HTTP/1.1 server.
//! - **TLS**: ALPN decides: `h2` is served by the HTTP/2 server, anything else (`http/1.1`, or
//!   no ALPN) by the HTTP/1.1 server. There is no SSE fast path over TLS (it would have to
//!   decrypt the head to look at it); SSE over TLS goes through hyper.
//!
//! Every connection holds its [`Permit`] until it ends, and one deadline fixed at accept
//! (`header_read_timeout`) bounds the TLS handshake and then the first request head (HTTP/1.1)
//! or the first stream (HTTP/2).
//!
//! A task is as large as the largest state of its future, so a connection that becomes an idle
//! stream does not stay in this task: an SSE stream on the fast path runs in a task of its own
//! ([`sse_direct::SseStream::run`]) and this one ends, like hyper's connection task ends when it
//! hands a WebSocket over. The TLS handshake and the hyper servers are boxed, so the states a
//! connection passes through on its way are not sized by an HTTP/2 connection it never uses.

mod h1;
mod h2;

use std::{convert::Infallible, sync::Arc};

use hyper::{Request, Response, body::Incoming, header};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    time::Instant,
};

use crate::{
    app::App,
    http::{self, Body, head::Head},
    limits::{Limit, Peer, Permit, refuse},
    tls::Tls,
    transport::sse_direct::{self, Direct},
};

/// The HTTP version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    /// The `protocol` label of `herald_http_connections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Http2 => "h2",
        }
    }
}

/// What serving one connection needs to know about it.
struct Conn {
    app: Arc<App>,
    peer: Peer,
    /// `header_read_timeout` after accept.
    head_deadline: Instant,
    /// Accepted during the drain: serve what it asks at once, then close.
    draining: bool,
}

/// Serves one accepted TCP connection (see the module docs). `draining`: accepted during the
/// drain, so it serves one request without keep-alive instead of being told to shut down before
/// its first request.
pub async fn serve(
    app: Arc<App>,
    tls: Option<Arc<Tls>>,
    stream: TcpStream,
    permit: Permit,
    head_deadline: Instant,
    draining: bool,
) {
    let _ = stream.set_nodelay(true);
    let conn = Conn {
        peer: permit.peer(),
        app,
        head_deadline,
        draining,
    };
    match tls {
        Some(tls) => {
            let failures = &conn.app.metrics.tls_handshake_failures;
            if speaks_plain_http(&stream, head_deadline).await {
                failures.with_label_values(&["plain_http"]).inc();
                let response = http::head::malformed_response(
                    400,
                    "this port speaks TLS: use https:// (wss:// for WebSocket)",
                );
                // Boxed: rare, and inline its buffers would size every connection's task.
                Box::pin(refuse::write_and_close(stream, &response)).await;
                return;
            }
            let handshake = Box::pin(tls.handshake(stream, head_deadline, failures));
            let Some((stream, protocol)) = handshake.await else {
                return;
            };
            Box::pin(conn.serve(TokioIo::new(stream), protocol, true)).await;
        }
        None => {
            let served = if draining {
                sniff(&conn.app, stream, head_deadline).await
            } else {
                sse_direct::try_serve(&conn.app, stream, conn.peer, head_deadline).await
            };
            match served {
                Direct::Hyper(stream, protocol) => {
                    Box::pin(conn.serve(TokioIo::new(stream), protocol, false)).await;
                }
                // A task of its own, sized for an idle stream; this one, sized for everything a
                // connection may need on its way there, ends.
                Direct::Stream(sse) => {
                    conn.app.tasks.spawn(sse.run(permit));
                    return;
                }
                Direct::Done => {}
            }
        }
    }
    drop(permit);
}

/// Whether a client sent a plain-text HTTP request to the TLS port (its first byte is a
/// method's letter, where a TLS client sends a handshake record, 0x16): it gets a JSON answer
/// saying so instead of a closed connection. Anything else is the handshake's to judge.
async fn speaks_plain_http(stream: &TcpStream, head_deadline: Instant) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout_at(head_deadline, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0].is_ascii_uppercase()
    )
}

/// The HTTP version of a plain connection accepted during the drain (no SSE fast path then:
/// new streams are refused anyway).
async fn sniff(app: &App, stream: TcpStream, head_deadline: Instant) -> Direct {
    match tokio::time::timeout_at(head_deadline, sse_direct::peek_head(&stream)).await {
        Ok(Head::Http2) if app.config.http2 => Direct::Hyper(stream, Protocol::Http2),
        Ok(_) => Direct::Hyper(stream, Protocol::Http1),
        Err(_) => {
            app.metrics.limits.hit(Limit::HeaderReadTimeout);
            Direct::Done
        }
    }
}

impl Conn {
    async fn serve<I>(self, io: TokioIo<I>, protocol: Protocol, tls: bool)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls_label = if tls { "true" } else { "false" };
        self.app
            .metrics
            .http_connections
            .with_label_values(&[protocol.label(), tls_label])
            .inc();
        // The drain may have begun while the first request was awaited: serve that one and close.
        let draining = self.draining || self.app.is_draining();
        match protocol {
            Protocol::Http1 => h1::serve(&self, io, draining).await,
            Protocol::Http2 => h2::serve(&self, io, draining).await,
        }
    }
}

/// Answers one request (both HTTP versions).
async fn respond(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let http1 = req.version() < hyper::Version::HTTP_2;
    let mut resp = http::handle(app.clone(), req).await?;
    // Keep-alive HTTP/1.1 clients (and load balancers) leave a draining node after this response
    // instead of racing its idle-connection close with their next request. (HTTP/2 has GOAWAY,
    // and no `Connection` header.)
    if http1 && app.is_draining() && resp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    Ok(resp)
}
