//! Machine-readable error codes shared by HTTP error bodies, WebSocket `error` frames and SSE
//! control events, so a client handles one vocabulary whatever the transport.

use std::fmt;

/// Every error a client can be told about. `as_str` is the wire form (snake case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed in a way no more specific code covers.
    BadRequest,
    /// The body or frame is not valid JSON or lacks a required field.
    InvalidJson,
    /// A channel name fails validation.
    InvalidChannel,
    /// An event type fails validation.
    InvalidEvent,
    /// A resume position (`since`, `Last-Event-ID`) cannot be parsed.
    InvalidPosition,
    /// A WebSocket op the server does not know.
    UnknownOp,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The subscriber token has expired: get a fresh one and reconnect (or refresh).
    TokenExpired,
    /// Credentials are valid but do not allow this.
    Forbidden,
    NotFound,
    MethodNotAllowed,
    /// The body, message or frame exceeds a configured size limit.
    PayloadTooLarge,
    /// POST bodies must be `application/json`.
    UnsupportedMediaType,
    /// Too many channels on one connection, or too many connections.
    LimitExceeded,
    /// Over a rate limit (publishes per API key, messages per WebSocket, new connections per
    /// client address); retry after the `Retry-After` delay.
    RateLimited,
    /// This client address holds as many connections as `max_connections_per_ip` allows.
    TooManyConnections,
    /// This node holds as many connections as it allows (`max_connections`); retry (on another
    /// node) after the `Retry-After` delay.
    OverCapacity,
    /// The broker (e.g. Redis) cannot be reached; retry with the same idempotency key.
    Unavailable,
    /// The broker holds as much as it may (the embedded broker's `memory_max_bytes`); nothing
    /// was stored. Retry later with the same idempotency key.
    StorageFull,
    /// The server is draining; reconnect elsewhere.
    Draining,
    /// The connection could not keep up and its queue overflowed; reconnect and resume.
    SlowConsumer,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidJson => "invalid_json",
            Self::InvalidChannel => "invalid_channel",
            Self::InvalidEvent => "invalid_event",
            Self::InvalidPosition => "invalid_position",
            Self::UnknownOp => "unknown_op",
            Self::Unauthorized => "unauthorized",
            Self::TokenExpired => "token_expired",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::LimitExceeded => "limit_exceeded",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::OverCapacity => "over_capacity",
            Self::Unavailable => "unavailable",
            Self::StorageFull => "storage_full",
            Self::Draining => "draining",
            Self::SlowConsumer => "slow_consumer",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            Self::BadRequest
            | Self::InvalidJson
            | Self::InvalidChannel
            | Self::InvalidEvent
            | Self::InvalidPosition
            | Self::UnknownOp
            | Self::LimitExceeded => 400,
            Self::Unauthorized | Self::TokenExpired => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::RateLimited | Self::TooManyConnections => 429,
            Self::Unavailable
            | Self::StorageFull
            | Self::Draining
            | Self::SlowConsumer
            | Self::OverCapacity => 503,
            Self::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Renders `{"error":{"code":..,"message":..}}`, the body of every HTTP error.
pub fn error_body(code: ErrorCode, message: &str) -> String {
    serde_json::json!({"error": {"code": code.as_str(), "message": message}}).to_string()
}
