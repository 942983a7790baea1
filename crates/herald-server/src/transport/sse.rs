//! `GET /v1/sse`: Server-Sent Events for an unmodified browser `EventSource`.
//!
//! The stream is a custom body that pulls straight from the connection's outbox, so an SSE
//! connection costs no task of its own. Subscriptions are live before the response headers are
//! sent: once `EventSource.onopen` fires, every later publish is delivered.
//!
//! Each event's `id:` is the stream's resume token (every channel's position), which the browser
//! sends back as `Last-Event-ID` when it reconnects, to any node.

use std::{
    collections::VecDeque,
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use herald_core::{ErrorCode, sse, token::ResumeToken};
use http_body_util::BodyExt;
use hyper::{
    Request, Response, StatusCode,
    body::{Frame, Incoming},
    header,
};
use tokio::time::{Instant, Sleep};

use super::{
    Connection,
    socket::{self, AsTcp},
};
use crate::{
    app::App,
    auth::credentials,
    http::{Body, query, refused},
    hub::{CloseReason, Delivery, Item, Sent, Wire},
    limits::{Peer, Permit},
};

/// Cancelling this drops the HTTP connection that carries an SSE stream: how a slow consumer
/// whose socket is full (so hyper no longer polls the body) is cut off. Set per connection by
/// the server.
#[derive(Clone, Default)]
pub struct ConnectionSignal(pub tokio_util::sync::CancellationToken);

pub async fn handle(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let token = credentials::from_request(&req, app.auth.cookie());
    let header_token = last_event_id(&req);
    let signal = req
        .extensions()
        .get::<ConnectionSignal>()
        .cloned()
        .unwrap_or_default();
    let permit = match admit(app, &req, false) {
        Ok(permit) => permit,
        Err(resp) => return resp,
    };
    let opened = open(
        app,
        req.uri().query(),
        header_token,
        token.as_deref(),
        Some(signal.0),
    );
    match opened.await {
        Ok(mut body) => {
            body.hold(permit);
            let mut resp = Response::new(body.boxed_unsync());
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
            h.insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
            *resp.status_mut() = StatusCode::OK;
            resp
        }
        Err(resp) => resp,
    }
}

/// The `Last-Event-ID` header: what EventSource sends when it reconnects (`Err`: not text).
pub fn last_event_id(req: &Request<Incoming>) -> Option<Result<String, ()>> {
    req.headers()
        .get("last-event-id")
        .map(|v| v.to_str().map(str::to_owned).map_err(|_| ()))
}

/// Admits a stream request served by hyper against the connection limits (see
/// [`crate::limits`]): the permit it holds, or the refusal to answer. `takes_socket`: the stream
/// outlives the HTTP connection (a WebSocket).
pub fn admit(
    app: &Arc<App>,
    req: &Request<Incoming>,
    takes_socket: bool,
) -> Result<Option<Permit>, Response<Body>> {
    // Every connection is served with its peer; a request without one is not from a socket.
    let Some(peer) = req.extensions().get::<Peer>().copied() else {
        return Ok(None);
    };
    let h = req.headers();
    let values = |name| h.get_all(name).into_iter().map(|v| v.as_bytes());
    app.connections
        .admit_stream(
            peer,
            values("x-forwarded-for"),
            values(header::FORWARDED.as_str()),
            takes_socket,
        )
        .map_err(refused)
}

/// Validates an SSE request and subscribes its channels: the stream to send, or the error
/// response. `header_token` is the `Last-Event-ID` header (`Err` when it is not text);
/// `subscriber_token` the client's JWT, if it sent one; `signal`, if any, is cancelled when the
/// stream's outbox closes (see [`ConnectionSignal`]; the direct path waits with
/// [`SseBody::closed`] instead).
pub async fn open(
    app: &Arc<App>,
    q: Option<&str>,
    header_token: Option<Result<String, ()>>,
    subscriber_token: Option<&str>,
    signal: Option<tokio_util::sync::CancellationToken>,
) -> Result<SseBody, Response<Body>> {
    let super::Opened { conn, who, .. } =
        super::open(app, "sse", q, header_token, subscriber_token, signal).await?;
    let heartbeat = app.config.sse_heartbeat;
    let envelope = query::first(q, "envelope").is_some_and(|v| matches!(&*v, "true" | "1"));
    let body = SseBody {
        preamble: true,
        conn,
        ids: IdsAt::Here(Ids {
            envelope,
            ..Ids::default()
        }),
        heartbeat: Box::pin(tokio::time::sleep(heartbeat)),
        expires: who
            .as_ref()
            .map(|c| Box::pin(tokio::time::sleep_until(app.auth.expires_at(c)))),
        shutdown: Some(Box::pin(app.shutdown.clone().cancelled_owned())),
        draining: false,
        done: false,
        batch: VecDeque::new(),
    };
    Ok(body)
}

/// Room reserved per message for its `id:` line (a one-channel token is ~40 bytes).
const ID_LINE_ESTIMATE: usize = 64;

thread_local! {
    /// The scratch an `id:` line is rendered in: one per thread, not one per stream (an idle
    /// stream would keep its last id's allocation), and no allocation per event.
    static ID_SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A stream's position in each channel, written as every event's `id:` line, and how the
/// stream renders messages.
#[derive(Default)]
pub struct Ids {
    token: ResumeToken,
    /// `?envelope=true`: each message's `data:` is its JSON object (channel, offset, sender,
    /// data) as WebSocket delivers it.
    envelope: bool,
}

impl Ids {
    /// Calls `f` with the token rendered as an `id:` value.
    fn with_id<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        ID_SCRATCH.with_borrow_mut(|id| {
            id.clear();
            self.token.write_to(id);
            let r = f(id);
            if id.capacity() > 4096 {
                // A token of many channels: not kept for the thread's lifetime.
                *id = String::new();
            }
            r
        })
    }
    /// The shared event a message is written as on this stream.
    fn event_of<'d>(&self, d: &'d Delivery) -> &'d Bytes {
        if self.envelope {
            d.sse_envelope()
        } else {
            d.sse_body()
        }
    }

    /// Room `item`'s event takes, roughly.
    fn size_hint(&self, item: &Item) -> usize {
        match item {
            Item::Message(d) => self.event_of(d).len() + ID_LINE_ESTIMATE,
            Item::Subscribed(_) => 256,
            Item::Raw(b) => b.len(),
        }
    }

    /// Appends `item`'s event to `out`, advancing the token; the message's publish time, if it
    /// is one.
    fn render(&mut self, item: &Item, out: &mut BytesMut) -> Option<u64> {
        match item {
            Item::Message(d) => {
                self.token
                    .advance(&d.msg.channel, &d.msg.epoch, d.msg.offset);
                self.with_id(|id| sse::id_line(out, id));
                out.extend_from_slice(self.event_of(d));
                return Some(d.msg.published_at_us);
            }
            Item::Subscribed(s) => {
                let data = format!(
                    r#"{{"channel":"{}","offset":{},"epoch":"{}","recovered":{}}}"#,
                    s.channel, s.position.offset, s.position.epoch, s.recovered
                );
                self.token.set(&s.channel, s.position.clone());
                self.with_id(|id| {
                    out.extend_from_slice(&sse::event(Some(id), "herald.subscribed", &data));
                });
            }
            Item::Raw(bytes) => out.extend_from_slice(bytes),
        }
        None
    }
}

/// Where a stream's [`Ids`] live: in its body, or in its socket when the hub writes to it
/// directly (both render events, one at a time: see [`crate::hub::outbox`]).
enum IdsAt {
    Here(Ids),
    Socket(Arc<SseSocket>),
}

/// An SSE stream's socket on the direct path: the hub renders each event with the stream's
/// `id:` line and writes it without waking the stream's task.
pub struct SseSocket {
    tcp: tokio::net::TcpStream,
    ids: parking_lot::Mutex<Ids>,
}

impl AsTcp for SseSocket {
    fn tcp(&self) -> &tokio::net::TcpStream {
        &self.tcp
    }
}

impl Wire for SseSocket {
    fn try_write(&self, item: Item) -> Sent {
        let mut ids = self.ids.lock();
        let mut out = BytesMut::with_capacity(ids.size_hint(&item));
        ids.render(&item, &mut out);
        drop(ids);
        let n = socket::try_write(&self.tcp, &out);
        if n == out.len() {
            return Sent::Whole;
        }
        // Rendered (the token moved on): what is left goes out as these bytes, in order.
        let rest = out.freeze().slice(n..);
        if n == 0 {
            Sent::Nothing(Item::raw(rest))
        } else {
            Sent::Rest(Item::raw(rest))
        }
    }

    fn transport(&self) -> &'static str {
        "sse"
    }
}

/// The event stream of one SSE connection.
pub struct SseBody {
    /// `retry:` is still to be sent first (rendered then: not held by every stream).
    preamble: bool,
    conn: Connection,
    /// This stream's position in each channel, written as every event's `id:`.
    ids: IdsAt,
    /// Fires after a quiet period; any write by this body resets it.
    heartbeat: Pin<Box<Sleep>>,
    /// Fires when the subscriber's token expires (only streams opened with a token have one).
    expires: Option<Pin<Box<Sleep>>>,
    /// Resolves when this stream's turn to close comes during a drain; `None` once it has.
    /// Resolves when the server begins to shut down; `None` once it has. The stream's turn to
    /// close then comes at a random moment in the drain window (`App::drained`), which the
    /// heartbeat timer is moved to: one timer fewer per stream (`App::drained`'s future is
    /// 144 B).
    shutdown: Option<Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>>,
    /// The heartbeat timer now times the stream's turn to close in the drain.
    draining: bool,
    /// The closing event was sent; the next poll ends the body.
    done: bool,
    /// The outbox's items are swapped into this buffer (kept: no allocation per batch).
    batch: VecDeque<Item>,
}

impl SseBody {
    /// Keeps the stream's connection-limit permit for as long as it runs.
    pub fn hold(&mut self, permit: Option<Permit>) {
        self.conn.hold(permit);
    }

    /// Ready once the stream's outbox is closed: for the task writing the stream while a
    /// write blocks (see [`crate::hub::Outbox::closed`]).
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.conn.outbox.poll_closed(cx)
    }

    /// The `retry:` line, for a caller that writes it with the response head.
    pub fn take_preamble(&mut self) -> Option<Bytes> {
        std::mem::take(&mut self.preamble)
            .then(|| sse::retry(self.conn.app.config.sse_retry.as_millis() as u64))
    }

    /// Moves the stream onto `tcp` for direct writes by the hub: call once the response head
    /// and the preamble are written. Returns the socket, for the caller's reads and writes.
    pub fn attach_socket(&mut self, tcp: tokio::net::TcpStream) -> Arc<SseSocket> {
        let ids = match std::mem::replace(&mut self.ids, IdsAt::Here(Ids::default())) {
            IdsAt::Here(ids) => ids,
            IdsAt::Socket(s) => std::mem::take(&mut *s.ids.lock()),
        };
        let socket = Arc::new(SseSocket {
            tcp,
            ids: parking_lot::Mutex::new(ids),
        });
        self.ids = IdsAt::Socket(socket.clone());
        self.conn.outbox.attach(socket.clone());
        socket
    }

    /// Renders the events of `self.batch` (emptying it) into one buffer; returns it with the
    /// message count and the oldest message's publish time, for metrics.
    fn render(&mut self) -> (BytesMut, u64, Option<u64>) {
        let mut on_socket;
        let ids = match &mut self.ids {
            IdsAt::Here(ids) => ids,
            IdsAt::Socket(s) => {
                on_socket = s.ids.lock();
                &mut *on_socket
            }
        };
        let size: usize = self.batch.iter().map(|item| ids.size_hint(item)).sum();
        let mut out = BytesMut::with_capacity(size);
        let (mut messages, mut oldest) = (0u64, None);
        for item in self.batch.drain(..) {
            if let Some(at) = ids.render(&item, &mut out) {
                messages += 1;
                oldest.get_or_insert(at);
            }
        }
        if self.batch.capacity() > 16 {
            self.batch = VecDeque::new();
        }
        (out, messages, oldest)
    }

    fn closing_event(reason: CloseReason) -> Bytes {
        let (event, code, message) = match reason {
            CloseReason::SlowConsumer => (
                "herald.error",
                ErrorCode::SlowConsumer,
                "the stream fell too far behind; reconnect to resume",
            ),
            CloseReason::Shutdown => (
                "herald.reconnect",
                ErrorCode::Draining,
                "this node is shutting down; reconnect",
            ),
            CloseReason::TokenExpired => (
                "herald.error",
                ErrorCode::TokenExpired,
                "the token has expired; reconnect with a new token",
            ),
            CloseReason::Closed { reason, .. } => ("herald.error", ErrorCode::Internal, reason),
        };
        let data = format!(r#"{{"code":"{}","message":"{}"}}"#, code.as_str(), message);
        sse::event(None, event, &data)
    }

    fn reset_heartbeat(&mut self) {
        if self.draining {
            // The timer times the drain now (see `shutdown`).
            return;
        }
        let next = Instant::now() + self.conn.app.config.sse_heartbeat;
        self.heartbeat.as_mut().reset(next);
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(p) = this.take_preamble() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        if let Some(shutdown) = this.shutdown.as_mut()
            && shutdown.as_mut().poll(cx).is_ready()
        {
            this.shutdown = None;
            this.draining = true;
            let turn = Instant::now() + this.conn.app.drain_delay();
            this.heartbeat.as_mut().reset(turn);
        }
        if let Some(expires) = this.expires.as_mut()
            && expires.as_mut().poll(cx).is_ready()
        {
            this.expires = None;
            this.conn.outbox.close(CloseReason::TokenExpired);
        }
        loop {
            if let Poll::Ready(closed) = this.conn.outbox.poll_take(cx, &mut this.batch) {
                // Counted when handed to hyper: the socket write follows without further queueing.
                let (mut out, messages, oldest) = this.render();
                this.conn.app.metrics.wrote("sse", messages, oldest);
                if let Some(reason) = closed {
                    out.extend_from_slice(&Self::closing_event(reason));
                    this.done = true;
                }
                this.reset_heartbeat();
                return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
            }
            if this.heartbeat.as_mut().poll(cx).is_ready() {
                if this.draining {
                    // The stream's turn to close: the closing event follows at once.
                    this.draining = false;
                    this.conn.outbox.close(CloseReason::Shutdown);
                    continue;
                }
                this.reset_heartbeat();
                // Through the outbox like every write, so it never interleaves with an event
                // the hub is writing to the socket itself.
                this.conn
                    .outbox
                    .push(Item::raw(Bytes::from_static(sse::HEARTBEAT)));
                continue;
            }
            // Nothing queued: the stream idles, and does not keep its batch buffer meanwhile
            // (a busy stream keeps it from batch to batch; see `Outbox::poll_take`).
            if this.batch.capacity() != 0 {
                this.batch = VecDeque::new();
            }
            return Poll::Pending;
        }
    }
}
