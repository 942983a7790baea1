//! Reference readings of what Herald writes, used to check its encoders from the outside.
//!
//! [`sse_stream`] interprets bytes the way a browser's `EventSource` does (the WHATWG
//! "interpreting an event stream" rules, written from the spec, not from `sse.rs`), so a check
//! sees exactly the events, types, ids and data a browser would. [`check_message_frame`] reads a
//! WebSocket `message` frame as any JSON client would, and [`frame_header`] decodes an RFC 6455
//! frame header.

use crate::{message::Message, protocol::Opcode, sse};

/// One dispatched SSE event, as the browser sees it, plus the field names that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event type (`message` when no `event:` field was given).
    pub event: String,
    pub data: String,
    /// The stream's last event id when this event was dispatched.
    pub id: String,
    /// Names of the field lines since the previous blank line, in order.
    pub fields: Vec<String>,
}

/// What a browser makes of a byte stream.
#[derive(Debug, Default)]
pub struct SseStream {
    pub events: Vec<SseEvent>,
    /// Field lines after the last blank line (an event still being received).
    pub pending: Vec<String>,
    /// The last valid `retry:` value.
    pub retry: Option<u64>,
}

/// Interprets `bytes` as a `text/event-stream`.
pub fn sse_stream(bytes: &[u8]) -> SseStream {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = SseStream::default();
    let (mut event, mut data, mut id) = (String::new(), String::new(), String::new());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        let line = &rest[..end];
        rest = &rest[end..];
        rest = rest
            .strip_prefix("\r\n")
            .or_else(|| rest.strip_prefix('\r'))
            .or_else(|| rest.strip_prefix('\n'))
            .unwrap_or(rest);
        if line.is_empty() {
            let fields = std::mem::take(&mut out.pending);
            if data.is_empty() {
                event.clear();
                continue;
            }
            data.pop(); // the final LF
            out.events.push(SseEvent {
                event: if event.is_empty() {
                    "message".to_owned()
                } else {
                    std::mem::take(&mut event)
                },
                data: std::mem::take(&mut data),
                id: id.clone(),
                fields,
            });
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        out.pending.push(field.to_owned());
        match field {
            "event" => value.clone_into(&mut event),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => value.clone_into(&mut id),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                out.retry = value.parse().ok();
            }
            _ => {}
        }
    }
    out
}

/// `value` as the browser reassembles it from `data:` lines: every line break becomes `\n`.
pub fn normalize_breaks(value: &str) -> String {
    value.replace("\r\n", "\n").replace('\r', "\n")
}

/// The id a browser reports after `id_line(token)`: the token minus the characters an `id:`
/// line cannot carry.
pub fn expected_id(token: &str) -> String {
    token.replace(['\r', '\n', '\0'], "")
}

/// Asserts that `id: <token>` followed by the shared body of `msg` is exactly one event, made
/// of one `id`, one `event` and `data` fields only, carrying `msg`'s type and data unchanged.
pub fn check_sse_message(token: &str, msg: &Message) {
    let mut bytes = bytes::BytesMut::new();
    sse::id_line(&mut bytes, token);
    bytes.extend_from_slice(&sse::message_body(msg));
    let stream = sse_stream(&bytes);
    assert!(stream.pending.is_empty(), "unterminated event: {bytes:?}");
    let [event] = &stream.events[..] else {
        panic!("{} events from one message: {bytes:?}", stream.events.len());
    };
    // Compact JSON is one `data:` line; anything else may take several, never another field.
    assert!(
        event.fields.len() >= 3
            && event.fields[..2] == ["id", "event"]
            && event.fields[2..].iter().all(|f| f == "data"),
        "fields {:?} in {bytes:?}",
        event.fields
    );
    assert_eq!(event.event, msg.event_name());
    assert_eq!(event.id, expected_id(token));
    let data = std::str::from_utf8(&msg.data).unwrap_or("null");
    assert_eq!(event.data, normalize_breaks(data));
}

/// Asserts that `sse::event(id, name, data)` is exactly one event carrying `data` (line breaks
/// normalised) and only `id`/`event`/`data` fields, whatever the three strings contain.
pub fn check_sse_event(id: Option<&str>, name: &str, data: &str) {
    let bytes = sse::event(id, name, data);
    let stream = sse_stream(&bytes);
    assert!(stream.pending.is_empty(), "unterminated event: {bytes:?}");
    let [event] = &stream.events[..] else {
        panic!("{} events from one: {bytes:?}", stream.events.len());
    };
    assert!(
        event
            .fields
            .iter()
            .all(|f| matches!(f.as_str(), "id" | "event" | "data")),
        "foreign field in {bytes:?}"
    );
    assert_eq!(event.data, normalize_breaks(data));
    if let Some(id) = id {
        assert_eq!(event.id, expected_id(id));
    }
    if !name.contains(['\r', '\n']) {
        assert_eq!(event.event, if name.is_empty() { "message" } else { name });
    }
}

/// Asserts that the WebSocket `message` frame of `msg` is one JSON object with exactly the
/// documented members and `msg`'s values (`data` as the same JSON value).
pub fn check_message_frame(msg: &Message) {
    let frame = crate::protocol::message_frame(msg);
    let v: serde_json::Value = serde_json::from_slice(&frame)
        .unwrap_or_else(|e| panic!("message frame is not JSON ({e}): {frame:?}"));
    check_message_members(msg, &v, false);
}

/// Reads a `GET /v1/poll` answer carrying `msg`, resumable from `token`, as any JSON client
/// would: one message with every member unchanged (`event` always present), and the token.
pub fn check_poll_answer(token: &str, msg: &Message) {
    let answer = crate::poll::response(std::iter::once(msg), token, true);
    let v: serde_json::Value = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("poll answer is not JSON ({e}): {answer:?}"));
    let obj = v.as_object().expect("answer is an object");
    assert_eq!(obj.len(), 3, "members of {answer:?}");
    assert_eq!(v["last_event_id"], token);
    assert_eq!(v["recovered"], true);
    let [item] = &v["messages"].as_array().expect("messages")[..] else {
        panic!("not one message: {answer:?}");
    };
    check_message_members(msg, item, true);
}

/// `v` is one JSON object holding `msg`'s members (`type` only in a WebSocket frame, `event`
/// always in a poll answer; `from` and `info` for a message a client published, `info` the same
/// JSON value as its sender's token claim).
fn check_message_members(msg: &Message, v: &serde_json::Value, poll: bool) {
    let obj = v.as_object().expect("frame is an object");
    let sender = msg.sender.as_deref();
    let from = sender.map_or(0, |s| 1 + usize::from(s.info.is_some()));
    match sender {
        Some(s) => {
            assert_eq!(v["from"], &*s.user, "from in {v}");
            let info = s.info.as_ref().map(|i| {
                serde_json::from_slice::<serde_json::Value>(i).expect("an info claim is JSON")
            });
            assert_eq!(obj.get("info"), info.as_ref(), "info in {v}");
        }
        None => assert!(obj.get("from").is_none() && obj.get("info").is_none()),
    }
    if poll {
        assert_eq!(obj.len(), 5 + from, "members of {v}");
        assert_eq!(v["event"], msg.event_name());
    } else {
        let want_len = if msg.event.is_some() { 6 } else { 5 };
        assert_eq!(obj.len(), want_len + from, "members of {v}");
        assert_eq!(v["type"], "message");
        match &msg.event {
            Some(e) => assert_eq!(v["event"], e.as_str()),
            None => assert!(obj.get("event").is_none()),
        }
    }
    assert_eq!(v["channel"], msg.channel.as_str());
    assert_eq!(v["offset"].as_u64(), Some(msg.offset));
    assert_eq!(v["epoch"], msg.epoch.as_str());
    let data: serde_json::Value = serde_json::from_slice(&msg.data).expect("data is JSON");
    assert_eq!(v["data"], data);
}

/// A decoded RFC 6455 frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload_len: u64,
    /// Header bytes, including the extended length.
    pub header_len: usize,
    /// Whether the length used the shortest encoding (RFC 6455 5.2 requires it).
    pub minimal: bool,
}

/// Decodes the header at the start of `frame` (an unmasked server frame: no masking key).
pub fn frame_header(frame: &[u8]) -> FrameHeader {
    let (b0, b1) = (frame[0], frame[1]);
    let (payload_len, header_len, minimal) = match b1 & 0x7f {
        126 => {
            let n = u16::from_be_bytes([frame[2], frame[3]]) as u64;
            (n, 4, n >= 126)
        }
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&frame[2..10]);
            let n = u64::from_be_bytes(b);
            (n, 10, n > 0xffff && n >> 63 == 0)
        }
        n => (n as u64, 2, true),
    };
    FrameHeader {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        masked: b1 & 0x80 != 0,
        payload_len,
        header_len,
        minimal,
    }
}

/// Asserts that `frame(opcode, payload)` is one final, unmasked frame of that opcode whose
/// header announces exactly `payload.len()` bytes in the shortest encoding.
pub fn check_frame(opcode: Opcode, payload: &[u8]) {
    let f = crate::protocol::frame(opcode, payload);
    let h = frame_header(&f);
    assert!(h.fin && !h.masked && h.minimal, "{h:?}");
    assert_eq!(h.opcode, opcode as u8);
    assert_eq!(h.payload_len, payload.len() as u64);
    assert_eq!(f.len(), h.header_len + payload.len());
    assert_eq!(&f[h.header_len..], payload);
}
