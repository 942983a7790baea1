//! Property tests: no data, event type or id can break the SSE framing or the WebSocket
//! envelope, and no token `sub` or `info` a room frame. Every case is read back with the
//! reference readers in [`super::wire`].

use bytes::Bytes;
use proptest::prelude::*;

use super::{strategies, wire};
use crate::{
    error::ErrorCode,
    protocol::{self, Opcode},
};

/// Frame sizes around every length-encoding boundary of RFC 6455 5.2.
const BOUNDARIES: [usize; 9] = [0, 1, 125, 126, 127, 65_535, 65_536, 65_537, 200_000];

#[test]
fn frame_headers_are_exact_at_every_length_boundary() {
    for len in BOUNDARIES {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        for op in [Opcode::Text, Opcode::Ping, Opcode::Pong, Opcode::Close] {
            wire::check_frame(op, &payload);
        }
        let h = wire::frame_header(&protocol::frame(Opcode::Text, &payload));
        let want = match len {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        };
        assert_eq!(h.header_len, want, "header of a {len}-byte frame");
    }
}

#[test]
fn the_reference_sse_reader_follows_the_spec() {
    let s = wire::sse_stream(b"\xef\xbb\xbfretry: 10\r\nid: a\rdata:x\ndata\n:c\nevent: e\n\nid: b\0\ndata: y\n\ndata: z");
    assert_eq!(s.retry, Some(10));
    assert_eq!(s.events.len(), 2);
    assert_eq!(
        (
            s.events[0].event.as_str(),
            s.events[0].data.as_str(),
            s.events[0].id.as_str()
        ),
        ("e", "x\n", "a")
    );
    // An id containing NUL is ignored; the last id stays.
    assert_eq!(
        (s.events[1].data.as_str(), s.events[1].id.as_str()),
        ("y", "a")
    );
    assert_eq!(s.pending, ["data"]);
}

proptest! {
    #[test]
    fn no_id_event_or_data_breaks_an_sse_event(
        id in prop::option::of(strategies::hostile_text()),
        event in strategies::hostile_text(),
        data in strategies::hostile_text(),
    ) {
        wire::check_sse_event(id.as_deref(), &event, &data);
    }

    #[test]
    fn a_message_is_one_sse_event_whatever_its_token_and_data(
        token in strategies::hostile_text(),
        msg in strategies::message(),
        raw in strategies::hostile_text(),
    ) {
        wire::check_sse_message(&token, &msg);
        // Data that is not compact JSON (it never is from a publish) still cannot escape.
        let msg = crate::message::Message { data: Bytes::from(raw), ..msg };
        wire::check_sse_message(&token, &msg);
    }

    #[test]
    fn a_message_frame_reads_back_as_the_message(msg in strategies::message()) {
        wire::check_message_frame(&msg);
    }

    #[test]
    fn a_poll_answer_reads_back_as_the_message(msg in strategies::message()) {
        let token = format!("{},{},{}", msg.epoch.as_str(), msg.offset, msg.channel.as_str());
        wire::check_poll_answer(&token, &msg);
    }

    #[test]
    fn reply_frames_read_back(
        id in prop::option::of(any::<u64>()),
        channel in strategies::channel(),
        epoch in strategies::epoch(),
        offset in any::<u64>(),
        recovered in any::<bool>(),
        text in strategies::hostile_text(),
    ) {
        let pos = crate::message::StreamPosition { epoch, offset };
        let read = |b: Bytes| -> serde_json::Value { serde_json::from_slice(&b).expect("JSON frame") };
        let v = read(protocol::subscribed_frame(id, &channel, &pos, recovered));
        prop_assert_eq!((&v["channel"], v["offset"].as_u64(), &v["epoch"]), (&serde_json::json!(channel.as_str()), Some(offset), &serde_json::json!(pos.epoch.as_str())));
        prop_assert_eq!((&v["recovered"], v["id"].as_u64()), (&serde_json::json!(recovered), id));
        let v = read(protocol::published_frame(id, &channel, &pos));
        prop_assert_eq!((&v["type"], v["offset"].as_u64(), v["id"].as_u64()), (&serde_json::json!("published"), Some(offset), id));
        let v = read(protocol::unsubscribed_frame(id, &channel));
        prop_assert_eq!((&v["channel"], v["id"].as_u64()), (&serde_json::json!(channel.as_str()), id));
        let v = read(protocol::pong_frame(id));
        prop_assert_eq!((&v["type"], v["id"].as_u64()), (&serde_json::json!("pong"), id));
        let v = read(protocol::error_frame(id, ErrorCode::BadRequest, &text));
        prop_assert_eq!((&v["message"], v["id"].as_u64()), (&serde_json::json!(text), id));
    }

    #[test]
    fn frame_headers_announce_the_payload_length(
        len in prop_oneof![0usize..300, 65_400usize..65_700, Just(125), Just(126), Just(65_535), Just(65_536)],
        op in prop::sample::select(vec![Opcode::Text, Opcode::Close, Opcode::Ping, Opcode::Pong]),
    ) {
        wire::check_frame(op, &vec![b'x'; len]);
    }

    #[test]
    fn close_frames_fit_a_control_frame(code in any::<u16>(), reason in strategies::hostile_text().prop_map(|s| s.repeat(5))) {
        let f = protocol::close_frame(code, &reason);
        let h = wire::frame_header(&f);
        prop_assert!(h.payload_len <= 125);
        let payload = &f[h.header_len..];
        prop_assert_eq!(&payload[..2], &code.to_be_bytes());
        let text = std::str::from_utf8(&payload[2..]).expect("reason stays UTF-8");
        prop_assert!(reason.starts_with(text));
    }

    /// A token's `sub` and `info`, whatever they hold, read back from every room encoding:
    /// `from`/`info` of its messages, `join`/`leave`, presence listings.
    #[test]
    fn a_member_reads_back_in_every_room_encoding(
        user in strategies::hostile_text(),
        info in prop::option::of(strategies::json()),
    ) {
        let info = info.map(|v| serde_json::to_vec(&v).expect("a value serialises"));
        super::rooms::check(&user, info.as_deref());
    }
}
