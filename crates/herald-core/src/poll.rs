//! The long-polling answer (`GET /v1/poll`):
//! `{"messages":[{"channel","offset","epoch","event","from"?,"info"?,"data"}],"last_event_id",
//! "recovered"}`.
//!
//! `event` is always present (`message` when the publisher set none), as in SSE; `from` and
//! `info` only for a message a client published (as in every encoding of a message); a room's
//! join and leave are `herald.join` / `herald.leave` whose `data` is the member. Channel names,
//! event names and epochs are validated to characters that need no escaping in JSON; `data` is
//! the compact JSON exactly as published; the resume token is made of those same characters plus
//! `,` and `;`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::message::Message;

/// Encodes one poll answer.
pub fn response<'a>(
    messages: impl ExactSizeIterator<Item = &'a Message> + Clone,
    last_event_id: &str,
    recovered: bool,
) -> Bytes {
    let size: usize = messages.clone().map(|m| m.stored_len() + 32).sum();
    let mut out = BytesMut::with_capacity(size + last_event_id.len() + 64);
    out.put_slice(b"{\"messages\":[");
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_u8(b'{');
        crate::protocol::put_position(&mut out, m);
        out.put_slice(b",\"event\":\"");
        out.put_slice(m.event_name().as_bytes());
        out.put_u8(b'"');
        crate::protocol::put_sender(&mut out, m.sender.as_deref());
        out.put_slice(b",\"data\":");
        out.put_slice(&m.data);
        out.put_u8(b'}');
    }
    out.put_slice(b"],\"last_event_id\":\"");
    out.put_slice(last_event_id.as_bytes());
    out.put_slice(b"\",\"recovered\":");
    out.put_slice(if recovered { b"true" } else { b"false" });
    out.put_u8(b'}');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelName, Epoch, EventName};

    fn msg(channel: &str, offset: u64, event: Option<&str>, data: &str) -> Message {
        Message {
            channel: ChannelName::parse(channel).expect("channel"),
            offset,
            epoch: Epoch::parse("e1").expect("epoch"),
            event: event.map(|e| EventName::parse(e).expect("event")),
            data: Bytes::from(data.to_owned()),
            published_at_us: 0,
            sender: None,
        }
    }

    #[test]
    fn the_answer_is_the_documented_json() {
        let ms = [
            msg("chat:1", 4, None, r#"{"text":"a \"quote\""}"#),
            msg("news", 9, Some("headline"), "[1,2]"),
        ];
        let out = response(ms.iter(), "e1,4,chat:1;e1,9,news", true);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            v,
            serde_json::json!({
                "messages": [
                    {"channel": "chat:1", "offset": 4, "epoch": "e1", "event": "message",
                     "data": {"text": "a \"quote\""}},
                    {"channel": "news", "offset": 9, "epoch": "e1", "event": "headline",
                     "data": [1, 2]},
                ],
                "last_event_id": "e1,4,chat:1;e1,9,news",
                "recovered": true,
            })
        );
        let empty = response([].iter(), "", false);
        assert_eq!(
            &empty[..],
            br#"{"messages":[],"last_event_id":"","recovered":false}"#
        );
    }

    #[test]
    fn a_client_published_message_carries_its_sender() {
        let mut m = msg("chat:1", 3, None, r#"{"text":"hi"}"#);
        m.sender = Some(Box::new(crate::Sender {
            user: "al\"ice".into(),
            info: Some(Bytes::from_static(br#"{"name":"Alice"}"#)),
        }));
        let mut anonymous = msg("chat:1", 4, None, "1");
        anonymous.sender = Some(Box::new(crate::Sender {
            user: "bob".into(),
            info: None,
        }));
        let out = response([m, anonymous].iter(), "e1,4,chat:1", true);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(
            v["messages"],
            serde_json::json!([
                {"channel": "chat:1", "offset": 3, "epoch": "e1", "event": "message",
                 "from": "al\"ice", "info": {"name": "Alice"}, "data": {"text": "hi"}},
                {"channel": "chat:1", "offset": 4, "epoch": "e1", "event": "message",
                 "from": "bob", "data": 1},
            ])
        );
    }
}
