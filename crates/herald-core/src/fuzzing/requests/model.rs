//! docs/api.md's publish bodies and client ops ("JSON input"), read a second way: the body as
//! a list of JSON members (duplicates kept, so they can be refused), each value converted on
//! its own with plain `serde_json` types.
//!
//! Rules: the body is one JSON object; a known member given twice, or an `id` that is not a
//! `u64`, is `invalid_json` with no `id` echoed; `null` means absent, except for `data`, where it
//! is the value `null`; unknown members are ignored; strings may use any escape; a member of the
//! wrong type gets that member's code; `data` must be interoperable (I-JSON: Unicode strings,
//! numbers a double can hold, limited nesting). Then each op's members are checked in the order
//! docs/api.md lists them.

use serde::{
    Deserialize, Deserializer,
    de::{DeserializeOwned, MapAccess, Visitor},
};
use serde_json::value::RawValue;

use crate::{
    channel::{ChannelName, EventName},
    error::ErrorCode,
    json,
    message::{Epoch, StreamPosition},
    protocol::{ClientOp, MAX_AUTH_TOKEN_LEN, MAX_IDEMPOTENCY_KEY_LEN, Publish},
};

use super::LIMITS;

/// The members of a JSON object, in order, duplicates included.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The members of the JSON object `text`, in order, duplicates included; `None` when `text` is
/// not one JSON object.
pub fn members(text: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    Members::parse(text).ok().map(|m| m.0)
}

/// A body the rules refuse before looking at any member: `invalid_json`, no `id`.
#[derive(Debug)]
struct Malformed;

/// Every member a request or op may carry.
const KNOWN: [&str; 9] = [
    "op",
    "id",
    "channel",
    "channels",
    "since",
    "data",
    "event",
    "idempotency_key",
    "token",
];

impl Members {
    fn parse(text: &str) -> Result<Self, Malformed> {
        serde_json::from_str(text).map_err(|_| Malformed)
    }

    /// The body: an object whose known members appear at most once.
    fn body(data: &[u8]) -> Result<Self, Malformed> {
        let members = Self::parse(std::str::from_utf8(data).map_err(|_| Malformed)?)?;
        for name in KNOWN {
            members.raw(name)?;
        }
        Ok(members)
    }

    /// The raw value of `name`: `None` when absent, refused when given twice.
    fn raw(&self, name: &str) -> Result<Option<&RawValue>, Malformed> {
        let mut found = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| &**v);
        let first = found.next();
        match found.next() {
            Some(_) => Err(Malformed),
            None => Ok(first),
        }
    }

    /// `name` (a known member, so never duplicated) when present and not `null`.
    fn value(&self, name: &str) -> Option<&RawValue> {
        self.raw(name).ok().flatten().filter(|v| v.get() != "null")
    }

    /// `name` converted to `T`; a value of another type is refused with `code`.
    fn get<T: DeserializeOwned>(
        &self,
        name: &str,
        code: ErrorCode,
    ) -> Result<Option<T>, ErrorCode> {
        self.value(name)
            .map(|raw| serde_json::from_str::<T>(raw.get()).map_err(|_| code))
            .transpose()
    }

    /// `since`: absent, or an object with a `u64` `offset` and an epoch string.
    fn since(&self) -> Result<Option<StreamPosition>, ErrorCode> {
        let Some(raw) = self.value("since") else {
            return Ok(None);
        };
        let bad = ErrorCode::InvalidPosition;
        let inner = Members::parse(raw.get()).map_err(|_| bad)?;
        let offset = inner.raw("offset").map_err(|_| bad)?.ok_or(bad)?;
        let epoch = inner.raw("epoch").map_err(|_| bad)?.ok_or(bad)?;
        let offset = serde_json::from_str(offset.get()).map_err(|_| bad)?;
        let epoch: String = serde_json::from_str(epoch.get()).map_err(|_| bad)?;
        let epoch = Epoch::parse(&epoch).ok_or(bad)?;
        Ok(Some(StreamPosition { epoch, offset }))
    }

    /// The one `channel`: missing is `invalid_json`, anything but a valid name `invalid_channel`.
    fn channel(&self) -> Result<ChannelName, ErrorCode> {
        let name: String = self
            .get("channel", ErrorCode::InvalidChannel)?
            .ok_or(ErrorCode::InvalidJson)?;
        channel(&name)
    }

    /// Event, data and idempotency key, in that order.
    fn message(&self) -> Result<(Option<EventName>, bytes::Bytes, Option<String>), ErrorCode> {
        let event = self
            .get::<String>("event", ErrorCode::InvalidEvent)?
            .map(|e| EventName::parse(&e).map_err(|_| ErrorCode::InvalidEvent))
            .transpose()?;
        // Not `value`: `null` is data.
        let raw = self
            .raw("data")
            .ok()
            .flatten()
            .ok_or(ErrorCode::InvalidJson)?;
        let data = json::compact(raw.get());
        if data.len() > LIMITS.max_message_bytes {
            return Err(ErrorCode::PayloadTooLarge);
        }
        // Interoperable JSON (I-JSON): what serde_json reads as a value, nested at most
        // `json::MAX_DEPTH` levels.
        let value: serde_json::Value =
            serde_json::from_str(&data).map_err(|_| ErrorCode::InvalidJson)?;
        if depth(&value) > json::MAX_DEPTH {
            return Err(ErrorCode::InvalidJson);
        }
        let key = self.get::<String>("idempotency_key", ErrorCode::BadRequest)?;
        if let Some(k) = &key
            && (k.is_empty()
                || k.len() > MAX_IDEMPOTENCY_KEY_LEN
                || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        {
            return Err(ErrorCode::BadRequest);
        }
        Ok((event, data.into(), key))
    }

    /// The subscriber token of `auth` and `refresh`: a string of 1 to 16 KiB bytes.
    fn token(&self) -> Result<String, ErrorCode> {
        let token: String = self
            .get("token", ErrorCode::Unauthorized)?
            .ok_or(ErrorCode::InvalidJson)?;
        if token.is_empty() || token.len() > MAX_AUTH_TOKEN_LEN {
            return Err(ErrorCode::Unauthorized);
        }
        Ok(token)
    }

    fn publish(&self) -> Result<Publish, ErrorCode> {
        let channel = self.channel()?;
        let (event, data, idempotency_key) = self.message()?;
        Ok(Publish {
            channel,
            event,
            data,
            idempotency_key,
            sender: None,
        })
    }
}

/// Levels of arrays and objects in `v` (a scalar has none).
fn depth(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        serde_json::Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn channel(name: &str) -> Result<ChannelName, ErrorCode> {
    ChannelName::parse_with_limit(name, LIMITS.max_channel_len)
        .map_err(|_| ErrorCode::InvalidChannel)
}

/// `POST /v1/publish`.
pub fn publish(data: &[u8]) -> Result<Publish, ErrorCode> {
    Members::body(data)
        .map_err(|Malformed| ErrorCode::InvalidJson)?
        .publish()
}

/// `POST /v1/broadcast`: one publish per distinct channel, in the order first listed; more than
/// the limit of distinct channels is refused as soon as the list goes over it.
pub fn broadcast(data: &[u8]) -> Result<Vec<Publish>, ErrorCode> {
    let members = Members::body(data).map_err(|Malformed| ErrorCode::InvalidJson)?;
    let names: Vec<String> = members
        .get("channels", ErrorCode::InvalidChannel)?
        .ok_or(ErrorCode::InvalidJson)?;
    let mut channels: Vec<ChannelName> = Vec::new();
    for name in &names {
        if channels.iter().any(|c| c.as_str() == name) {
            continue;
        }
        if channels.len() == LIMITS.max_broadcast_channels {
            return Err(ErrorCode::LimitExceeded);
        }
        channels.push(channel(name)?);
    }
    if channels.is_empty() {
        return Err(ErrorCode::LimitExceeded);
    }
    let (event, data, key) = members.message()?;
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

/// A WebSocket text frame: the op, or the refusal's echoed `id` and code.
pub fn client_op(data: &[u8]) -> Result<ClientOp, (Option<u64>, ErrorCode)> {
    let members = Members::body(data).map_err(|Malformed| (None, ErrorCode::InvalidJson))?;
    let id: Option<u64> = members
        .get("id", ErrorCode::InvalidJson)
        .map_err(|code| (None, code))?;
    let fail = |code| (id, code);
    let op: String = members
        .get("op", ErrorCode::UnknownOp)
        .map_err(fail)?
        .ok_or(fail(ErrorCode::InvalidJson))?;
    match op.as_str() {
        "subscribe" => Ok(ClientOp::Subscribe {
            id,
            channel: members.channel().map_err(fail)?,
            since: members.since().map_err(fail)?,
        }),
        "unsubscribe" => Ok(ClientOp::Unsubscribe {
            id,
            channel: members.channel().map_err(fail)?,
        }),
        "publish" => Ok(ClientOp::Publish {
            id,
            publish: members.publish().map_err(fail)?,
        }),
        "ping" => Ok(ClientOp::Ping { id }),
        "auth" => Ok(ClientOp::Auth {
            id,
            token: members.token().map_err(fail)?,
        }),
        "refresh" => Ok(ClientOp::Refresh {
            id,
            token: members.token().map_err(fail)?,
        }),
        // Rooms: who is in a channel, or only the counts. Whether the connection subscribes to
        // it and whether its namespace has presence are decided when the op runs, not here.
        "presence" => Ok(ClientOp::Presence {
            id,
            channel: members.channel().map_err(fail)?,
        }),
        "presence_stats" => Ok(ClientOp::PresenceStats {
            id,
            channel: members.channel().map_err(fail)?,
        }),
        _ => Err(fail(ErrorCode::UnknownOp)),
    }
}
