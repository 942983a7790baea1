//! The JSON protocol: publish request bodies, WebSocket client ops and server frames.
//!
//! Parsing is two-step: serde reads each known field as raw JSON ([`fields`]), then each field is
//! turned into a typed value or an [`ErrorCode`] with a message a client developer can act on. Server frames are
//! written by hand into `Bytes` because they sit on the fan-out hot path and contain only
//! pre-validated names (no escaping needed) plus already-compact JSON data.

mod fields;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use self::fields::Fields;
pub use self::fields::distinct_channels;
use crate::{
    channel::{ChannelName, EventName, JOIN_EVENT, LEAVE_EVENT},
    error::ErrorCode,
    json,
    message::{Message, Sender, StreamPosition},
    room::Roster,
};

/// Idempotency keys are 1-128 printable ASCII characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// A rejected request: the code and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Limits applied while validating, from the server's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_channel_len: usize,
    /// Largest compacted `data` accepted, in bytes.
    pub max_message_bytes: usize,
    /// Most channels in one broadcast.
    pub max_broadcast_channels: usize,
}

/// A validated publish to one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub channel: ChannelName,
    pub event: Option<EventName>,
    /// Compact single-line JSON.
    pub data: Bytes,
    pub idempotency_key: Option<String>,
    /// Set by the server for a client's publish (from its token), never parsed from input: a
    /// `from` or `info` field in a request is ignored like any unknown field.
    pub sender: Option<Box<Sender>>,
}

fn channel(name: &str, max_len: usize) -> Result<ChannelName, Rejection> {
    ChannelName::parse_with_limit(name, max_len).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidChannel,
            format!("invalid channel {name:?}: {e}"),
        )
    })
}

fn event(raw: Option<&RawValue>) -> Result<Option<EventName>, Rejection> {
    fields::text(raw, "event", ErrorCode::InvalidEvent)?
        .map(|e| {
            EventName::parse(&e).map_err(|err| {
                Rejection::new(
                    ErrorCode::InvalidEvent,
                    format!("invalid event {e:?}: {err}"),
                )
            })
        })
        .transpose()
}

fn idempotency_key(raw: Option<&RawValue>) -> Result<Option<String>, Rejection> {
    let bad = || {
        Rejection::new(
            ErrorCode::BadRequest,
            format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_LEN} printable ASCII characters"
            ),
        )
    };
    let key = fields::text(raw, "idempotency_key", ErrorCode::BadRequest).map_err(|_| bad())?;
    match key {
        None => Ok(None),
        Some(k)
            if !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.into_owned()))
        }
        Some(_) => Err(bad()),
    }
}

fn data(raw: Option<&RawValue>, limits: &Limits) -> Result<Bytes, Rejection> {
    let raw = fields::required(raw, "data")?;
    let compact = json::compact(raw.get());
    if compact.len() > limits.max_message_bytes {
        return Err(Rejection::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "data is {} bytes; the limit is {}",
                compact.len(),
                limits.max_message_bytes
            ),
        ));
    }
    json::check_interoperable(&compact).map_err(|e| {
        Rejection::new(
            ErrorCode::InvalidJson,
            format!("`data` is not interoperable JSON: {e}"),
        )
    })?;
    Ok(Bytes::from(compact))
}

/// The one channel named by `channel`.
fn one_channel(f: &Fields<'_>, limits: &Limits) -> Result<ChannelName, Rejection> {
    let name = fields::text(f.channel, "channel", ErrorCode::InvalidChannel)?;
    channel(&fields::required(name, "channel")?, limits.max_channel_len)
}

/// Parses the body of `POST /v1/publish`.
pub fn parse_publish(body: &[u8], limits: &Limits) -> Result<Publish, Rejection> {
    let f = Fields::parse(body)?;
    Ok(Publish {
        channel: one_channel(&f, limits)?,
        event: event(f.event)?,
        data: data(f.data, limits)?,
        idempotency_key: idempotency_key(f.idempotency_key)?,
        sender: None,
    })
}

/// Parses the body of `POST /v1/broadcast` into one publish per distinct channel (repeats are
/// dropped before the `max_broadcast_channels` limit applies). An idempotency key applies per
/// channel, so a retried broadcast publishes nothing new anywhere.
pub fn parse_broadcast(body: &[u8], limits: &Limits) -> Result<Vec<Publish>, Rejection> {
    let f = Fields::parse(body)?;
    let names = fields::required(fields::text_list(f.channels, "channels")?, "channels")?;
    let max = limits.max_broadcast_channels;
    let channels = distinct_channels(names, limits.max_channel_len, max, "per broadcast")?;
    if channels.is_empty() {
        return Err(Rejection::new(
            ErrorCode::LimitExceeded,
            format!("channels must list 1-{max} channels"),
        ));
    }
    let event = event(f.event)?;
    let data = data(f.data, limits)?;
    let key = idempotency_key(f.idempotency_key)?;
    Ok(channels
        .into_iter()
        .map(|channel| Publish {
            channel,
            event: event.clone(),
            data: data.clone(),
            idempotency_key: key.clone(),
            sender: None,
        })
        .collect())
}

/// A WebSocket client op, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    Subscribe {
        id: Option<u64>,
        channel: ChannelName,
        since: Option<StreamPosition>,
    },
    Unsubscribe {
        id: Option<u64>,
        channel: ChannelName,
    },
    Publish {
        id: Option<u64>,
        publish: Publish,
    },
    Ping {
        id: Option<u64>,
    },
    /// Authenticates an anonymous connection with a subscriber token.
    Auth {
        id: Option<u64>,
        token: String,
    },
    /// Replaces the connection's token with a fresh one (same `sub`).
    Refresh {
        id: Option<u64>,
        token: String,
    },
    /// Who is in a channel the connection subscribes to.
    Presence {
        id: Option<u64>,
        channel: ChannelName,
    },
    /// How many connections and distinct users are in a channel (cheap for large rooms).
    PresenceStats {
        id: Option<u64>,
        channel: ChannelName,
    },
}

/// Longest subscriber token accepted in an `auth` or `refresh` op.
pub const MAX_AUTH_TOKEN_LEN: usize = 16 * 1024;

/// The `token` of an `auth` or `refresh` op (never echoed in an error).
fn auth_token(raw: Option<&RawValue>) -> Result<String, Rejection> {
    let token = fields::text(raw, "token", ErrorCode::Unauthorized)?;
    match fields::required(token, "token")? {
        t if !t.is_empty() && t.len() <= MAX_AUTH_TOKEN_LEN => Ok(t.into_owned()),
        _ => Err(Rejection::new(
            ErrorCode::Unauthorized,
            format!("token must be 1-{MAX_AUTH_TOKEN_LEN} bytes"),
        )),
    }
}

/// A rejected op, with the client's correlation id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRejection {
    pub id: Option<u64>,
    pub rejection: Rejection,
}

/// Parses one WebSocket text frame. The `id` is read first, so a rejection of any other field
/// still carries it.
pub fn parse_client_op(frame: &[u8], limits: &Limits) -> Result<ClientOp, OpRejection> {
    let no_id = |rejection| OpRejection {
        id: None,
        rejection,
    };
    let f = Fields::parse(frame).map_err(no_id)?;
    let id = fields::id(f.id).map_err(no_id)?;
    let op = (|| {
        let op = fields::text(f.op, "op", ErrorCode::UnknownOp)?;
        Ok(match fields::required(op, "op")?.as_ref() {
            "subscribe" => ClientOp::Subscribe {
                id,
                channel: one_channel(&f, limits)?,
                since: fields::since(f.since)?,
            },
            "unsubscribe" => ClientOp::Unsubscribe {
                id,
                channel: one_channel(&f, limits)?,
            },
            "publish" => ClientOp::Publish {
                id,
                publish: Publish {
                    channel: one_channel(&f, limits)?,
                    event: event(f.event)?,
                    data: data(f.data, limits)?,
                    idempotency_key: idempotency_key(f.idempotency_key)?,
                    sender: None,
                },
            },
            "ping" => ClientOp::Ping { id },
            "auth" => ClientOp::Auth {
                id,
                token: auth_token(f.token)?,
            },
            "refresh" => ClientOp::Refresh {
                id,
                token: auth_token(f.token)?,
            },
            "presence" => ClientOp::Presence {
                id,
                channel: one_channel(&f, limits)?,
            },
            "presence_stats" => ClientOp::PresenceStats {
                id,
                channel: one_channel(&f, limits)?,
            },
            other => {
                return Err(Rejection::new(
                    ErrorCode::UnknownOp,
                    format!(
                        "unknown op {:?}; expected subscribe, unsubscribe, publish, ping, auth, refresh, presence or presence_stats",
                        truncate(other)
                    ),
                ));
            }
        })
    })();
    op.map_err(|rejection| OpRejection { id, rejection })
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- server frames -------------------------------------------------------------------------

fn put_id(out: &mut BytesMut, id: Option<u64>) {
    if let Some(id) = id {
        out.put_slice(b",\"id\":");
        out.put_slice(id.to_string().as_bytes());
    }
}

/// Appends `,"from":USER,"info":INFO` for a message a client published (`info` only when its
/// token had one): the same two fields in every encoding of a message (WebSocket frame, SSE
/// envelope, long-poll answer, history). `from` may hold any text, so it is escaped.
pub fn put_sender(out: &mut impl BufMut, sender: Option<&Sender>) {
    let Some(s) = sender else { return };
    out.put_slice(b",\"from\":");
    // Writing into memory cannot fail.
    let _ = serde_json::to_writer((&mut *out).writer(), &*s.user);
    if let Some(info) = &s.info {
        out.put_slice(b",\"info\":");
        out.put_slice(info);
    }
}

/// The WebSocket frame type of a message: `message`, or `join` / `leave` for the server's room
/// events.
fn frame_type(msg: &Message) -> &'static str {
    match msg.event.as_ref().map(EventName::as_str) {
        Some(JOIN_EVENT) => "join",
        Some(LEAVE_EVENT) => "leave",
        _ => "message",
    }
}

/// The JSON object a message is delivered as: encoded once per message and shared by every
/// WebSocket subscriber (and by SSE streams that asked for envelopes).
///
/// - `{"type":"message","channel","offset","epoch","event"?,"from"?,"info"?,"data"}`: `from` and
///   `info` only for a message a client published with a token (see [`Sender`]);
/// - `{"type":"join"|"leave","channel","offset","epoch","user","client","info"?}`: the server's
///   room events, whose data is the member (see [`crate::room::Member`]), spliced in.
pub fn message_frame(msg: &Message) -> Bytes {
    let sender = msg.sender.as_deref();
    let mut out = BytesMut::with_capacity(
        msg.data.len() + msg.channel.as_str().len() + sender.map_or(0, |s| s.len() + 32) + 96,
    );
    let kind = frame_type(msg);
    out.put_slice(b"{\"type\":\"");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\",");
    put_position(&mut out, msg);
    // A room event's data is a member object: its fields join the frame's. (Anything else, which
    // only a foreign writer of the backbone could produce, is delivered as `data`.)
    if kind != "message" && msg.data.len() > 2 && msg.data.first() == Some(&b'{') {
        out.put_u8(b',');
        out.put_slice(&msg.data[1..]);
        return out.freeze();
    }
    if let Some(e) = &msg.event {
        out.put_slice(b",\"event\":\"");
        out.put_slice(e.as_str().as_bytes());
        out.put_slice(b"\"");
    }
    put_sender(&mut out, sender);
    out.put_slice(b",\"data\":");
    out.put_slice(&msg.data);
    out.put_slice(b"}");
    out.freeze()
}

/// `"channel":"..","offset":N,"epoch":".."` of a message, the fields every encoding of one
/// starts with. Channel names and epochs are validated to characters JSON needs no escape for.
pub(crate) fn put_position(out: &mut BytesMut, msg: &Message) {
    out.put_slice(b"\"channel\":\"");
    out.put_slice(msg.channel.as_str().as_bytes());
    out.put_slice(b"\",\"offset\":");
    out.put_slice(msg.offset.to_string().as_bytes());
    out.put_slice(b",\"epoch\":\"");
    out.put_slice(msg.epoch.as_str().as_bytes());
    out.put_u8(b'"');
}

/// The members part of a presence reply: `"members":[...],"truncated","clients","users"`.
fn put_roster(out: &mut BytesMut, roster: &Roster) {
    out.put_slice(b",\"members\":[");
    for (i, m) in roster.members.iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(m);
    }
    out.put_slice(
        format!(
            "],\"truncated\":{},\"clients\":{},\"users\":{}",
            roster.truncated, roster.clients, roster.users
        )
        .as_bytes(),
    );
}

/// `{"type":"presence","channel","members":[{"user","client","info"?}],"truncated","clients",
/// "users","id"?}`: the reply to the `presence` op.
pub fn presence_frame(id: Option<u64>, channel: &ChannelName, roster: &Roster) -> Bytes {
    let size: usize = roster.members.iter().map(|m| m.len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 128);
    out.put_slice(format!("{{\"type\":\"presence\",\"channel\":\"{channel}\"").as_bytes());
    put_roster(&mut out, roster);
    put_id(&mut out, id);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"channel","members","truncated","clients","users"}`: the body of
/// `GET /v1/channels/{channel}/presence`.
pub fn presence_body(channel: &ChannelName, roster: &Roster) -> Bytes {
    let size: usize = roster.members.iter().map(|m| m.len() + 1).sum();
    let mut out = BytesMut::with_capacity(size + 128);
    out.put_slice(format!("{{\"channel\":\"{channel}\"").as_bytes());
    put_roster(&mut out, roster);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"type":"presence_stats","channel","clients","users","id"?}`: the reply to `presence_stats`.
pub fn presence_stats_frame(id: Option<u64>, channel: &ChannelName, roster: &Roster) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_slice(
        format!(
            "{{\"type\":\"presence_stats\",\"channel\":\"{channel}\",\"clients\":{},\"users\":{}",
            roster.clients, roster.users
        )
        .as_bytes(),
    );
    put_id(&mut out, id);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"type":"subscribed","channel","offset","epoch","recovered","id"?}`. `offset`/`epoch` are the
/// channel's position when the subscription went live: the client's new resume point.
pub fn subscribed_frame(
    id: Option<u64>,
    channel: &ChannelName,
    pos: &StreamPosition,
    recovered: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    out.put_slice(
        format!(
            "{{\"type\":\"subscribed\",\"channel\":\"{}\",\"offset\":{},\"epoch\":\"{}\",\"recovered\":{}",
            channel, pos.offset, pos.epoch, recovered
        )
        .as_bytes(),
    );
    put_id(&mut out, id);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"type":"unsubscribed","channel","id"?}`.
pub fn unsubscribed_frame(id: Option<u64>, channel: &ChannelName) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_slice(format!("{{\"type\":\"unsubscribed\",\"channel\":\"{channel}\"").as_bytes());
    put_id(&mut out, id);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"type":"unsubscribed","channel","reason"}`: the server ended a subscription by itself
/// (e.g. `forbidden`: a refreshed token no longer grants the channel).
pub fn unsubscribed_by_server_frame(channel: &ChannelName, reason: ErrorCode) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"unsubscribed\",\"channel\":\"{channel}\",\"reason\":\"{}\"}}",
        reason.as_str()
    ))
}

/// `{"type":"authenticated","sub"?,"exp","id"?}`: the reply to `auth` and `refresh`.
pub fn authenticated_frame(id: Option<u64>, sub: Option<&str>, exp: u64) -> Bytes {
    let mut v = serde_json::json!({"type": "authenticated", "exp": exp});
    if let Some(sub) = sub {
        v["sub"] = sub.into();
    }
    if let Some(id) = id {
        v["id"] = id.into();
    }
    Bytes::from(v.to_string())
}

/// `{"type":"published","channel","offset","epoch","id"?}`: the ack of a WebSocket publish.
pub fn published_frame(id: Option<u64>, channel: &ChannelName, pos: &StreamPosition) -> Bytes {
    let mut out = BytesMut::with_capacity(96);
    out.put_slice(
        format!(
            "{{\"type\":\"published\",\"channel\":\"{}\",\"offset\":{},\"epoch\":\"{}\"",
            channel, pos.offset, pos.epoch
        )
        .as_bytes(),
    );
    put_id(&mut out, id);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"type":"pong","id"?}`.
pub fn pong_frame(id: Option<u64>) -> Bytes {
    let mut out = BytesMut::with_capacity(32);
    out.put_slice(b"{\"type\":\"pong\"");
    put_id(&mut out, id);
    out.put_slice(b"}");
    out.freeze()
}

/// `{"type":"error","code","message","id"?}`.
pub fn error_frame(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    let mut v = serde_json::json!({"type": "error", "code": code.as_str(), "message": message});
    if let Some(id) = id {
        v["id"] = id.into();
    }
    Bytes::from(v.to_string())
}

// ---- WebSocket framing -----------------------------------------------------------------------

/// WebSocket opcodes the server writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Text = 0x1,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Appends an unmasked, final server frame header for a payload of `len` bytes (RFC 6455 5.2).
pub fn put_frame_header(out: &mut BytesMut, opcode: Opcode, len: usize) {
    out.put_u8(0x80 | opcode as u8);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// The payload of a complete frame made by [`frame`] (a view of the same bytes).
pub fn frame_payload(frame: &Bytes) -> Bytes {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return Bytes::new(),
    };
    frame.slice(header.min(frame.len())..)
}

/// A complete frame: header plus payload.
pub fn frame(opcode: Opcode, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    put_frame_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with status `code` and a short reason (truncated to fit the 125-byte limit).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(truncate_to(reason, 123).as_bytes());
    frame(Opcode::Close, &payload)
}

fn truncate_to(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests;
