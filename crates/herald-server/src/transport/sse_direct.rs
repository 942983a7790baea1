//! SSE without hyper on a fresh connection: the idle-memory fast path.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer for as long as an HTTP/1
//! connection lives, which would be most of what an idle SSE subscriber costs. An SSE stream never
//! serves another request on its connection, so when the first request on a connection is a
//! plain `GET /v1/sse` head ([`crate::http::head`] says which heads qualify: none that hyper
//! could read differently), it is validated and subscribed exactly like the hyper route
//! ([`super::sse::open`]); then the head is consumed and the same [`SseBody`] is written straight
//! to the socket, delimited by closing the connection; an error `open` returns is written here
//! too (hyper would run the same `open` again).
//!
//! The open stream runs in a task of its own ([`SseStream::run`]), sized by what an idle stream
//! holds: a task is as large as the largest state of its future, and the connection task that
//! peeked the head, admitted and subscribed it is several times larger (an idle stream cost
//! 3,200 B of task in the connection task, docs/benchmarks.md). Anything else is left untouched in the socket for
//! hyper to serve, except a head hyper would refuse outright, which is answered here with a JSON
//! error (hyper's own answer has no body).

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::{Response, body::Body as _};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, Sleep},
};

use super::{
    FINAL_NOTICE_DEADLINE,
    socket::{self, AsTcp},
    sse::{self, SseBody, SseSocket},
};
use crate::{
    app::App,
    auth::credentials,
    conn::Protocol,
    http::{
        Body,
        cors::Verdict,
        head::{self, Head},
    },
    limits::{Limit, Peer, Permit, refuse},
};

/// Largest request head looked at; a longer one goes to hyper.
const PEEK: usize = 4096;

/// How long to wait before looking again at an HTTP/2 preface that has only partly arrived.
const PARTIAL_PREFACE_WAIT: Duration = Duration::from_millis(5);

/// The least time a connection accepted just before a drain has to send its first request.
const DRAIN_GRACE_FOR_NEW: Duration = Duration::from_secs(1);

/// The response head without its end: CORS lines follow.
const RESPONSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n";

/// What [`try_serve`] made of a fresh connection.
pub enum Direct {
    /// Not an SSE subscription: hyper serves it, in the HTTP version its first bytes speak.
    Hyper(TcpStream, Protocol),
    /// An SSE stream, subscribed: run it ([`SseStream::run`]) in a task of its own.
    Stream(SseStream),
    /// Answered (an error) or closed.
    Done,
}

/// Serves `stream` if its first request is an SSE subscription ([`Direct::Stream`]: subscribed,
/// to be run), answers it if hyper would refuse its head (with a JSON error instead of hyper's
/// empty 400); otherwise hands it back with the HTTP version its first bytes speak (the HTTP/2
/// preface: h2 with prior knowledge). Also [`Direct::Done`] when no byte arrived before
/// `head_deadline` (`header_read_timeout`): the socket is closed.
pub async fn try_serve(
    app: &Arc<App>,
    stream: TcpStream,
    peer: Peer,
    head_deadline: Instant,
) -> Direct {
    let head = tokio::select! {
        head = tokio::time::timeout_at(head_deadline, peek_head(&stream)) => match head {
            Ok(head) => head,
            Err(_) => {
                // Not a byte before the deadline: a silent socket.
                app.metrics.limits.hit(Limit::HeaderReadTimeout);
                return Direct::Done;
            }
        },
        // A connection with no request yet does not hold up a drain, but it may be one a client
        // opened just before the drain began and is about to use: it gets the same chance as an
        // idle keep-alive connection, its own moment in the drain window (at least a second).
        () = idle_until_drained(app) => return Direct::Done,
    };
    let req = match head {
        Head::Sse(req) => req,
        Head::Malformed { status, message } => {
            app.metrics
                .http_requests
                .with_label_values(&["other", &status.to_string()])
                .inc();
            // Boxed: rare, and inline its buffers would size every connection's task.
            let response = head::malformed_response(status, &message);
            Box::pin(refuse::write_and_close(stream, &response)).await;
            return Direct::Done;
        }
        Head::Http2 if app.config.http2 => return Direct::Hyper(stream, Protocol::Http2),
        Head::Other | Head::Http2 | Head::PartialHttp2 => {
            return Direct::Hyper(stream, Protocol::Http1);
        }
    };
    // A refused origin is left to hyper, which reads the same request again and answers it.
    let listing = !app.config.allowed_origins.is_any();
    let cors = app
        .config
        .allowed_origins
        .check(req.origin.as_deref(), req.host.as_deref());
    if matches!(cors, Verdict::Refused) {
        return Direct::Hyper(stream, Protocol::Http1);
    }
    let permit = match app.connections.admit_stream(
        peer,
        req.forwarded_for.iter().map(Vec::as_slice),
        req.forwarded.iter().map(Vec::as_slice),
        false,
    ) {
        Ok(permit) => permit,
        // Answered here like a socket refused at accept: asking hyper to refuse it again would
        // count the refusal twice.
        Err(refusal) => {
            let response = refuse::response(refusal);
            Box::pin(refuse::write_and_close(stream, &response)).await;
            return Direct::Done;
        }
    };
    let token = credentials::find_token(
        || {
            req.credentials
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
        },
        req.query.as_deref(),
        app.auth.cookie(),
    );
    let opened = sse::open(
        app,
        req.query.as_deref(),
        req.last_event_id,
        token.as_deref(),
        // No cancellation token: the stream's task waits with `SseBody::closed`.
        None,
    );
    // Boxed: the connection task (every connection's, while its first request is read) would
    // otherwise be sized by the subscribe it holds.
    let mut body = match Box::pin(opened).await {
        Ok(body) => body,
        // Answered here, not by handing the request to hyper: hyper would run the same `open`
        // again, and an error that took time (a broker timeout) would be waited for twice.
        Err(mut resp) => {
            cors.decorate(resp.headers_mut(), listing);
            Box::pin(answer(app, stream, req.head_len, resp)).await;
            return Direct::Done;
        }
    };
    body.hold(permit);
    app.metrics
        .http_requests
        .with_label_values(&["sse", "200"])
        .inc();
    // Redacted by the log writer, like every URI.
    tracing::debug!(
        query = req.query.as_deref().unwrap_or(""),
        "SSE stream (direct)"
    );
    let head = format!("{RESPONSE_HEAD}{}\r\n", cors.head_lines(listing));
    Direct::Stream(SseStream {
        stream,
        head_len: req.head_len,
        response_head: head.into_bytes(),
        body: Box::new(body),
    })
}

/// Writes `resp` (an error `open` produced: a small JSON body) after consuming the request
/// head, and closes the connection.
async fn answer(app: &Arc<App>, mut stream: TcpStream, head_len: usize, resp: Response<Body>) {
    let status = resp.status();
    app.metrics
        .http_requests
        .with_label_values(&["sse", status.as_str()])
        .inc();
    let (parts, body) = resp.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes());
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in &parts.headers {
        if let Ok(value) = value.to_str() {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    let mut request = vec![0u8; head_len];
    if stream.read_exact(&mut request).await.is_ok() {
        refuse::write_and_close(stream, &out).await;
    }
}

async fn idle_until_drained(app: &Arc<App>) {
    let drained = app.drained();
    app.shutdown.cancelled().await;
    tokio::join!(drained, tokio::time::sleep(DRAIN_GRACE_FOR_NEW));
}

/// Classifies the first bytes of `stream` without consuming them. The caller bounds the wait.
pub async fn peek_head(stream: &TcpStream) -> Head {
    loop {
        // On the heap and dropped before anything else is awaited: the connection task keeps
        // none of it.
        let mut buf = vec![0u8; PEEK];
        let head = match stream.peek(&mut buf).await {
            Ok(n) => head::classify(&buf[..n]),
            Err(_) => Head::Other,
        };
        drop(buf);
        if head != Head::PartialHttp2 {
            return head;
        }
        // The preface came in pieces (rare: clients send it in one write). A peek returns at
        // once while any byte is unread, so wait a moment for the rest rather than spin.
        tokio::time::sleep(PARTIAL_PREFACE_WAIT).await;
    }
}

/// A subscribed SSE stream whose request head is still in the socket.
pub struct SseStream {
    stream: TcpStream,
    head_len: usize,
    response_head: Vec<u8>,
    /// Boxed: an async fn keeps a copy of its arguments beside the locals it moves them into,
    /// and the body is the largest of them.
    body: Box<SseBody>,
}

impl SseStream {
    /// Consumes the request head, writes the response head and streams until either side ends
    /// it. `permit`, the connection's, is held until then (by [`Streaming`]).
    ///
    /// This future is what an idle SSE connection costs besides its outbox and socket, so it
    /// holds the [`Streaming`] state inline (the body included: one allocation fewer) and
    /// whatever only the start or the end needs (the head buffers, the end-of-stream timeouts)
    /// is on the heap while it is needed. (Not an `async fn`: that would keep a second copy of
    /// its arguments beside the locals it moves them into, rust-lang/rust#62958.)
    #[allow(clippy::manual_async_fn)]
    pub fn run(self, permit: Permit) -> impl Future<Output = ()> + Send + 'static {
        // Boxed, and made before the task's future, which therefore holds a pointer, not the
        // stream's parts (what a future captures it keeps until it ends).
        let start = Box::pin(self.start(permit));
        async move {
            let Some(mut streaming) = start.await else {
                return;
            };
            if (&mut streaming).await {
                let _ = socket::shutdown_write(streaming.socket.tcp());
                // Wait for the client to hang up (or the deadline): closing with its bytes
                // unread would reset the connection, and a reset can destroy the closing event
                // before it is read.
                let gone = std::future::poll_fn(|cx| streaming.poll_gone(cx));
                let _ = Box::pin(tokio::time::timeout(FINAL_NOTICE_DEADLINE, gone)).await;
            }
        }
    }

    /// Consumes the request head and writes the response head with the preamble; then the hub
    /// writes events to the socket itself while the stream is idle, and the stream's task writes
    /// only what was queued (see `hub::outbox`). `None`: the client went.
    async fn start(mut self, permit: Permit) -> Option<Streaming> {
        let mut head = vec![0u8; self.head_len];
        if let Some(preamble) = self.body.take_preamble() {
            self.response_head.extend_from_slice(&preamble);
        }
        if self.stream.read_exact(&mut head).await.is_err()
            || self.stream.write_all(&self.response_head).await.is_err()
        {
            return None;
        }
        let mut body = *self.body;
        let socket = body.attach_socket(self.stream);
        Some(Streaming {
            body,
            socket,
            pending: Bytes::new(),
            deadline: None,
            _permit: permit,
        })
    }
}

/// An open SSE stream on its socket, written by hand as a future so that an idle stream's task
/// holds only this: its body, its socket and the frame being written. Ready with `true` when
/// the body ended (its closing event is written), `false` when the client hung up or a write
/// failed or timed out.
struct Streaming {
    body: SseBody,
    socket: Arc<SseSocket>,
    /// What is left to write of the body's current frame.
    pending: Bytes,
    /// Set when the stream closed (it overflowed, or the server drains) while `pending` was
    /// blocked: a peer that stopped reading gets the notice deadline to take the frame.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The connection's, held until the stream ends.
    _permit: Permit,
}

impl Streaming {
    /// Ready when the peer closes its side (or the socket fails); reads and ignores anything it
    /// sends. The client sends nothing more, so EOF means it hung up (as hyper would notice by
    /// reading), found at once instead of at the next heartbeat.
    fn poll_gone(&self, cx: &mut Context<'_>) -> Poll<()> {
        let tcp = self.socket.tcp();
        let mut byte = [0u8; 1];
        loop {
            match tcp.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) => {}
            }
            match tcp.try_read(&mut byte) {
                Ok(1..) => {}
                // Readiness was stale; `try_read` cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Ok(0) | Err(_) => return Poll::Ready(()),
            }
        }
    }

    /// Writes what is left of `pending`; ready once all of it is written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let tcp = self.socket.tcp();
        while !self.pending.is_empty() {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_write(&self.pending) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.pending.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        // The frame's buffer, not kept while the stream idles (an advanced `Bytes` keeps it).
        self.pending = Bytes::new();
        Poll::Ready(Ok(()))
    }
}

impl Future for Streaming {
    type Output = bool;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<bool> {
        let this = &mut *self;
        if this.poll_gone(cx).is_ready() {
            return Poll::Ready(false);
        }
        loop {
            match this.poll_write(cx) {
                Poll::Ready(Ok(())) => this.deadline = None,
                Poll::Ready(Err(_)) => return Poll::Ready(false),
                Poll::Pending => {
                    // A write blocked on a peer that stopped reading while the stream closes:
                    // it gets the deadline to finish (whole events), then the closing event
                    // follows under a deadline of its own.
                    if this.deadline.is_none() && this.body.poll_closed(cx).is_ready() {
                        this.deadline = Some(Box::pin(tokio::time::sleep(FINAL_NOTICE_DEADLINE)));
                    }
                    if let Some(deadline) = this.deadline.as_mut()
                        && deadline.as_mut().poll(cx).is_ready()
                    {
                        return Poll::Ready(false);
                    }
                    return Poll::Pending;
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        this.pending = data;
                    }
                }
                Poll::Ready(None | Some(Err(_))) => return Poll::Ready(true),
            }
        }
    }
}
