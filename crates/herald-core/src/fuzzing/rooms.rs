//! A token's `sub` and `info` as other clients see them in rooms (docs/api.md, "Rooms"): the
//! `from` and `info` of a message its holder published, the `join` / `leave` frames and events
//! carrying its membership, and the presence replies listing it.
//!
//! Called by the `claims` harness with every accepted token: whatever `sub` and `info` hold,
//! each of those encodings must read back, as any JSON client reads it, as one object with the
//! documented members, `user`/`from` the same text and `info` the same JSON value as the claim.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::{
    channel::{ChannelName, EventName},
    message::{Epoch, Message, Sender},
    protocol,
    room::{Member, Roster},
    sse,
};

use super::wire;

const TOKEN: &str = "0000000000000004,4,fuzz";

/// Checks every encoding of `user`'s membership and messages; `info` is the accepted claim.
pub fn check(user: &str, info: Option<&[u8]>) {
    let want_info: Option<Value> =
        info.map(|i| serde_json::from_slice(i).expect("an accepted info claim is JSON"));
    let channel = ChannelName::parse("chat:lobby").expect("a channel name");
    let client = "3f9c0e12a4b5d6e7-42";
    let member = Member::new(user, client, info);
    let check_member = |v: &Value| {
        let obj = object(v);
        assert_eq!(obj.len(), 2 + usize::from(info.is_some()), "members of {v}");
        assert_eq!(v["user"], user);
        assert_eq!(v["client"], client);
        assert_eq!(obj.get("info"), want_info.as_ref(), "info in {v}");
    };
    check_member(&parse(&member.json));

    // A message the user published: `from` and `info` in the frame and the poll answer, and in
    // the SSE envelope, which carries the frame.
    let mut msg = Message {
        channel: channel.clone(),
        offset: 4,
        epoch: Epoch::from_random(4),
        event: None,
        data: Bytes::from_static(b"{\"text\":\"hi\"}"),
        published_at_us: 0,
        sender: Some(Box::new(Sender {
            user: user.into(),
            info: info.map(Bytes::copy_from_slice),
        })),
    };
    wire::check_message_frame(&msg);
    wire::check_poll_answer(TOKEN, &msg);
    check_envelope(&msg);

    // Join and leave: the member's fields spliced into the frame; the member as SSE data.
    for (event, kind) in [(EventName::join(), "join"), (EventName::leave(), "leave")] {
        msg.event = Some(event);
        msg.data = member.json.clone();
        msg.sender = None;
        let frame = parse(&protocol::message_frame(&msg));
        assert_eq!(frame["type"], kind);
        assert_eq!(frame["channel"], channel.as_str());
        assert_eq!(frame["offset"].as_u64(), Some(msg.offset));
        assert_eq!(frame["epoch"], msg.epoch.as_str());
        let mut rest = object(&frame).clone();
        for position in ["type", "channel", "offset", "epoch"] {
            rest.remove(position);
        }
        check_member(&Value::Object(rest));
        wire::check_sse_message(TOKEN, &msg);
        wire::check_poll_answer(TOKEN, &msg);
        check_envelope(&msg);
    }

    // Presence: the member listed twice (two tabs of one user).
    for listed in presence_replies(Some(7), &channel, &member) {
        check_member(&listed);
    }
}

/// Checks the replies to `presence` and `presence_stats` ops of `channel` with `id`, and the
/// body of `GET .../presence`, for a room holding `member` on two connections; returns the
/// members as listed (both listings), for the caller to check.
pub fn presence_replies(id: Option<u64>, channel: &ChannelName, member: &Member) -> Vec<Value> {
    let roster = Roster {
        members: vec![member.json.clone(), member.json.clone()],
        truncated: false,
        clients: 2,
        users: 1,
    };
    let with_id = usize::from(id.is_some());
    let mut listed = Vec::new();
    for (listing, framed) in [
        (protocol::presence_frame(id, channel, &roster), true),
        (protocol::presence_body(channel, &roster), false),
    ] {
        let v = parse(&listing);
        let extra = if framed { 1 + with_id } else { 0 };
        assert_eq!(object(&v).len(), 5 + extra, "members of {v}");
        if framed {
            assert_eq!((&v["type"], v["id"].as_u64()), (&"presence".into(), id));
        }
        assert_eq!(v["channel"], channel.as_str());
        assert_eq!(
            (&v["truncated"], &v["clients"], &v["users"]),
            (&false.into(), &2.into(), &1.into())
        );
        let members = v["members"].as_array().expect("members is an array");
        assert_eq!(members.len(), 2);
        listed.extend(members.iter().cloned());
    }
    let stats = parse(&protocol::presence_stats_frame(id, channel, &roster));
    assert_eq!(object(&stats).len(), 4 + with_id, "members of {stats}");
    assert_eq!(
        (&stats["type"], &stats["channel"], stats["id"].as_u64()),
        (&"presence_stats".into(), &channel.as_str().into(), id)
    );
    assert_eq!((&stats["clients"], &stats["users"]), (&2.into(), &1.into()));
    listed
}

/// An SSE stream with envelopes: one event of the message's type whose data is its WebSocket
/// frame, as the same JSON value.
fn check_envelope(msg: &Message) {
    let frame = protocol::message_frame(msg);
    let mut bytes = bytes::BytesMut::new();
    sse::id_line(&mut bytes, TOKEN);
    bytes.extend_from_slice(&sse::envelope_body(msg, &frame));
    let stream = wire::sse_stream(&bytes);
    let [event] = &stream.events[..] else {
        panic!("{} events from one message: {bytes:?}", stream.events.len());
    };
    assert!(stream.pending.is_empty());
    assert_eq!(event.event, msg.event_name());
    assert_eq!(parse(event.data.as_bytes()), parse(&frame));
}

fn parse(json: &[u8]) -> Value {
    serde_json::from_slice(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json:?}"))
}

fn object(v: &Value) -> &Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
}
