//! docs/api.md's publish bodies and client ops, read a second way: the body as a list of JSON
//! members (duplicates kept, so they can be refused), each value converted on its own.
//!
//! Rules: the body is one JSON object; a member given twice, or a known member of the wrong
//! type, is `invalid_json` (and no `id` is echoed); `null` means absent, except for `data`,
//! where it is the value `null`; unknown members are ignored; string escapes mean what JSON
//! says they mean. Then the checks of each op in the order the API lists its fields.

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
    protocol::{ClientOp, MAX_IDEMPOTENCY_KEY_LEN, Publish},
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

/// A body the rules refuse before looking at any op: `invalid_json`, no `id`.
#[derive(Debug)]
struct Malformed;

impl Members {
    fn parse(text: &str) -> Result<Self, Malformed> {
        serde_json::from_str(text).map_err(|_| Malformed)
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

    /// `name` converted to `T`; `null` counts as absent.
    fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, Malformed> {
        match self.raw(name)? {
            None => Ok(None),
            Some(raw) => serde_json::from_str::<Option<T>>(raw.get()).map_err(|_| Malformed),
        }
    }

    /// `since`: `null`, or an object with a `u64` `offset` and a string `epoch`.
    fn since(&self) -> Result<Option<(u64, String)>, Malformed> {
        let Some(raw) = self.raw("since")? else {
            return Ok(None);
        };
        if raw.get() == "null" {
            return Ok(None);
        }
        let inner = Members::parse(raw.get())?;
        let offset = inner.raw("offset")?.ok_or(Malformed)?;
        let epoch = inner.raw("epoch")?.ok_or(Malformed)?;
        Ok(Some((
            serde_json::from_str(offset.get()).map_err(|_| Malformed)?,
            serde_json::from_str(epoch.get()).map_err(|_| Malformed)?,
        )))
    }
}

/// The members every publish-like request has, type-checked.
struct Fields {
    channel: Option<String>,
    data: Option<String>,
    event: Option<String>,
    idempotency_key: Option<String>,
}

impl Fields {
    fn read(m: &Members) -> Result<Self, Malformed> {
        Ok(Self {
            channel: m.get("channel")?,
            data: m.raw("data")?.map(|raw| raw.get().to_owned()),
            event: m.get("event")?,
            idempotency_key: m.get("idempotency_key")?,
        })
    }

    /// The publish these fields describe for `channel`, checked in the documented order.
    fn publish(&self, channel: Option<&str>) -> Result<Publish, ErrorCode> {
        let channel = self::channel(channel.ok_or(ErrorCode::InvalidJson)?)?;
        let (event, data, key) = self.message()?;
        Ok(Publish {
            channel,
            event,
            data,
            idempotency_key: key,
        })
    }

    /// Event, data and idempotency key.
    fn message(&self) -> Result<(Option<EventName>, bytes::Bytes, Option<String>), ErrorCode> {
        let event = self
            .event
            .as_deref()
            .map(|e| EventName::parse(e).map_err(|_| ErrorCode::InvalidEvent))
            .transpose()?;
        let data = json::compact(self.data.as_deref().ok_or(ErrorCode::InvalidJson)?);
        if data.len() > LIMITS.max_message_bytes {
            return Err(ErrorCode::PayloadTooLarge);
        }
        let key = match &self.idempotency_key {
            Some(k)
                if k.is_empty()
                    || k.len() > MAX_IDEMPOTENCY_KEY_LEN
                    || !k.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
            {
                return Err(ErrorCode::BadRequest);
            }
            k => k.clone(),
        };
        Ok((event, data.into(), key))
    }
}

fn channel(name: &str) -> Result<ChannelName, ErrorCode> {
    ChannelName::parse_with_limit(name, LIMITS.max_channel_len)
        .map_err(|_| ErrorCode::InvalidChannel)
}

fn body(data: &[u8]) -> Result<(Members, Fields), Malformed> {
    let text = std::str::from_utf8(data).map_err(|_| Malformed)?;
    let members = Members::parse(text)?;
    let fields = Fields::read(&members)?;
    // Read (and so type-checked) by both endpoints, used by broadcast only.
    members.get::<Vec<String>>("channels")?;
    Ok((members, fields))
}

/// `POST /v1/publish`.
pub fn publish(data: &[u8]) -> Result<Publish, ErrorCode> {
    let (_, fields) = body(data).map_err(|Malformed| ErrorCode::InvalidJson)?;
    fields.publish(fields.channel.as_deref())
}

/// `POST /v1/broadcast`: one publish per distinct channel, in the order listed.
pub fn broadcast(data: &[u8]) -> Result<Vec<Publish>, ErrorCode> {
    let (members, fields) = body(data).map_err(|Malformed| ErrorCode::InvalidJson)?;
    let names: Vec<String> = members
        .get("channels")
        .map_err(|Malformed| ErrorCode::InvalidJson)?
        .ok_or(ErrorCode::InvalidJson)?;
    if names.is_empty() || names.len() > LIMITS.max_broadcast_channels {
        return Err(ErrorCode::LimitExceeded);
    }
    let (event, data, key) = fields.message()?;
    let mut out: Vec<Publish> = Vec::new();
    for name in &names {
        let channel = channel(name)?;
        if !out.iter().any(|p| p.channel == channel) {
            out.push(Publish {
                channel,
                event: event.clone(),
                data: data.clone(),
                idempotency_key: key.clone(),
            });
        }
    }
    Ok(out)
}

/// A WebSocket text frame: the op, or the refusal's echoed `id` and code.
pub fn client_op(data: &[u8]) -> Result<ClientOp, (Option<u64>, ErrorCode)> {
    let malformed = |Malformed| (None, ErrorCode::InvalidJson);
    let text = std::str::from_utf8(data).map_err(|_| (None, ErrorCode::InvalidJson))?;
    let members = Members::parse(text).map_err(malformed)?;
    let op: Option<String> = members.get("op").map_err(malformed)?;
    let id: Option<u64> = members.get("id").map_err(malformed)?;
    let since = members.since().map_err(malformed)?;
    let fields = Fields::read(&members).map_err(malformed)?;
    let fail = |code| (id, code);
    let need_channel = || {
        fields
            .channel
            .as_deref()
            .ok_or(ErrorCode::InvalidJson)
            .and_then(channel)
            .map_err(fail)
    };
    match op.as_deref() {
        None => Err(fail(ErrorCode::InvalidJson)),
        Some("subscribe") => {
            let since = since
                .map(|(offset, epoch)| {
                    let epoch = Epoch::parse(&epoch).ok_or(fail(ErrorCode::InvalidPosition))?;
                    Ok(StreamPosition { epoch, offset })
                })
                .transpose()?;
            Ok(ClientOp::Subscribe {
                id,
                channel: need_channel()?,
                since,
            })
        }
        Some("unsubscribe") => Ok(ClientOp::Unsubscribe {
            id,
            channel: need_channel()?,
        }),
        Some("publish") => Ok(ClientOp::Publish {
            id,
            publish: fields.publish(fields.channel.as_deref()).map_err(fail)?,
        }),
        Some("ping") => Ok(ClientOp::Ping { id }),
        Some(_) => Err(fail(ErrorCode::UnknownOp)),
    }
}
