//! The read side of a WebSocket: client frames in, ops executed, replies queued to the outbox.
//!
//! The connection's task reads frames ([`super::frame::FrameReader`], cancel-safe) in the same
//! `select!` that waits for its outbox, and hands each to [`Reader::on_frame`]; ops run one at
//! a time in arrival order, so a client sees replies in the order it sent ops. Any frame at all
//! counts as a sign of life for the ping timeout.

use std::time::Duration;

use herald_core::{
    ErrorCode, Sender,
    protocol::{self, ClientOp, Opcode},
};

use super::{
    close, elapsed_ms,
    frame::{self, BadClose, ReadError},
    send_error, send_text,
    session::Session,
    subscribe,
};
use crate::{
    app::App,
    hub::Item,
    limits::{
        Limit,
        bucket::{Rate, Taken, TokenBucket},
    },
    rooms,
    transport::Connection,
};

/// How long a connection the server closes keeps reading (and dropping) what the client still
/// sends: closing a socket with unread bytes resets it, and the reset can destroy the close
/// frame before the client reads it.
pub const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a client frame asks of the connection.
pub enum Next {
    /// Nothing more (handled, or only a sign of life).
    Nothing,
    /// A complete text message: an op to run ([`Reader::op`]).
    Op(Vec<u8>),
    /// The connection is to close with this code and reason.
    Close(u16, &'static str),
}

/// The read side's state: who the client is, its rates, a message split over frames.
pub struct Reader {
    pub session: Session,
    rates: Rates,
    /// A message split over continuation frames, bounded by the same limit as whole ones.
    partial: Option<Vec<u8>>,
}

/// The close code and reason for a read that failed.
pub fn read_error(app: &App, e: ReadError) -> (u16, &'static str) {
    match e {
        ReadError::TooBig => too_big(app),
        ReadError::Gone => (close::NORMAL, "connection lost"),
        ReadError::Protocol(why) => {
            tracing::debug!(why, "WebSocket protocol error");
            (close::PROTOCOL, why)
        }
    }
}

fn too_big(app: &App) -> (u16, &'static str) {
    app.metrics.limits.hit(Limit::MaxWsFrameBytes);
    (close::TOO_BIG, "message too big")
}

impl Reader {
    pub fn new(app: &App, session: Session) -> Self {
        let clock = session.deadline().clock();
        Self {
            session,
            rates: Rates::new(app, elapsed_ms(clock)),
            partial: None,
        }
    }

    /// The connection's clock (ms since it started are its timestamps): the session's.
    pub fn clock(&self) -> tokio::time::Instant {
        self.session.deadline().clock()
    }

    /// Takes one client frame, received at `now` (ms on the connection's clock).
    pub fn on_frame(
        &mut self,
        app: &App,
        conn: &Connection,
        frame: frame::Frame,
        now: u64,
    ) -> Next {
        let limit = app.config.max_ws_frame_bytes;
        // Every message and control frame counts against the message rate (a fragment counts
        // once, with the frame that ends its message).
        if frame.fin {
            match self.rates.message(app, now) {
                Taken::Allowed => {}
                Taken::Refused => {
                    refuse_frame(conn, &frame, self.partial.take());
                    return Next::Nothing;
                }
                Taken::Flooding => return Next::Close(close::RATE_LIMITED, "too many messages"),
            }
        }
        let message = match frame.opcode {
            frame::TEXT if frame.fin && self.partial.is_none() => frame.payload,
            frame::TEXT => {
                if self.partial.is_some() {
                    return Next::Close(
                        close::PROTOCOL,
                        "new message before the last one finished",
                    );
                }
                self.partial = Some(frame.payload);
                return Next::Nothing;
            }
            frame::CONTINUATION => {
                let Some(buf) = self.partial.as_mut() else {
                    return Next::Close(close::PROTOCOL, "continuation without a message");
                };
                if buf.len() + frame.payload.len() > limit {
                    let (code, why) = too_big(app);
                    return Next::Close(code, why);
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    return Next::Nothing;
                }
                self.partial.take().unwrap_or_default()
            }
            frame::BINARY => {
                send_error(
                    conn,
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                return Next::Nothing;
            }
            frame::PING => {
                conn.outbox
                    .push(Item::raw(protocol::frame(Opcode::Pong, &frame.payload)));
                return Next::Nothing;
            }
            frame::CLOSE => {
                let (code, why) = match frame::check_close(&frame.payload) {
                    Ok(()) => (close::NORMAL, ""),
                    Err(BadClose::Protocol(why)) => (close::PROTOCOL, why),
                    Err(BadClose::Utf8) => (close::INVALID_DATA, "close reason is not UTF-8"),
                };
                return Next::Close(code, why);
            }
            _ => return Next::Nothing, // pong: only a sign of life
        };
        if std::str::from_utf8(&message).is_err() {
            return Next::Close(close::INVALID_DATA, "invalid UTF-8");
        }
        Next::Op(message)
    }

    /// Runs one op; `Err` with the close code and reason when the connection is to end. Callers
    /// box it: ops are rare, and inlined their futures would size every idle connection's task.
    pub async fn op(
        &mut self,
        app: &App,
        conn: &Connection,
        text: &[u8],
    ) -> Result<(), (u16, &'static str)> {
        let clock = self.clock();
        handle_op(app, conn, &mut self.session, text, &mut self.rates, clock).await
    }
}

/// The connection's token buckets (16 bytes each; the rates come from the configuration).
struct Rates {
    messages: TokenBucket,
    publishes: TokenBucket,
}

fn message_rate(app: &App) -> Rate {
    Rate::new(app.config.ws_message_rate, app.config.ws_message_burst)
}

fn publish_rate(app: &App) -> Rate {
    Rate::new(app.config.ws_publish_rate, app.config.ws_publish_burst)
}

impl Rates {
    fn new(app: &App, now: u64) -> Self {
        Self {
            messages: TokenBucket::full(&message_rate(app), now),
            publishes: TokenBucket::full(&publish_rate(app), now),
        }
    }

    fn message(&mut self, app: &App, now: u64) -> Taken {
        let taken = self.messages.take_or_owe(&message_rate(app), now);
        if taken != Taken::Allowed {
            app.metrics.limits.hit(Limit::WsMessageRate);
        }
        taken
    }

    fn publish(&mut self, app: &App, now: u64) -> Taken {
        let taken = self.publishes.take_or_owe(&publish_rate(app), now);
        if taken != Taken::Allowed {
            app.metrics.limits.hit(Limit::WsPublishRate);
        }
        taken
    }
}

/// Answers a message over the rate with `error rate_limited` (echoing its op's `id` when it has
/// one); a refused ping gets no pong, a refused pong or close is only a sign of life.
fn refuse_frame(conn: &Connection, frame: &frame::Frame, partial: Option<Vec<u8>>) {
    let partial = partial.unwrap_or_default();
    let text = match frame.opcode {
        frame::TEXT | frame::BINARY => &frame.payload[..],
        frame::CONTINUATION => &partial[..],
        _ => return,
    };
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<u64>,
    }
    let id = serde_json::from_slice::<Id>(text).ok().and_then(|i| i.id);
    send_error(
        conn,
        id,
        ErrorCode::RateLimited,
        "too many messages: slow down (ws_message_rate)",
    );
}

/// Runs one op; `Err` with the close code and reason when the connection is to end: the client
/// keeps publishing faster than its rate (4029), or its `auth` op failed (4401, 4403).
async fn handle_op(
    app: &App,
    conn: &Connection,
    session: &mut Session,
    text: &[u8],
    rates: &mut Rates,
    clock: tokio::time::Instant,
) -> Result<(), (u16, &'static str)> {
    let op = match protocol::parse_client_op(text, &app.limits) {
        Ok(op) => op,
        Err(e) => {
            if e.rejection.code == ErrorCode::PayloadTooLarge {
                app.metrics.limits.hit(Limit::MaxMessageBytes);
            }
            send_error(conn, e.id, e.rejection.code, &e.rejection.message);
            return Ok(());
        }
    };
    match op {
        ClientOp::Subscribe { id, channel, since } => {
            // A resume (`since`) is authorised exactly like a fresh subscribe.
            match app.auth.check_read(session.who(), &channel) {
                Ok(()) => subscribe(app, conn, channel, since, id, session.who()).await,
                Err(r) => send_error(conn, id, r.code, &r.message),
            }
        }
        ClientOp::Unsubscribe { id, channel } => {
            if conn.remove(&channel) {
                send_text(conn, &protocol::unsubscribed_frame(id, &channel));
            } else {
                send_error(
                    conn,
                    id,
                    ErrorCode::BadRequest,
                    &format!("not subscribed to {channel}"),
                );
            }
        }
        ClientOp::Publish { id, mut publish } => {
            if let Err(r) = app.auth.check_publish(session.who(), &publish.channel) {
                send_error(conn, id, r.code, &r.message);
                return Ok(());
            }
            match rates.publish(app, elapsed_ms(clock)) {
                Taken::Allowed => {}
                Taken::Refused => {
                    let msg = "too many publishes: slow down (ws_publish_rate)";
                    send_error(conn, id, ErrorCode::RateLimited, msg);
                    return Ok(());
                }
                Taken::Flooding => return Err((close::RATE_LIMITED, "too many publishes")),
            }
            // Who published it is the server's to say: the token's `sub` and `info`, never
            // anything the client wrote (parsing ignores such fields).
            publish.sender = session.who().and_then(|claims| {
                Some(Box::new(Sender {
                    user: claims.sub.clone()?,
                    info: claims.info.clone(),
                }))
            });
            let channel = publish.channel.clone();
            match crate::publish::publish(app.broker.as_ref(), &app.metrics, publish).await {
                Ok(published) => send_text(
                    conn,
                    &protocol::published_frame(id, &channel, &published.position),
                ),
                Err(r) => send_error(conn, id, r.code, &r.message),
            }
        }
        ClientOp::Presence { id, channel } => {
            let subscribed = conn.is_subscribed(&channel);
            let frame = rooms::presence_op(&app.rooms, subscribed, id, &channel).await;
            send_text(conn, &frame);
        }
        ClientOp::PresenceStats { id, channel } => {
            let subscribed = conn.is_subscribed(&channel);
            let frame = rooms::presence_stats_op(&app.rooms, subscribed, id, &channel).await;
            send_text(conn, &frame);
        }
        ClientOp::Ping { id } => send_text(conn, &protocol::pong_frame(id)),
        ClientOp::Auth { id, token } => session.auth(app, conn, id, &token).await?,
        ClientOp::Refresh { id, token } => session.refresh(app, conn, id, &token),
    }
    Ok(())
}
