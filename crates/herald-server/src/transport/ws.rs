//! `GET /v1/ws`: the WebSocket transport.
//!
//! fastwebsockets performs the handshake (inside hyper); then one task serves the connection.
//! It waits in one `select!` for its outbox, its timers and the next client frame: frames are
//! read by [`frame::FrameReader`], which keeps every byte it read in itself and so loses nothing
//! when the `select!` drops a pending read (fastwebsockets' `read_frame` is not cancel-safe and
//! would need a task of its own). Server frames are unmasked and trivial to encode, so the task
//! takes everything queued in the outbox and writes the shared, pre-encoded frames with one
//! vectored write; while the hub finds the connection idle it writes to the socket itself
//! (`hub::outbox`).

pub(crate) mod frame;
mod reader;
mod session;

use std::{collections::VecDeque, io::IoSlice, pin::Pin, sync::Arc};

use bytes::Bytes;
use fastwebsockets::upgrade;
use herald_core::{
    ChannelName, ErrorCode,
    protocol::{self, Opcode},
};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Sleep,
};
use tokio_rustls::server::TlsStream;

use self::{
    frame::{FrameReader, ReadError},
    reader::{Next, Reader},
    session::Session,
};
use super::{
    Connection,
    socket::{self, AsTcp, ReadHalf, WriteHalf},
};
use crate::{
    app::App,
    auth::{Identity, credentials},
    http::{Body, error, full},
    hub::{CloseReason, Item, Sent, SubscribeError, Wire, outbox::Subscribed},
    limits::{Limit, Permit},
};

/// Close codes (documented in docs/api.md).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const RESTART: u16 = 1012;
    pub const SLOW_CONSUMER: u16 = 4000;
    pub const PING_TIMEOUT: u16 = 4001;
    /// The client kept sending faster than `ws_message_rate` or `ws_publish_rate` allow.
    pub const RATE_LIMITED: u16 = 4029;
    /// The token expired, or the connection never authenticated: reconnect with a (new) token.
    pub const UNAUTHORIZED: u16 = 4401;
    /// The token presented is not valid: do not retry with it.
    pub const FORBIDDEN: u16 = 4403;
}

pub fn handle(app: &Arc<App>, mut req: Request<Incoming>) -> Response<Body> {
    if !upgrade::is_upgrade_request(&req) {
        return error(
            ErrorCode::BadRequest,
            "this endpoint needs a WebSocket upgrade",
        );
    }
    if app.is_draining() {
        return error(ErrorCode::Draining, "this node is draining; reconnect");
    }
    let channels = match super::query_channels(app, req.uri().query()) {
        Ok(channels) => channels,
        Err(r) => return error(r.code, &r.message),
    };
    // The WebSocket outlives this HTTP connection's task, so its permit counts the socket too.
    let permit = match super::sse::admit(app, &req, true) {
        Ok(permit) => permit,
        Err(resp) => return resp,
    };
    // A token sent with the upgrade is checked before it, like `?channel=`: a refused client
    // gets an HTTP error instead of a socket. Without one, the client may send the `auth` op.
    let token = credentials::from_request(&req, app.auth.cookie());
    let who = match app.auth.identify(token.as_deref()) {
        Ok(who) => who,
        Err(refusal) => return refusal.response(),
    };
    for channel in &channels {
        if let Err(refusal) = app.auth.check_read(who.as_deref(), channel) {
            return refusal.response();
        }
    }
    let (resp, fut) = match upgrade::upgrade(&mut req) {
        Ok(pair) => pair,
        Err(e) => {
            return error(
                ErrorCode::BadRequest,
                &format!("WebSocket handshake failed: {e}"),
            );
        }
    };
    let task_app = app.clone();
    app.tasks.spawn(async move {
        match fut.await {
            Ok(ws) => {
                serve(
                    task_app,
                    ws.into_inner().into_inner(),
                    channels,
                    who,
                    permit,
                )
                .await
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let (parts, _empty) = resp.into_parts();
    Response::from_parts(parts, full(Bytes::new()))
}

/// How long a client may stay silent (ms) before the ping timeout closes it.
fn ping_deadline_ms(app: &App) -> u64 {
    (app.config.ws_ping_interval + app.config.ws_ping_timeout).as_millis() as u64
}

/// Milliseconds since `start`: cheap "last heard from the client" clock.
fn elapsed_ms(start: tokio::time::Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

async fn serve(
    app: Arc<App>,
    upgraded: hyper::upgrade::Upgraded,
    channels: Vec<ChannelName>,
    who: Option<Identity>,
    permit: Option<Permit>,
) {
    match halves(upgraded) {
        Some(Halves::Plain(early, socket)) => {
            let (read, write) = (ReadHalf(socket.clone()), WriteHalf(socket.clone()));
            let wire: Arc<dyn Wire> = socket;
            session(app, (early, read), write, Some(wire), channels, who, permit).await;
        }
        // Boxed: rarer, and its future would otherwise size every plain WebSocket's task. No
        // direct writes: a TLS record cannot be written from the hub without the session's lock.
        Some(Halves::Tls(early, read, write)) => {
            Box::pin(session(
                app,
                (early, read),
                write,
                None,
                channels,
                who,
                permit,
            ))
            .await;
        }
        None => tracing::error!("WebSocket upgrade on an unexpected IO type"),
    }
}

/// The two halves of an upgraded connection, and the bytes hyper read past the handshake.
enum Halves {
    /// The bare socket, shared by the reader, the writer and the hub's direct writes (see
    /// `hub::outbox`); nothing of hyper's buffers stays allocated for the life of the connection.
    Plain(Bytes, Arc<WsSocket>),
    /// Over TLS the halves share the TLS session (a lock per read or write).
    Tls(
        Bytes,
        tokio::io::ReadHalf<TlsStream<TcpStream>>,
        tokio::io::WriteHalf<TlsStream<TcpStream>>,
    ),
}

fn halves(upgraded: hyper::upgrade::Upgraded) -> Option<Halves> {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(hyper::upgrade::Parts { io, read_buf, .. }) => {
            return Some(Halves::Plain(read_buf, Arc::new(WsSocket(io.into_inner()))));
        }
        Err(upgraded) => upgraded,
    };
    let hyper::upgrade::Parts { io, read_buf, .. } =
        upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>().ok()?;
    let (read, write) = tokio::io::split(io.into_inner());
    Some(Halves::Tls(read_buf, read, write))
}

/// Sets up a WebSocket on the two halves of its stream, then hands it to a task of its own
/// ([`Ws::serve`]) and returns. `read_buf` holds bytes the client sent right after the
/// handshake, which hyper has already read; `wire`, the socket for the hub's direct writes, when
/// it can take them.
///
/// A task is as large as the largest state of its future, and a future keeps its arguments for
/// its whole life: the task that waited for the upgrade and subscribed (with the channels, the
/// identity, the permit and hyper's leftovers as arguments at each level) cost an idle
/// connection 1,720 B. The connection's own task holds only [`Ws`] and its loop.
async fn session<R, W>(
    app: Arc<App>,
    (read_buf, read): (Bytes, R),
    write: W,
    wire: Option<Arc<dyn Wire>>,
    channels: Vec<ChannelName>,
    who: Option<Identity>,
    permit: Option<Permit>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    // Copied out and dropped: the `Bytes` is a view of hyper's whole 8 KiB read buffer and would
    // keep it alive.
    let early = read_buf.to_vec();
    drop(read_buf);
    let frames = FrameReader::with_early(read, early, app.config.max_ws_frame_bytes);

    // No cancellation token: the task waits for the outbox to close with `Outbox::closed`.
    let mut conn = Connection::new(&app, "ws", None);
    conn.hold(permit);
    // hyper wrote the handshake response before handing the socket over: frames may follow.
    if let Some(wire) = wire {
        conn.outbox.attach(wire);
    }
    for channel in channels {
        // Boxed so the connection task's idle state is not sized by the subscribe future.
        Box::pin(subscribe(&app, &conn, channel, None, None, who.as_deref())).await;
    }
    let clock = tokio::time::Instant::now();
    let reader = Reader::new(&app, Session::start(&app, who, clock));
    let ws = Ws {
        app: app.clone(),
        conn,
        frames,
        write,
        reader,
    };
    app.tasks.spawn(ws.serve());
}

/// A WebSocket that is set up: everything its task holds.
struct Ws<R, W> {
    app: Arc<App>,
    conn: Connection,
    frames: FrameReader<R>,
    write: W,
    reader: Reader,
}

impl<R, W> Ws<R, W>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    /// Serves the connection until it ends. (Not an `async fn`: that would keep a second copy
    /// of `self` in its future, rust-lang/rust#62958.)
    #[allow(clippy::manual_async_fn)]
    fn serve(mut self) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let Self {
                app,
                conn,
                frames,
                write,
                reader,
            } = &mut self;
            let read_end = run(app, conn, frames, write, reader).await;
            // The end-of-connection timeouts are boxed: a timer is ~120 B and, unboxed, every
            // idle connection's task would carry the space for each of them.
            let _ = Box::pin(tokio::time::timeout(
                super::FINAL_NOTICE_DEADLINE,
                write.shutdown(),
            ))
            .await;
            // Keep reading until the client answers the close (or the deadline): a socket closed
            // with unread input is reset, and a reset can destroy the close frame before the
            // client reads it.
            match read_end {
                // The server closed: the client's close frame (or its hanging up) ends it.
                None => {
                    let answer = async {
                        while let Ok(frame) = frames.read().await {
                            if frame.opcode == frame::CLOSE {
                                break;
                            }
                        }
                    };
                    let _ =
                        Box::pin(tokio::time::timeout(super::FINAL_NOTICE_DEADLINE, answer)).await;
                }
                // The read side closed it for a fault of the client's: drop what it still sends.
                Some(code) if code != close::NORMAL => {
                    let discard = frames.discard_until_eof();
                    let _ = Box::pin(tokio::time::timeout(reader::CLOSE_LINGER, discard)).await;
                }
                // The client closed, or is gone.
                Some(_) => {}
            }
        }
    }
}

/// Subscribes (and, in a room, enters it as `who`) and reports failures to the client as error
/// frames.
pub async fn subscribe(
    app: &App,
    conn: &Connection,
    channel: ChannelName,
    since: Option<herald_core::StreamPosition>,
    id: Option<u64>,
    who: Option<&herald_core::auth::Claims>,
) {
    if conn.is_subscribed(&channel) {
        send_error(
            conn,
            id,
            ErrorCode::BadRequest,
            &format!("already subscribed to {channel}"),
        );
        return;
    }
    if conn.channel_count() >= app.config.max_channels_per_connection {
        app.metrics.limits.hit(Limit::MaxChannelsPerConnection);
        let msg = format!(
            "at most {} channels per connection",
            app.config.max_channels_per_connection
        );
        send_error(conn, id, ErrorCode::LimitExceeded, &msg);
        return;
    }
    match app
        .hub
        .subscribe(conn.id, &conn.outbox, &channel, since, id)
        .await
    {
        Ok(()) => {
            // Recorded first: a connection that ends while entering still exits the room.
            conn.add(channel.clone());
            app.rooms.enter(conn.id, &channel, who).await;
        }
        Err(SubscribeError::AlreadySubscribed(c)) => {
            send_error(
                conn,
                id,
                ErrorCode::BadRequest,
                &format!("already subscribed to {c}"),
            );
        }
        Err(SubscribeError::Broker(e)) => {
            tracing::warn!(%channel, error = %e, "subscribe failed: broker unavailable");
            send_error(conn, id, ErrorCode::Unavailable, &e.to_string())
        }
    }
}

/// Queues a JSON text frame.
pub fn send_text(conn: &Connection, json: &[u8]) {
    conn.outbox
        .push(Item::raw(protocol::frame(Opcode::Text, json)));
}

pub fn send_error(conn: &Connection, id: Option<u64>, code: ErrorCode, message: &str) {
    send_text(conn, &protocol::error_frame(id, code, message));
}

/// What reading a client frame led to.
enum Read {
    /// Go on.
    More,
    /// The read side is done: the connection closes with this code (the outbox is closed).
    Done(u16),
}

/// Takes one client frame (or the read's failure): runs it, and closes the outbox when the
/// connection is to end.
async fn on_read(
    app: &App,
    conn: &Connection,
    reader: &mut Reader,
    frame: Result<frame::Frame, ReadError>,
    last_heard: &mut u64,
) -> Read {
    let end = match frame {
        Ok(frame) => {
            let now = elapsed_ms(reader.clock());
            *last_heard = now;
            match reader.on_frame(app, conn, frame, now) {
                Next::Nothing => None,
                Next::Op(text) => Box::pin(reader.op(app, conn, &text)).await.err(),
                Next::Close(code, reason) => Some((code, reason)),
            }
        }
        Err(e) => Some(reader::read_error(app, e)),
    };
    match end {
        None => Read::More,
        Some((code, reason)) => {
            conn.outbox.close(CloseReason::Closed { code, reason });
            Read::Done(code)
        }
    }
}

/// Serves the connection until it ends: writes what the outbox queues, reads client frames, and
/// keeps its timers (ping, auth deadline, drain). Returns the close code of the read side, if it
/// was the read side that ended the connection (`None`: the server ended it, or a write failed).
async fn run<R, W>(
    app: &App,
    conn: &Connection,
    frames: &mut FrameReader<R>,
    write: &mut W,
    reader: &mut Reader,
) -> Option<u16>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Armed only on connections with an auth deadline; boxed so others carry 8 bytes for it.
    let mut auth_timer: Option<Pin<Box<Sleep>>> = None;
    let mut armed = u64::MAX;
    // Read from the configuration when needed: every local here is in every idle connection's
    // task.
    let ping_every = app.config.ws_ping_interval;
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut last_heard = 0u64;
    let mut read_end: Option<u16> = None;
    let mut batch: VecDeque<Item> = VecDeque::new();
    // The drain: once shutdown begins, the ping timer is moved to this connection's turn to
    // close (`App::drained`, whose future is twice the size of this one), which it then does.
    let shutdown = app.shutdown.cancelled();
    tokio::pin!(shutdown);
    let mut draining = false;
    loop {
        let raw = reader.session.deadline().raw();
        if raw != armed {
            armed = raw;
            match (reader.session.deadline().decode(raw), auth_timer.as_mut()) {
                (Some((at, _)), Some(timer)) => timer.as_mut().reset(at),
                (Some((at, _)), None) => auth_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                (None, _) => auth_timer = None,
            }
        }
        batch.clear();
        let closed = tokio::select! {
            closed = conn.outbox.take_into(&mut batch) => closed,
            // Cancel-safe: a read dropped here loses nothing (see `frame`).
            frame = frames.read(), if read_end.is_none() => {
                // Boxed: inline, it would add its size to every idle connection's task.
                let read = Box::pin(on_read(app, conn, reader, frame, &mut last_heard));
                if let Read::Done(code) = read.await {
                    read_end = Some(code);
                }
                continue;
            }
            () = fire(&mut auth_timer) => {
                auth_timer = None;
                // Unless an op moved the deadline meanwhile (a refresh, re-armed next time
                // round), it is due.
                if reader.session.deadline().raw() == armed {
                    session::on_deadline(conn, reader.session.deadline(), armed);
                }
                continue;
            }
            _ = ping.tick() => {
                if draining {
                    conn.outbox.close(CloseReason::Shutdown);
                } else if elapsed_ms(reader.clock()).saturating_sub(last_heard) > ping_deadline_ms(app) {
                    conn.outbox.close(CloseReason::Closed { code: close::PING_TIMEOUT, reason: "ping timeout" });
                } else {
                    conn.outbox.push(Item::raw(protocol::frame(Opcode::Ping, b"")));
                }
                continue;
            }
            () = &mut shutdown, if !draining => {
                draining = true;
                ping.reset_at(tokio::time::Instant::now() + app.drain_delay());
                continue;
            }
        };
        let (mut messages, mut oldest) = (0u64, None);
        for item in batch.iter_mut() {
            match item {
                Item::Message(d) => {
                    messages += 1;
                    oldest.get_or_insert(d.msg.published_at_us);
                }
                Item::Subscribed(s) => *item = Item::raw(subscribed_frame(s)),
                Item::Raw(_) => {}
            }
        }
        if let Some(reason) = closed {
            if reason == CloseReason::TokenExpired {
                let frame = protocol::error_frame(
                    None,
                    ErrorCode::TokenExpired,
                    "the token has expired; reconnect with a new token",
                );
                batch.push_back(Item::raw(protocol::frame(Opcode::Text, &frame)));
            }
            let (code, text) = match reason {
                CloseReason::TokenExpired => (close::UNAUTHORIZED, "token expired"),
                CloseReason::SlowConsumer => {
                    (close::SLOW_CONSUMER, "slow consumer: reconnect and resume")
                }
                CloseReason::Shutdown => {
                    (close::RESTART, "server restarting: reconnect and resume")
                }
                CloseReason::Closed { code, reason } => (code, reason),
            };
            batch.push_back(Item::raw(protocol::close_frame(code, text)));
            // The final notice gets a deadline: a client that reads gets it, one that does not
            // cannot hold the connection open.
            let _ = Box::pin(tokio::time::timeout(
                super::FINAL_NOTICE_DEADLINE,
                write_all(write, &batch),
            ))
            .await;
            return read_end;
        }
        // A peer that stops reading blocks this write, so the outbox closing meanwhile (it
        // overflowed, or the server drains) must still end the connection: the write in flight
        // gets the notice deadline to finish (no torn frame), then the close frame follows.
        // Client frames are still read meanwhile: a client that writes before it reads again
        // must not wait for this write while this write waits for it.
        let pending = write_all(write, &batch);
        tokio::pin!(pending);
        loop {
            tokio::select! {
                res = &mut pending => match res {
                    Ok(()) => {
                        app.metrics.wrote("ws", messages, oldest);
                        break;
                    }
                    Err(_) => return read_end,
                },
                frame = frames.read(), if read_end.is_none() => {
                    let read = Box::pin(on_read(app, conn, reader, frame, &mut last_heard));
                    if let Read::Done(code) = read.await {
                        read_end = Some(code);
                    }
                }
                () = conn.outbox.closed() => {
                    if !matches!(Box::pin(tokio::time::timeout(super::FINAL_NOTICE_DEADLINE, pending)).await, Ok(Ok(()))) {
                        return read_end;
                    }
                    break;
                }
            }
        }
    }
}

/// Resolves when `timer` fires; never when there is none.
async fn fire(timer: &mut Option<Pin<Box<Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

/// The frame an item is written as (`Subscribed` items are encoded before writing).
fn frame_of(item: &Item) -> &[u8] {
    match item {
        Item::Message(d) => d.ws_frame(),
        Item::Raw(b) => b,
        Item::Subscribed(_) => &[],
    }
}

fn subscribed_frame(s: &Subscribed) -> Bytes {
    protocol::frame(
        Opcode::Text,
        &protocol::subscribed_frame(s.id, &s.channel, &s.position, s.recovered),
    )
}

/// A WebSocket's socket, shared by its reader, its writer and the hub's direct writes.
pub struct WsSocket(TcpStream);

impl AsTcp for WsSocket {
    fn tcp(&self) -> &TcpStream {
        &self.0
    }
}

impl Wire for WsSocket {
    fn try_write(&self, item: Item) -> Sent {
        let item = match item {
            Item::Subscribed(s) => Item::raw(subscribed_frame(&s)),
            item => item,
        };
        let frame = frame_of(&item);
        let (n, len) = (socket::try_write(&self.0, frame), frame.len());
        if n == len {
            return Sent::Whole;
        }
        if n == 0 {
            return Sent::Nothing(item);
        }
        // The rest shares the frame's buffer: no copy.
        let rest = match &item {
            Item::Message(d) => d.ws_frame().slice(n..),
            Item::Raw(b) => b.slice(n..),
            Item::Subscribed(_) => Bytes::new(), // rendered into `Raw` above
        };
        Sent::Rest(Item::raw(rest))
    }

    fn transport(&self) -> &'static str {
        "ws"
    }
}

/// Writes every queued frame with as few vectored writes as the socket allows.
///
/// A lone frame (the usual batch of a connection receiving a few messages a second) is written
/// as is; only a batch of several gathers `IoSlice`s, in a `Vec` rather than a stack array
/// because this future lives inside every connection's task: an array here would cost each idle
/// connection its size.
async fn write_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    items: &VecDeque<Item>,
) -> std::io::Result<()> {
    if items.len() == 1 {
        write.write_all(frame_of(&items[0])).await?;
        return write.flush().await;
    }
    let mut slices: Vec<IoSlice<'_>> = items.iter().map(|i| IoSlice::new(frame_of(i))).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let n = write.write_vectored(rest).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, n);
    }
    write.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn write_all_writes_single_frames_and_batches_in_order() {
        let items: VecDeque<Item> = (0..133)
            .map(|i| Item::raw(Bytes::from(format!("[{i}]"))))
            .collect();
        let mut out = Vec::new();
        write_all(&mut out, &items).await.expect("write");
        let expected: String = (0..133).map(|i| format!("[{i}]")).collect();
        assert_eq!(String::from_utf8(out).expect("utf8"), expected);
        let one: VecDeque<Item> = [Item::raw(Bytes::from_static(b"only"))].into();
        let mut out = Vec::new();
        write_all(&mut out, &one).await.expect("write");
        assert_eq!(out, b"only");
    }
}
