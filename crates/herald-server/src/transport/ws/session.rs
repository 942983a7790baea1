//! Who a WebSocket connection is, over its life: the token it authenticated with (at the
//! upgrade, or with the `auth` op), replaced by `refresh`, and the deadline at which the
//! connection ends: when that token expires, or, for a connection that presented none, after
//! `auth_timeout` unless it authenticated or holds a subscription to an anonymously readable
//! channel by then.
//!
//! The session is owned by the connection's task, which runs ops one at a time, so it needs no
//! lock. The task already runs a `select!` for every connection, so a deadline costs a boxed
//! timer there and no task of its own (a watchdog task per connection made an idle WebSocket
//! with a token cost +590 B instead of +460-520 B, docs/benchmarks.md); the task re-arms its
//! timer whenever the deadline's value changed.

use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::{ErrorCode, auth::Claims, protocol};
use tokio::time::Instant;

use super::{close, send_error, send_text};
use crate::{
    app::App,
    auth::{Identity, Refusal},
    hub::CloseReason,
    transport::Connection,
};

/// What happens at the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// The token expired: `error token_expired`, close 4401.
    Expiry,
    /// No token yet: close 4401 unless the connection holds a subscription.
    AuthTimeout,
}

/// The connection's auth deadline: milliseconds since the connection's clock, the top bit
/// marking an auth timeout; `NONE` when there is none (auth off, or an anonymous reader).
pub struct Deadline {
    at: AtomicU64,
    clock: Instant,
}

const NONE: u64 = u64::MAX;
const AUTH_TIMEOUT_BIT: u64 = 1 << 63;

impl Deadline {
    pub fn new(clock: Instant) -> Self {
        Self {
            at: AtomicU64::new(NONE),
            clock,
        }
    }

    fn set(&self, at: Instant, due: Due) {
        let ms = (at.saturating_duration_since(self.clock).as_millis() as u64)
            .min(!AUTH_TIMEOUT_BIT - 1);
        let bit = if due == Due::AuthTimeout {
            AUTH_TIMEOUT_BIT
        } else {
            0
        };
        self.at.store(ms | bit, Ordering::Release);
    }

    fn clear(&self) {
        self.at.store(NONE, Ordering::Release);
    }

    /// The connection's clock, which deadlines count from.
    pub fn clock(&self) -> Instant {
        self.clock
    }

    /// The raw value, to tell whether it changed since a timer was armed.
    pub fn raw(&self) -> u64 {
        self.at.load(Ordering::Acquire)
    }

    /// When and why, for a raw value.
    pub fn decode(&self, raw: u64) -> Option<(Instant, Due)> {
        if raw == NONE {
            return None;
        }
        let due = if raw & AUTH_TIMEOUT_BIT != 0 {
            Due::AuthTimeout
        } else {
            Due::Expiry
        };
        let ms = raw & !AUTH_TIMEOUT_BIT;
        Some((self.clock + std::time::Duration::from_millis(ms), due))
    }
}

/// The writer's timer fired for `raw`, which is still the deadline: end the connection.
pub fn on_deadline(conn: &Connection, deadline: &Deadline, raw: u64) {
    match deadline.decode(raw) {
        Some((_, Due::Expiry)) => conn.outbox.close(CloseReason::TokenExpired),
        // An anonymous reader of anonymously readable channels may stay.
        Some((_, Due::AuthTimeout)) if conn.channel_count() > 0 => deadline.clear(),
        Some((_, Due::AuthTimeout)) => {
            send_error(
                conn,
                None,
                ErrorCode::Unauthorized,
                "no token: send {\"op\":\"auth\",\"token\":...} within auth_timeout",
            );
            conn.outbox.close(CloseReason::Closed {
                code: close::UNAUTHORIZED,
                reason: "authentication timeout",
            });
        }
        None => {}
    }
}

pub struct Session {
    who: Option<Identity>,
    deadline: Deadline,
}

impl Session {
    /// The session of a connection that presented `who` at the upgrade (or nothing).
    pub fn start(app: &App, who: Option<Identity>, clock: Instant) -> Self {
        let session = Self {
            who,
            deadline: Deadline::new(clock),
        };
        session.arm(app);
        session
    }

    pub fn who(&self) -> Option<&Claims> {
        self.who.as_deref()
    }

    /// When the connection is to end (token expiry, auth timeout), if ever.
    pub fn deadline(&self) -> &Deadline {
        &self.deadline
    }

    /// The `auth` op: authenticates a connection that has no token yet. A token that is not
    /// valid ends the connection: `Err` with the close code (4401 if it only expired, 4403
    /// otherwise), after the `error` frame.
    pub async fn auth(
        &mut self,
        app: &App,
        conn: &Connection,
        id: Option<u64>,
        token: &str,
    ) -> Result<(), (u16, &'static str)> {
        if self.who.is_some() {
            send_error(
                conn,
                id,
                ErrorCode::BadRequest,
                "already authenticated; use refresh to replace the token",
            );
            return Ok(());
        }
        match app.auth.verify(token) {
            Ok(who) => {
                // Rooms it subscribed to anonymously now have it as a member.
                app.rooms.reenter(conn.id, &conn.channels(), &who).await;
                self.set(app, who);
                self.reply(conn, id);
                Ok(())
            }
            Err(Refusal { code, message }) => {
                send_error(conn, id, code, &message);
                match code {
                    ErrorCode::BadRequest => Ok(()), // auth is off: nothing to end
                    ErrorCode::TokenExpired => Err((close::UNAUTHORIZED, "token expired")),
                    _ => Err((close::FORBIDDEN, "invalid token")),
                }
            }
        }
    }

    /// The `refresh` op: replaces the token with a fresh one for the same `sub`. Subscriptions
    /// the new token no longer grants end with `unsubscribed` (`reason: forbidden`). A refused
    /// refresh leaves the connection as it was (its old token still expires when it does).
    pub fn refresh(&mut self, app: &App, conn: &Connection, id: Option<u64>, token: &str) {
        let Some(old) = &self.who else {
            return send_error(
                conn,
                id,
                ErrorCode::BadRequest,
                "not authenticated; send auth first",
            );
        };
        let who = match app.auth.verify(token) {
            Ok(who) => who,
            Err(r) => return send_error(conn, id, r.code, &r.message),
        };
        if who.sub != old.sub {
            return send_error(
                conn,
                id,
                ErrorCode::Forbidden,
                "a refreshed token must have the same sub",
            );
        }
        for channel in conn.channels() {
            if app.auth.check_read(Some(&who), &channel).is_err() && conn.remove(&channel) {
                send_text(
                    conn,
                    &protocol::unsubscribed_by_server_frame(&channel, ErrorCode::Forbidden),
                );
            }
        }
        self.set(app, who);
        self.reply(conn, id);
    }

    fn set(&mut self, app: &App, who: Identity) {
        self.who = Some(who);
        // The connection task re-arms its timer when it sees the value changed.
        self.arm(app);
    }

    /// Sets the deadline for the current identity (nothing when auth is off).
    fn arm(&self, app: &App) {
        if !app.auth.enabled() {
            return;
        }
        match &self.who {
            Some(claims) => self.deadline.set(app.auth.expires_at(claims), Due::Expiry),
            None => self
                .deadline
                .set(Instant::now() + app.config.auth_timeout, Due::AuthTimeout),
        }
    }

    fn reply(&self, conn: &Connection, id: Option<u64>) {
        if let Some(who) = &self.who {
            send_text(
                conn,
                &protocol::authenticated_frame(id, who.sub.as_deref(), who.exp),
            );
        }
    }
}
