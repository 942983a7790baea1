//! The fields of a JSON request body or WebSocket op: read as raw JSON, then typed one by one.
//!
//! serde only checks the shape (an object) and keeps each known field as raw JSON. Each field is
//! then converted on its own, so that:
//! - a string may use any JSON escape (`"chat\/room"`, PHP's default; `"p\u0069ng"`): strings
//!   are borrowed from the input when they have no escapes and owned when they do;
//! - a field of the wrong type gets that field's error code and a message naming the field, never
//!   a serde message about internal types;
//! - an op's `id` is read first, so an error in any other field still carries it;
//! - `"data": null` is data like any other JSON value (a missing `data` is not).

use std::{borrow::Cow, collections::HashSet};

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::Rejection;
use crate::{
    channel::ChannelName,
    error::ErrorCode,
    message::{Epoch, StreamPosition},
};

/// Every field any request or op may carry; unknown fields are ignored. `null` reads as absent,
/// except for `data`.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object")]
pub(super) struct Fields<'a> {
    #[serde(borrow)]
    pub op: Option<&'a RawValue>,
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    #[serde(borrow)]
    pub channel: Option<&'a RawValue>,
    #[serde(borrow)]
    pub channels: Option<&'a RawValue>,
    #[serde(borrow)]
    pub since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    pub data: Option<&'a RawValue>,
    #[serde(borrow)]
    pub event: Option<&'a RawValue>,
    #[serde(borrow)]
    pub idempotency_key: Option<&'a RawValue>,
    /// The subscriber token of an `auth` or `refresh` op.
    #[serde(borrow)]
    pub token: Option<&'a RawValue>,
}

/// `data` is any JSON value, `null` included: present means `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
#[serde(transparent)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct RawSince<'a> {
    offset: u64,
    #[serde(borrow)]
    epoch: Text<'a>,
}

/// Whether `json` (valid or not) is an object: serde's derived structs also read a JSON array
/// as their fields in order (`["ping",1,...]`), a shape the protocol does not have.
fn is_object(json: &[u8]) -> bool {
    json.iter().find(|b| !b" \t\n\r".contains(b)) == Some(&b'{')
}

impl<'a> Fields<'a> {
    pub fn parse(json: &'a [u8]) -> Result<Self, Rejection> {
        let invalid =
            |e: String| Rejection::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}"));
        // serde_json checks UTF-8 only in the strings it reads, not in those of unknown fields it
        // skips; JSON text is UTF-8 throughout (RFC 8259 8.1).
        let text = std::str::from_utf8(json).map_err(|e| invalid(format!("not UTF-8 ({e})")))?;
        let fields: Self = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if !is_object(json) {
            return Err(invalid("expected a JSON object".to_owned()));
        }
        Ok(fields)
    }
}

/// A required field: missing (or `null`) is `invalid_json`.
pub(super) fn required<T>(value: Option<T>, field: &str) -> Result<T, Rejection> {
    value.ok_or_else(|| Rejection::new(ErrorCode::InvalidJson, format!("missing field `{field}`")))
}

/// A string field; another type is refused with `code`.
pub(super) fn text<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
    code: ErrorCode,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    raw.map(|raw| {
        serde_json::from_str::<Text<'a>>(raw.get())
            .map(|t| t.0)
            .map_err(|_| Rejection::new(code, format!("`{field}` must be a string")))
    })
    .transpose()
}

/// The op's correlation id: a non-negative integer.
pub(super) fn id(raw: Option<&RawValue>) -> Result<Option<u64>, Rejection> {
    raw.map(|raw| {
        serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            Rejection::new(
                ErrorCode::InvalidJson,
                "`id` must be a non-negative integer",
            )
        })
    })
    .transpose()
}

/// `since: {"offset": <u64>, "epoch": "<epoch>"}`; anything else is `invalid_position`.
pub(super) fn since(raw: Option<&RawValue>) -> Result<Option<StreamPosition>, Rejection> {
    let Some(raw) = raw else { return Ok(None) };
    let bad = |why: &str| Rejection::new(ErrorCode::InvalidPosition, format!("`since` {why}"));
    let shape = || bad(r#"must be {"offset": <non-negative integer>, "epoch": "<epoch>"}"#);
    if !is_object(raw.get().as_bytes()) {
        return Err(shape());
    }
    let s: RawSince<'_> = serde_json::from_str(raw.get()).map_err(|_| shape())?;
    let epoch = Epoch::parse(&s.epoch.0).ok_or_else(|| bad("has an invalid epoch"))?;
    Ok(Some(StreamPosition {
        epoch,
        offset: s.offset,
    }))
}

/// `channels: ["a", "b", ...]`, each entry a string.
pub(super) fn text_list<'a>(
    raw: Option<&'a RawValue>,
    field: &str,
) -> Result<Option<Vec<Cow<'a, str>>>, Rejection> {
    raw.map(|raw| {
        serde_json::from_str::<Vec<Text<'a>>>(raw.get())
            .map(|v| v.into_iter().map(|t| t.0).collect())
            .map_err(|_| {
                Rejection::new(
                    ErrorCode::InvalidChannel,
                    format!("`{field}` must be an array of channel names"),
                )
            })
    })
    .transpose()
}

/// Validates channel names and drops repeats, keeping first-seen order. A repeat costs one hash
/// lookup (no parse, no allocation), and the list is refused with `limit_exceeded` as soon as it
/// names more than `max` distinct channels, so a huge list is rejected after at most `max`
/// parses. `per` completes the limit's message ("at most 64 channels per connection").
pub fn distinct_channels<S: AsRef<str>>(
    names: impl IntoIterator<Item = S>,
    max_len: usize,
    max: usize,
    per: &str,
) -> Result<Vec<ChannelName>, Rejection> {
    let mut seen: HashSet<ChannelName> = HashSet::new();
    let mut out = Vec::new();
    for name in names {
        let name = name.as_ref();
        if seen.contains(name) {
            continue;
        }
        if out.len() == max {
            return Err(Rejection::new(
                ErrorCode::LimitExceeded,
                format!("at most {max} channels {per}"),
            ));
        }
        let channel = super::channel(name, max_len)?;
        seen.insert(channel.clone());
        out.push(channel);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Fields<'_> {
        Fields::parse(json.as_bytes()).expect("an object")
    }

    #[test]
    fn strings_with_escapes_are_read_like_plain_ones() {
        let f = fields(r#"{"channel":"chat\/room","event":"p\u0069ng","op":"ping"}"#);
        let channel = text(f.channel, "channel", ErrorCode::InvalidChannel).expect("string");
        assert_eq!(channel.as_deref(), Some("chat/room"));
        assert!(matches!(channel, Some(Cow::Owned(_))), "escaped: owned");
        let op = text(f.op, "op", ErrorCode::UnknownOp).expect("string");
        assert!(matches!(op, Some(Cow::Borrowed("ping"))), "plain: borrowed");
        let event = text(f.event, "event", ErrorCode::InvalidEvent).expect("string");
        assert_eq!(event.as_deref(), Some("ping"));
    }

    #[test]
    fn data_null_is_present_and_other_nulls_are_absent() {
        let f = fields(r#"{"data":null,"channel":null}"#);
        assert_eq!(f.data.map(RawValue::get), Some("null"));
        assert!(f.channel.is_none());
        assert!(fields(r#"{"channel":"a"}"#).data.is_none());
    }

    #[test]
    fn wrong_types_get_the_fields_code_and_name() {
        let f = fields(r#"{"channel":5,"id":"x","since":"7","idempotency_key":[]}"#);
        let err = text(f.channel, "channel", ErrorCode::InvalidChannel).expect_err("not a string");
        assert_eq!(err.code, ErrorCode::InvalidChannel);
        assert_eq!(err.message, "`channel` must be a string");
        assert_eq!(
            id(f.id).expect_err("not a number").code,
            ErrorCode::InvalidJson
        );
        assert_eq!(
            since(f.since).expect_err("not an object").code,
            ErrorCode::InvalidPosition
        );
        for bad in [
            r#"{"offset":"1","epoch":"a"}"#,
            r#"{"offset":-1,"epoch":"a"}"#,
            r#"{"epoch":"a"}"#,
        ] {
            let json = format!(r#"{{"since":{bad}}}"#);
            let f = fields(&json).since;
            assert_eq!(since(f).expect_err(bad).code, ErrorCode::InvalidPosition);
        }
        let f = fields(r#"{"since":{"offset":3,"epoch":"\u0061b"}}"#).since;
        assert_eq!(
            since(f)
                .expect("valid")
                .map(|p| (p.offset, p.epoch.to_string())),
            Some((3, "ab".to_owned()))
        );
    }

    #[test]
    fn invalid_utf8_is_refused_even_where_ignored() {
        // Found by the `publish` and `client_op` fuzz targets: bytes that are not UTF-8 in an
        // unknown field's string were skipped, so a body that is not JSON text was published.
        let body = b"{\"channel\":\"a\",\"data\":1,\"x\":\"\xff\"}";
        let err = Fields::parse(body).err().expect("not UTF-8");
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(err.message.contains("not UTF-8"), "{}", err.message);
    }

    #[test]
    fn arrays_are_not_objects() {
        // Found by the `client_op` and `publish` fuzz harnesses' reading of the rules: serde read
        // an array of the right length as the fields in order.
        let op = r#"["ping",7,null,null,null,null,null,null]"#;
        let err = Fields::parse(op.as_bytes()).err().expect("an array");
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(
            err.message.contains("expected a JSON object"),
            "{}",
            err.message
        );
        let f = fields(r#"{"since":[3,"ab"]}"#).since;
        assert_eq!(
            since(f).expect_err("array").code,
            ErrorCode::InvalidPosition
        );
        assert!(Fields::parse(b" \n{\"op\":\"ping\"}").is_ok());
    }

    #[test]
    fn shape_errors_do_not_name_internal_types() {
        for bad in ["[]", "1", "\"x\"", "null"] {
            let err = Fields::parse(bad.as_bytes()).err().expect(bad);
            assert_eq!(err.code, ErrorCode::InvalidJson);
            assert!(
                err.message.contains("expected a JSON object"),
                "{}",
                err.message
            );
        }
        assert!(Fields::parse(b"{").is_err());
    }

    #[test]
    fn distinct_channels_dedupes_before_the_limit_and_keeps_order() {
        let names = ["b", "a", "b"]
            .into_iter()
            .chain(std::iter::repeat_n("a", 10_000));
        let out = distinct_channels(names, 16, 2, "here").expect("two distinct");
        assert_eq!(
            out.iter().map(ChannelName::as_str).collect::<Vec<_>>(),
            ["b", "a"]
        );
        let err = distinct_channels(["a", "b", "c"], 16, 2, "here").expect_err("three");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
        assert_eq!(err.message, "at most 2 channels here");
        let err = distinct_channels(["a", "b c"], 16, 2, "here").expect_err("invalid");
        assert_eq!(err.code, ErrorCode::InvalidChannel);
    }

    #[test]
    fn distinct_channels_stops_at_the_first_name_over_the_limit() {
        // The invalid name after the limit is never parsed: the limit answers first.
        let names = (0..5).map(|i| i.to_string()).chain(["bad name".to_owned()]);
        let err = distinct_channels(names, 16, 3, "here").expect_err("too many");
        assert_eq!(err.code, ErrorCode::LimitExceeded);
    }
}
