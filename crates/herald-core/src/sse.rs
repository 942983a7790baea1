//! Server-Sent Events encoding (the `text/event-stream` format browsers' `EventSource` reads).
//!
//! A message event is split in two: the per-message body (`event:` + `data:` lines) is encoded
//! once and shared by every subscriber, while the `id:` line, which holds each stream's own
//! resume token, is written per connection in front of it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::Message;

/// Appends `field: value` lines, splitting `value` at line breaks so a value containing `\n`,
/// `\r\n` or `\r` can never end the event early or inject fields.
fn put_field(out: &mut BytesMut, field: &str, value: &str) {
    let mut rest = value;
    loop {
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        out.put_slice(field.as_bytes());
        out.put_slice(b": ");
        out.put_slice(&rest.as_bytes()[..end]);
        out.put_u8(b'\n');
        if end == rest.len() {
            break;
        }
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
}

/// The shared part of a message event: `event:` and `data:` lines and the blank line that
/// dispatches it. The caller writes `id:` (see [`id_line`]) before it.
pub fn message_body(msg: &Message) -> Bytes {
    let mut out = BytesMut::with_capacity(msg.data.len() + msg.event_name().len() + 16);
    put_field(&mut out, "event", msg.event_name());
    // Data is compact JSON (one line) but split defensively anyway.
    put_field(
        &mut out,
        "data",
        std::str::from_utf8(&msg.data).unwrap_or("null"),
    );
    out.put_u8(b'\n');
    out.freeze()
}

/// The shared part of a message event on a stream that asked for envelopes (`?envelope=true`):
/// `data:` is `json`, the message's JSON object as WebSocket delivers it
/// ([`crate::protocol::message_frame`]: channel, offset, epoch, sender and data), so a page can
/// read `from` and `info` from an `EventSource`.
pub fn envelope_body(msg: &Message, json: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(json.len() + msg.event_name().len() + 16);
    put_field(&mut out, "event", msg.event_name());
    put_field(
        &mut out,
        "data",
        std::str::from_utf8(json).unwrap_or("null"),
    );
    out.put_u8(b'\n');
    out.freeze()
}

/// A complete event with optional id, event type and data.
pub fn event(id: Option<&str>, event: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 64);
    if let Some(id) = id {
        // Like every id: one line, no NUL (a browser ignores an `id:` containing NUL).
        id_line(&mut out, id);
    }
    put_field(&mut out, "event", event);
    put_field(&mut out, "data", data);
    out.put_u8(b'\n');
    out.freeze()
}

/// `id: <token>\n`. Ids must not contain line breaks (tokens never do; this strips them anyway).
pub fn id_line(out: &mut BytesMut, token: &str) {
    out.put_slice(b"id: ");
    out.extend(
        token
            .bytes()
            .filter(|b| *b != b'\n' && *b != b'\r' && *b != 0),
    );
    out.put_u8(b'\n');
}

/// `retry: <ms>`: how long EventSource waits before reconnecting.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// A comment line: ignored by EventSource, used as heartbeat to keep proxies and NATs open and
/// to find dead connections (a write to a closed socket fails).
pub const HEARTBEAT: &[u8] = b":\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelName, EventName, message::Epoch};

    fn msg(event: Option<&str>, data: &str) -> Message {
        Message {
            channel: ChannelName::parse("news").expect("name"),
            offset: 7,
            epoch: Epoch::parse("e1").expect("epoch"),
            event: event.map(|e| EventName::parse(e).expect("event")),
            data: Bytes::copy_from_slice(data.as_bytes()),
            published_at_us: 0,
            sender: None,
        }
    }

    #[test]
    fn message_body_has_event_and_data() {
        assert_eq!(
            &message_body(&msg(None, "{\"a\":1}"))[..],
            b"event: message\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(
            &message_body(&msg(Some("upd"), "1"))[..],
            b"event: upd\ndata: 1\n\n"
        );
    }

    #[test]
    fn envelopes_carry_the_json_object() {
        let m = msg(Some("upd"), "1");
        assert_eq!(
            &envelope_body(&m, br#"{"type":"message","data":1}"#)[..],
            b"event: upd\ndata: {\"type\":\"message\",\"data\":1}\n\n"
        );
    }

    #[test]
    fn multi_line_values_become_several_data_lines() {
        let e = event(Some("t"), "herald.error", "a\nb\r\nc\rd");
        assert_eq!(
            &e[..],
            b"id: t\nevent: herald.error\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
        );
    }

    #[test]
    fn event_ids_are_one_line_without_nul() {
        // Found by the `no_id_event_or_data_breaks_an_sse_event` property: the id was split into
        // two `id:` lines (the browser kept the second) or kept a NUL (the browser ignored it).
        assert_eq!(
            &event(Some("a\nb\0c"), "e", "d")[..],
            b"id: abc\nevent: e\ndata: d\n\n"
        );
    }

    #[test]
    fn id_line_strips_line_breaks() {
        let mut b = BytesMut::new();
        id_line(&mut b, "a\nb\rc");
        assert_eq!(&b[..], b"id: abc\n");
    }
}
