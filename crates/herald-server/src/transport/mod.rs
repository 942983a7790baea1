//! Client transports: Server-Sent Events and WebSocket. Both sit on a connection [`Outbox`] fed
//! by the hub, and both unsubscribe everything when the connection ends, however it ends.

pub mod poll;
pub mod socket;
pub mod sse;
pub mod sse_direct;
pub mod ws;

use std::{sync::Arc, time::Duration};

use herald_core::{
    ChannelName, ErrorCode,
    protocol::{self, Rejection},
    token::ResumeToken,
};
use hyper::Response;
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    app::App,
    auth::Identity,
    http::{self, Body},
    hub::{Bounds, CloseReason, Hub, Outbox, SubscribeError},
    limits::{Limit, Permit},
};

/// The distinct channels of a stream's `?channel=` parameters, in order: repeats cost a hash
/// lookup each, and more than `max_channels_per_connection` distinct names are refused as soon
/// as one too many is seen.
pub fn query_channels(app: &App, query: Option<&str>) -> Result<Vec<ChannelName>, Rejection> {
    protocol::distinct_channels(
        http::query::values(query, "channel"),
        app.config.max_channel_len,
        app.config.max_channels_per_connection,
        "per connection",
    )
    .inspect_err(|r| {
        if r.code == herald_core::ErrorCode::LimitExceeded {
            app.metrics.limits.hit(Limit::MaxChannelsPerConnection);
        }
    })
}

/// How long a connection that is closing gets to write what it owes the client: the rest of a
/// write in flight, then the final notice (WebSocket close frame, SSE closing event). A client
/// that reads within this time gets the notice (slow consumer, drain, protocol error) before the
/// connection closes; one that reads nothing cannot be told, and is dropped when it runs out.
pub const FINAL_NOTICE_DEADLINE: Duration = Duration::from_secs(2);

/// A subscription request (SSE or long-poll) that passed its checks: its channels subscribed on
/// a new [`Connection`], each from the position `resume` names for it (none: from now).
pub struct Opened {
    pub conn: Connection,
    /// The resume token the request carried (empty without one).
    pub resume: ResumeToken,
    /// The subscriber, when the request carried a token (its expiry ends the stream).
    pub who: Option<Identity>,
}

/// Validates a subscription request and subscribes its channels, or answers why not.
/// `q` is the query string (`channel=`, `last_event_id=`), `header_token` the `Last-Event-ID`
/// header (`Err` when it is not text, and it wins over the query's: it is what EventSource sends
/// when it reconnects); `subscriber_token` the client's JWT, if it sent one; `signal`, if any,
/// is cancelled when the connection's outbox closes.
pub async fn open(
    app: &Arc<App>,
    transport: &'static str,
    q: Option<&str>,
    header_token: Option<Result<String, ()>>,
    subscriber_token: Option<&str>,
    signal: Option<CancellationToken>,
) -> Result<Opened, Response<Body>> {
    if app.is_draining() {
        return Err(http::error(
            ErrorCode::Draining,
            "this node is draining; reconnect",
        ));
    }
    let channels = query_channels(app, q).map_err(|r| http::error(r.code, &r.message))?;
    if channels.is_empty() {
        return Err(http::error(
            ErrorCode::BadRequest,
            "give at least one ?channel=",
        ));
    }
    // Every channel is checked, resumed or not: a refused channel gets nothing, not even history.
    let who = app
        .auth
        .identify(subscriber_token)
        .map_err(|r| r.response())?;
    for channel in &channels {
        app.auth
            .check_read(who.as_deref(), channel)
            .map_err(|r| r.response())?;
    }
    // Errors name the input the token came from.
    let (source, token_text) = match header_token {
        Some(Ok(t)) => ("the Last-Event-ID header", Some(t)),
        Some(Err(_)) => {
            return Err(http::error(
                ErrorCode::InvalidPosition,
                "the Last-Event-ID header is not valid text",
            ));
        }
        None => (
            "the last_event_id query parameter",
            http::query::first(q, "last_event_id").map(|t| t.into_owned()),
        ),
    };
    let resume = match token_text.as_deref().map(ResumeToken::parse).transpose() {
        Ok(t) => t.unwrap_or_default(),
        Err(e) => {
            return Err(http::error(
                ErrorCode::InvalidPosition,
                &format!("{source}: {e}"),
            ));
        }
    };

    let conn = Connection::new(app, transport, signal);
    for channel in channels {
        let since = resume.get(channel.as_str()).cloned();
        match app
            .hub
            .subscribe(conn.id, &conn.outbox, &channel, since, None)
            .await
        {
            Ok(()) => {
                conn.add(channel.clone());
                app.rooms.enter(conn.id, &channel, who.as_deref()).await;
            }
            Err(SubscribeError::AlreadySubscribed(_)) => {}
            Err(SubscribeError::Broker(e)) => {
                tracing::warn!(%channel, error = %e, "subscribe failed: broker unavailable");
                return Err(http::error(ErrorCode::Unavailable, &e.to_string()));
            }
        }
    }
    Ok(Opened { conn, resume, who })
}

/// One client connection's identity, queue and subscriptions. Dropping it unsubscribes
/// everything, so a connection that vanishes mid-write leaves nothing behind in the hub.
pub struct Connection {
    pub id: u64,
    pub outbox: Arc<Outbox>,
    hub: Arc<Hub>,
    channels: Mutex<Vec<ChannelName>>,
    transport: &'static str,
    app: Arc<App>,
    /// The capacity this stream holds beyond its HTTP connection's (see [`crate::limits`]).
    _permit: Option<Permit>,
}

impl Connection {
    /// A connection whose outbox cancels `signal`, if any, when it closes (see
    /// [`Outbox::signal`]).
    pub fn new(app: &Arc<App>, transport: &'static str, signal: Option<CancellationToken>) -> Self {
        app.metrics
            .connections
            .with_label_values(&[transport])
            .inc();
        app.metrics.accepted.with_label_values(&[transport]).inc();
        Self {
            id: app.hub.connection_id(),
            outbox: app.hub.outbox(
                Bounds {
                    max_items: app.config.queue_max_messages,
                    max_bytes: app.config.queue_max_bytes,
                },
                signal,
            ),
            hub: app.hub.clone(),
            channels: Mutex::new(Vec::new()),
            transport,
            app: app.clone(),
            _permit: None,
        }
    }

    /// Keeps `permit` for as long as the connection lives.
    pub fn hold(&mut self, permit: Option<Permit>) {
        self._permit = permit;
    }

    pub fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }

    /// The subscribed channels, in subscription order.
    pub fn channels(&self) -> Vec<ChannelName> {
        self.channels.lock().clone()
    }

    pub fn is_subscribed(&self, channel: &ChannelName) -> bool {
        self.channels.lock().contains(channel)
    }

    /// Records a subscription the hub accepted.
    pub fn add(&self, channel: ChannelName) {
        let mut channels = self.channels.lock();
        // Most connections hold one channel: room for it alone (a first push reserves four).
        if channels.capacity() == 0 {
            channels.reserve_exact(1);
        }
        channels.push(channel);
    }

    /// Unsubscribes one channel; false if it was not subscribed.
    pub fn remove(&self, channel: &ChannelName) -> bool {
        let mut channels = self.channels.lock();
        let before = channels.len();
        channels.retain(|c| c != channel);
        let removed = channels.len() != before;
        drop(channels);
        if removed {
            self.hub.unsubscribe(self.id, channel);
            self.app.rooms.exit(self.id, channel);
        }
        removed
    }
}

/// The transports, as metric labels.
pub const TRANSPORTS: [&str; 3] = ["ws", "sse", "poll"];

/// Every `reason` of `herald_disconnects_total` per transport, so each series is exported at 0
/// from the start ([`close_label`] for streams; a long-poll's own reasons, see `Drop`).
pub const DISCONNECT_REASONS: [(&str, &[&str]); 3] = [
    ("ws", &CLOSE_LABELS),
    ("sse", &CLOSE_LABELS),
    (
        "poll",
        &[
            "answered",
            "client_gone",
            "slow_consumer",
            "shutdown",
            "token_expired",
        ],
    ),
];

/// What [`close_label`] returns.
const CLOSE_LABELS: [&str; 10] = [
    "client_gone",
    "slow_consumer",
    "shutdown",
    "token_expired",
    "unauthorized",
    "forbidden",
    "ping_timeout",
    "client_closed",
    "rate_limited",
    "protocol_error",
];

/// The metric label for why a connection ended (`client_gone`: the peer went away first).
fn close_label(reason: Option<CloseReason>) -> &'static str {
    match reason {
        None => "client_gone",
        Some(CloseReason::SlowConsumer) => "slow_consumer",
        Some(CloseReason::Shutdown) => "shutdown",
        Some(CloseReason::TokenExpired) => "token_expired",
        Some(CloseReason::Closed {
            code: ws::close::UNAUTHORIZED,
            ..
        }) => "unauthorized",
        Some(CloseReason::Closed {
            code: ws::close::FORBIDDEN,
            ..
        }) => "forbidden",
        Some(CloseReason::Closed {
            code: ws::close::PING_TIMEOUT,
            ..
        }) => "ping_timeout",
        Some(CloseReason::Closed {
            code: ws::close::NORMAL,
            ..
        }) => "client_closed",
        Some(CloseReason::Closed {
            code: ws::close::RATE_LIMITED,
            ..
        }) => "rate_limited",
        Some(CloseReason::Closed { .. }) => "protocol_error",
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        for channel in self.channels.get_mut().drain(..) {
            self.hub.unsubscribe(self.id, &channel);
            self.app.rooms.exit(self.id, &channel);
        }
        self.app
            .metrics
            .connections
            .with_label_values(&[self.transport])
            .dec();
        let reason = match (self.transport, self.outbox.reason()) {
            // A long-poll ends when it has answered (or the client left); only the server's own
            // reasons are worth a label of their own.
            ("poll", None | Some(CloseReason::Closed { .. })) => "answered",
            (_, reason) => close_label(reason),
        };
        self.app
            .metrics
            .disconnects
            .with_label_values(&[self.transport, reason])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_label_is_exported_from_the_start() {
        let codes = [
            ws::close::NORMAL,
            ws::close::PROTOCOL,
            ws::close::INVALID_DATA,
            ws::close::TOO_BIG,
            ws::close::RESTART,
            ws::close::SLOW_CONSUMER,
            ws::close::PING_TIMEOUT,
            ws::close::RATE_LIMITED,
            ws::close::UNAUTHORIZED,
            ws::close::FORBIDDEN,
        ];
        let reasons = [
            None,
            Some(CloseReason::SlowConsumer),
            Some(CloseReason::Shutdown),
            Some(CloseReason::TokenExpired),
        ]
        .into_iter()
        .chain(codes.map(|code| Some(CloseReason::Closed { code, reason: "" })));
        for reason in reasons {
            assert!(CLOSE_LABELS.contains(&close_label(reason)), "{reason:?}");
        }
    }
}
