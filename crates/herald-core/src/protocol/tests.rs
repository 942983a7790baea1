use super::*;
use crate::message::Epoch;
use proptest::prelude::*;

const LIMITS: Limits = Limits {
    max_channel_len: 32,
    max_message_bytes: 64,
    max_broadcast_channels: 3,
};

fn code<T: std::fmt::Debug>(r: Result<T, Rejection>) -> ErrorCode {
    r.expect_err("should be rejected").code
}

#[test]
fn publish_parses_and_compacts_data() {
    let p = parse_publish(
        br#"{"channel":"news","data":{ "a" : [1, 2] },"event":"upd","idempotency_key":"k1"}"#,
        &LIMITS,
    )
    .expect("valid");
    assert_eq!(p.channel.as_str(), "news");
    assert_eq!(&p.data[..], br#"{"a":[1,2]}"#);
    assert_eq!(p.event.as_ref().map(|e| e.as_str()), Some("upd"));
    assert_eq!(p.idempotency_key.as_deref(), Some("k1"));
}

#[test]
fn publish_rejections_carry_the_right_code() {
    assert_eq!(code(parse_publish(b"{", &LIMITS)), ErrorCode::InvalidJson);
    assert_eq!(code(parse_publish(b"[]", &LIMITS)), ErrorCode::InvalidJson);
    assert_eq!(
        code(parse_publish(br#"{"data":1}"#, &LIMITS)),
        ErrorCode::InvalidJson
    );
    assert_eq!(
        code(parse_publish(br#"{"channel":"a"}"#, &LIMITS)),
        ErrorCode::InvalidJson
    );
    assert_eq!(
        code(parse_publish(br#"{"channel":"a b","data":1}"#, &LIMITS)),
        ErrorCode::InvalidChannel
    );
    let long = format!(r#"{{"channel":"{}","data":1}}"#, "a".repeat(33));
    assert_eq!(
        code(parse_publish(long.as_bytes(), &LIMITS)),
        ErrorCode::InvalidChannel
    );
    assert_eq!(
        code(parse_publish(
            br#"{"channel":"a","data":1,"event":"herald.x"}"#,
            &LIMITS
        )),
        ErrorCode::InvalidEvent
    );
    assert_eq!(
        code(parse_publish(
            br#"{"channel":"a","data":1,"idempotency_key":""}"#,
            &LIMITS
        )),
        ErrorCode::BadRequest
    );
    let big = format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(100));
    assert_eq!(
        code(parse_publish(big.as_bytes(), &LIMITS)),
        ErrorCode::PayloadTooLarge
    );
    assert_eq!(
        code(parse_publish(b"\xff\xfe", &LIMITS)),
        ErrorCode::InvalidJson
    );
}

#[test]
fn broadcast_dedupes_channels_and_enforces_the_limit() {
    let b = parse_broadcast(br#"{"channels":["a","b","a"],"data":true}"#, &LIMITS).expect("valid");
    assert_eq!(
        b.iter().map(|p| p.channel.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        code(parse_broadcast(br#"{"channels":[],"data":1}"#, &LIMITS)),
        ErrorCode::LimitExceeded
    );
    assert_eq!(
        code(parse_broadcast(
            br#"{"channels":["a","b","c","d"],"data":1}"#,
            &LIMITS
        )),
        ErrorCode::LimitExceeded
    );
    assert_eq!(
        code(parse_broadcast(
            br#"{"channels":["ok","no way"],"data":1}"#,
            &LIMITS
        )),
        ErrorCode::InvalidChannel
    );
}

#[test]
fn client_ops_parse() {
    let op = parse_client_op(
        br#"{"op":"subscribe","channel":"a","since":{"offset":3,"epoch":"ab"},"id":9}"#,
        &LIMITS,
    );
    assert_eq!(
        op,
        Ok(ClientOp::Subscribe {
            id: Some(9),
            channel: ChannelName::parse("a").expect("name"),
            since: Some(StreamPosition {
                epoch: Epoch::parse("ab").expect("epoch"),
                offset: 3
            }),
        })
    );
    assert!(matches!(
        parse_client_op(br#"{"op":"unsubscribe","channel":"a"}"#, &LIMITS),
        Ok(ClientOp::Unsubscribe { .. })
    ));
    assert!(matches!(
        parse_client_op(br#"{"op":"ping"}"#, &LIMITS),
        Ok(ClientOp::Ping { id: None })
    ));
    let publish = parse_client_op(br#"{"op":"publish","channel":"a","data":[1]}"#, &LIMITS);
    assert!(matches!(publish, Ok(ClientOp::Publish { .. })));
}

#[test]
fn client_op_rejections_keep_the_id() {
    let err = parse_client_op(br#"{"op":"dance","id":4}"#, &LIMITS).expect_err("unknown");
    assert_eq!(
        (err.id, err.rejection.code),
        (Some(4), ErrorCode::UnknownOp)
    );
    let err = parse_client_op(br#"{"op":"subscribe","id":5}"#, &LIMITS).expect_err("no channel");
    assert_eq!(
        (err.id, err.rejection.code),
        (Some(5), ErrorCode::InvalidJson)
    );
    let err = parse_client_op(
        br#"{"op":"subscribe","channel":"a","since":{"offset":1,"epoch":"!"}}"#,
        &LIMITS,
    )
    .expect_err("bad epoch");
    assert_eq!(err.rejection.code, ErrorCode::InvalidPosition);
    let err = parse_client_op(b"not json", &LIMITS).expect_err("garbage");
    assert_eq!((err.id, err.rejection.code), (None, ErrorCode::InvalidJson));
    assert_eq!(
        parse_client_op(br#"{"id":1}"#, &LIMITS)
            .expect_err("no op")
            .rejection
            .code,
        ErrorCode::InvalidJson
    );
}

#[test]
fn escaped_strings_are_accepted_in_every_field() {
    // What PHP's json_encode and other encoders send: `\/` and `\uXXXX` escapes.
    let p = parse_publish(
        br#"{"channel":"chat\/room","data":"x\/y","event":"p\u0069ng","idempotency_key":"k\u0031"}"#,
        &LIMITS,
    )
    .expect("valid");
    assert_eq!(p.channel.as_str(), "chat/room");
    assert_eq!(p.event.as_ref().map(|e| e.as_str()), Some("ping"));
    assert_eq!(p.idempotency_key.as_deref(), Some("k1"));
    assert_eq!(&p.data[..], br#""x\/y""#, "data is kept as published");

    let b = parse_broadcast(br#"{"channels":["a\/b","\u0061"],"data":1}"#, &LIMITS).expect("valid");
    assert_eq!(
        b.iter().map(|p| p.channel.as_str()).collect::<Vec<_>>(),
        ["a/b", "a"]
    );

    let op = parse_client_op(
        br#"{"\u006fp":"s\u0075bscribe","channel":"chat\/room","since":{"offset":1,"epoch":"\u0061b"},"id":2}"#,
        &LIMITS,
    );
    assert_eq!(
        op,
        Ok(ClientOp::Subscribe {
            id: Some(2),
            channel: ChannelName::parse("chat/room").expect("name"),
            since: Some(StreamPosition {
                epoch: Epoch::parse("ab").expect("epoch"),
                offset: 1
            }),
        })
    );
    assert_eq!(
        parse_client_op(br#"{"op":"p\u0069ng","id":1}"#, &LIMITS),
        Ok(ClientOp::Ping { id: Some(1) })
    );
    assert!(matches!(
        parse_client_op(br#"{"op":"unsubscribe","channel":"a\/b"}"#, &LIMITS),
        Ok(ClientOp::Unsubscribe { channel, .. }) if channel.as_str() == "a/b"
    ));
    let op = parse_client_op(
        br#"{"op":"publish","channel":"a\/b","data":null,"event":"\u0065","idempotency_key":"\u006b"}"#,
        &LIMITS,
    );
    let Ok(ClientOp::Publish { publish, .. }) = op else {
        panic!("publish refused: {op:?}");
    };
    assert_eq!(
        (
            publish.channel.as_str(),
            publish.event.as_ref().map(|e| e.as_str()),
            &publish.data[..],
            publish.idempotency_key.as_deref()
        ),
        ("a/b", Some("e"), &b"null"[..], Some("k"))
    );
}

#[test]
fn data_null_is_valid_data_and_missing_data_is_not() {
    let p = parse_publish(br#"{"channel":"a","data":null}"#, &LIMITS).expect("valid");
    assert_eq!(&p.data[..], b"null");
    let b = parse_broadcast(br#"{"channels":["a"],"data":null}"#, &LIMITS).expect("valid");
    assert_eq!(&b[0].data[..], b"null");
    let err = parse_publish(br#"{"channel":"a"}"#, &LIMITS).expect_err("no data");
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::InvalidJson, "missing field `data`")
    );
}

#[test]
fn an_invalid_event_is_invalid_event_however_it_is_written() {
    for body in [
        br#"{"channel":"a","data":1,"event":"a\nb"}"#.as_slice(),
        br#"{"channel":"a","data":1,"event":"a b"}"#,
        br#"{"channel":"a","data":1,"event":7}"#,
    ] {
        let err = parse_publish(body, &LIMITS).expect_err("bad event");
        assert_eq!(err.code, ErrorCode::InvalidEvent, "{err:?}");
    }
}

#[test]
fn a_broadcast_repeating_one_channel_is_deduplicated_before_the_limit() {
    let names = vec!["same"; 101];
    let body = serde_json::json!({"channels": names, "data": 1}).to_string();
    let b = parse_broadcast(body.as_bytes(), &LIMITS).expect("one distinct channel");
    assert_eq!(b.len(), 1);
    let err = parse_broadcast(br#"{"channels":"a","data":1}"#, &LIMITS).expect_err("not a list");
    assert_eq!(err.code, ErrorCode::InvalidChannel);
}

#[test]
fn every_field_error_keeps_the_op_id_and_names_the_field() {
    for (frame, code) in [
        (
            r#"{"op":"subscribe","channel":"a","since":5,"id":7}"#,
            ErrorCode::InvalidPosition,
        ),
        (
            r#"{"op":"subscribe","channel":"a","since":{"offset":"1","epoch":"a"},"id":7}"#,
            ErrorCode::InvalidPosition,
        ),
        (
            r#"{"op":"subscribe","channel":5,"id":7}"#,
            ErrorCode::InvalidChannel,
        ),
        (r#"{"op":7,"id":7}"#, ErrorCode::UnknownOp),
        (
            r#"{"op":"publish","channel":"a","data":1,"event":["x"],"id":7}"#,
            ErrorCode::InvalidEvent,
        ),
        (
            r#"{"op":"publish","channel":"a","data":1,"idempotency_key":1,"id":7}"#,
            ErrorCode::BadRequest,
        ),
        (
            r#"{"op":"publish","channel":"a","id":7}"#,
            ErrorCode::InvalidJson,
        ),
    ] {
        let err = parse_client_op(frame.as_bytes(), &LIMITS).expect_err(frame);
        assert_eq!((err.id, err.rejection.code), (Some(7), code), "{frame}");
        assert!(
            !err.rejection.message.contains("borrowed") && !err.rejection.message.contains("Raw"),
            "{}",
            err.rejection.message
        );
    }
    let err = parse_client_op(br#"{"op":"ping","id":"x"}"#, &LIMITS).expect_err("bad id");
    assert_eq!((err.id, err.rejection.code), (None, ErrorCode::InvalidJson));
    let err = parse_publish(b"[1]", &LIMITS).expect_err("not an object");
    assert!(
        err.message.contains("expected a JSON object"),
        "{}",
        err.message
    );
}

#[test]
fn server_frames_are_valid_json() {
    let msg = Message {
        channel: ChannelName::parse("chat:1").expect("name"),
        offset: 12,
        epoch: Epoch::parse("e9").expect("epoch"),
        event: Some(EventName::parse("upd").expect("event")),
        data: Bytes::from_static(br#"{"x":"y"}"#),
        published_at_us: 1,
        sender: None,
    };
    let v: serde_json::Value = serde_json::from_slice(&message_frame(&msg)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"message","channel":"chat:1","offset":12,"epoch":"e9","event":"upd","data":{"x":"y"}})
    );
    let pos = msg.position();
    let v: serde_json::Value =
        serde_json::from_slice(&subscribed_frame(Some(3), &msg.channel, &pos, true)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"subscribed","channel":"chat:1","offset":12,"epoch":"e9","recovered":true,"id":3})
    );
    let v: serde_json::Value =
        serde_json::from_slice(&error_frame(None, ErrorCode::UnknownOp, "say \"what\""))
            .expect("json");
    assert_eq!(v["message"], "say \"what\"");
    for f in [
        pong_frame(Some(1)),
        unsubscribed_frame(None, &msg.channel),
        published_frame(Some(2), &msg.channel, &pos),
    ] {
        serde_json::from_slice::<serde_json::Value>(&f).expect("json");
    }
}

#[test]
fn frame_headers_use_the_right_length_encoding() {
    assert_eq!(&frame(Opcode::Text, b"hi")[..], b"\x81\x02hi");
    let f = frame(Opcode::Text, &[0u8; 200]);
    assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
    let f = frame(Opcode::Text, &vec![0u8; 70_000]);
    assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
    let c = close_frame(4000, &"é".repeat(100));
    assert!(c.len() <= 2 + 125);
    assert_eq!(&c[2..4], &4000u16.to_be_bytes());
}

proptest! {
    #[test]
    fn client_op_parser_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_client_op(&bytes, &LIMITS);
        let _ = parse_publish(&bytes, &LIMITS);
        let _ = parse_broadcast(&bytes, &LIMITS);
    }

    #[test]
    fn structured_ops_never_panic(op in "(subscribe|unsubscribe|publish|ping|x)", ch in ".{0,40}", off in any::<u64>(), ep in ".{0,40}") {
        let v = serde_json::json!({"op": op, "channel": ch, "since": {"offset": off, "epoch": ep}, "data": {"k": ch}});
        let _ = parse_client_op(v.to_string().as_bytes(), &LIMITS);
    }
}

#[test]
fn auth_and_refresh_ops_carry_a_token() {
    assert_eq!(
        parse_client_op(br#"{"op":"auth","token":"a.b.c","id":1}"#, &LIMITS),
        Ok(ClientOp::Auth {
            id: Some(1),
            token: "a.b.c".into()
        })
    );
    assert_eq!(
        parse_client_op(br#"{"op":"refresh","token":"x.y.z"}"#, &LIMITS),
        Ok(ClientOp::Refresh {
            id: None,
            token: "x.y.z".into()
        })
    );
    let missing = parse_client_op(br#"{"op":"auth","id":2}"#, &LIMITS).expect_err("no token");
    assert_eq!(
        (missing.id, missing.rejection.code),
        (Some(2), ErrorCode::InvalidJson)
    );
    let long = format!(
        r#"{{"op":"refresh","token":"{}"}}"#,
        "a".repeat(MAX_AUTH_TOKEN_LEN + 1)
    );
    let too_long = parse_client_op(long.as_bytes(), &LIMITS).expect_err("too long");
    assert_eq!(too_long.rejection.code, ErrorCode::Unauthorized);
    assert!(
        !too_long.rejection.message.contains("aaaa"),
        "the token is not echoed"
    );
}

#[test]
fn auth_frames_are_valid_json() {
    let channel = ChannelName::parse("news.a").expect("name");
    let v: serde_json::Value = serde_json::from_slice(&unsubscribed_by_server_frame(
        &channel,
        ErrorCode::Forbidden,
    ))
    .expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"unsubscribed","channel":"news.a","reason":"forbidden"})
    );
    let v: serde_json::Value =
        serde_json::from_slice(&authenticated_frame(Some(4), Some("al\"ice"), 99)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"authenticated","sub":"al\"ice","exp":99,"id":4})
    );
    let v: serde_json::Value =
        serde_json::from_slice(&authenticated_frame(None, None, 1)).expect("json");
    assert_eq!(v, serde_json::json!({"type":"authenticated","exp":1}));
}

fn room_message(event: Option<EventName>, data: &'static [u8], sender: Option<Sender>) -> Message {
    Message {
        channel: ChannelName::parse("chat:1").expect("name"),
        offset: 5,
        epoch: Epoch::parse("e1").expect("epoch"),
        event,
        data: Bytes::from_static(data),
        published_at_us: 1,
        sender: sender.map(Box::new),
    }
}

#[test]
fn a_senders_identity_is_rendered_from_the_server_side_only() {
    let sender = Sender {
        user: "al\"ice".into(),
        info: Some(Bytes::from_static(br#"{"name":"Al"}"#)),
    };
    let msg = room_message(None, b"[1]", Some(sender));
    let v: serde_json::Value = serde_json::from_slice(&message_frame(&msg)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"message","channel":"chat:1","offset":5,"epoch":"e1",
            "from":"al\"ice","info":{"name":"Al"},"data":[1]})
    );
    // What a client writes into `from` or `info` is never read.
    let op = parse_client_op(
        br#"{"op":"publish","channel":"a","data":1,"from":"mallory","info":{"admin":true}}"#,
        &LIMITS,
    )
    .expect("valid");
    assert!(matches!(op, ClientOp::Publish { publish, .. } if publish.sender.is_none()));
    let p = parse_publish(br#"{"channel":"a","data":1,"from":"mallory"}"#, &LIMITS).expect("ok");
    assert!(p.sender.is_none());
    assert_eq!(
        code(parse_publish(
            br#"{"channel":"a","data":1,"event":"herald.join"}"#,
            &LIMITS
        )),
        ErrorCode::InvalidEvent
    );
}

#[test]
fn room_events_render_as_join_and_leave_frames() {
    let member = crate::room::Member::new("bob", "n1-2", Some(br#"{"c":1}"#));
    let data: &'static [u8] = Box::leak(member.json.to_vec().into_boxed_slice());
    for (event, kind) in [(EventName::join(), "join"), (EventName::leave(), "leave")] {
        let msg = room_message(Some(event), data, None);
        let v: serde_json::Value = serde_json::from_slice(&message_frame(&msg)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":kind,"channel":"chat:1","offset":5,"epoch":"e1",
                "user":"bob","client":"n1-2","info":{"c":1}})
        );
    }
    // Data that is not a member object (only a foreign backbone writer could make one).
    let odd = room_message(Some(EventName::join()), b"{}", None);
    let v: serde_json::Value = serde_json::from_slice(&message_frame(&odd)).expect("json");
    assert_eq!(v["type"], "join");
    assert_eq!(v["data"], serde_json::json!({}));
}

#[test]
fn presence_ops_and_frames() {
    assert_eq!(
        parse_client_op(br#"{"op":"presence","channel":"chat:1","id":3}"#, &LIMITS),
        Ok(ClientOp::Presence {
            id: Some(3),
            channel: ChannelName::parse("chat:1").expect("name")
        })
    );
    assert!(matches!(
        parse_client_op(br#"{"op":"presence_stats","channel":"c"}"#, &LIMITS),
        Ok(ClientOp::PresenceStats { id: None, .. })
    ));
    let err = parse_client_op(br#"{"op":"presence","id":1}"#, &LIMITS).expect_err("no channel");
    assert_eq!(err.rejection.code, ErrorCode::InvalidJson);
    let channel = ChannelName::parse("chat:1").expect("name");
    let roster = crate::room::Roster {
        members: vec![
            crate::room::Member::new("a", "c1", None).json,
            crate::room::Member::new("b", "c2", Some(b"7")).json,
        ],
        truncated: true,
        clients: 5,
        users: 4,
    };
    let v: serde_json::Value =
        serde_json::from_slice(&presence_frame(Some(9), &channel, &roster)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"presence","channel":"chat:1","members":[
            {"user":"a","client":"c1"},{"user":"b","client":"c2","info":7}],
            "truncated":true,"clients":5,"users":4,"id":9})
    );
    let v: serde_json::Value =
        serde_json::from_slice(&presence_body(&channel, &crate::room::Roster::default()))
            .expect("json");
    assert_eq!(
        v,
        serde_json::json!({"channel":"chat:1","members":[],"truncated":false,"clients":0,"users":0})
    );
    let v: serde_json::Value =
        serde_json::from_slice(&presence_stats_frame(None, &channel, &roster)).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"type":"presence_stats","channel":"chat:1","clients":5,"users":4})
    );
}

#[test]
fn frame_payloads_are_views_of_the_frame() {
    for len in [0, 125, 126, 65_535, 65_536] {
        let payload = vec![b'x'; len];
        let f = frame(Opcode::Text, &payload);
        assert_eq!(frame_payload(&f), Bytes::from(payload), "{len}");
    }
}
