//! Client transports: Server-Sent Events and WebSocket. Both sit on a connection [`Outbox`] fed
//! by the hub, and both unsubscribe everything when the connection ends, however it ends.

pub mod sse;
pub mod sse_direct;
pub mod ws;

use std::{sync::Arc, time::Duration};

use herald_core::{
    ChannelName,
    protocol::{self, Rejection},
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    app::App,
    http,
    hub::{Bounds, CloseReason, Hub, Outbox},
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
    /// A connection whose outbox cancels `signal` when it closes (see [`Outbox::signal`]).
    pub fn new(app: &Arc<App>, transport: &'static str, signal: CancellationToken) -> Self {
        app.metrics
            .connections
            .with_label_values(&[transport])
            .inc();
        app.metrics.accepted.with_label_values(&[transport]).inc();
        Self {
            id: app.hub.connection_id(),
            outbox: Outbox::new(
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
        self.channels.lock().push(channel);
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
        }
        removed
    }
}

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
        }
        self.app
            .metrics
            .connections
            .with_label_values(&[self.transport])
            .dec();
        let reason = close_label(self.outbox.reason());
        self.app
            .metrics
            .disconnects
            .with_label_values(&[self.transport, reason])
            .inc();
    }
}
