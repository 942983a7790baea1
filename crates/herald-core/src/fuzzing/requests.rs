//! Fuzz targets `publish` and `client_op`: `POST /v1/publish` and `/v1/broadcast` bodies and
//! WebSocket client ops.
//!
//! Each input is parsed twice: by `protocol.rs` and by [`model`], a plain reading of docs/api.md
//! over `serde_json` values. They must agree on the result (the op, or the error code and the
//! echoed `id`). What parses is then re-encoded, parsed again to the same value, and fanned out
//! as a message: its WebSocket frame and SSE event must carry the data unchanged.
//! A presence op's replies (listing, counts, refusals) must read back with its channel and `id`.

use crate::{
    channel::ChannelName,
    error::{ErrorCode, error_body},
    json,
    message::{Epoch, Message},
    protocol::{self, ClientOp, Publish},
    room::Member,
};

use super::{LIMITS, wire};

mod model;

pub(super) use model::members;

/// The harness for both publish endpoints: `data` as a `/v1/publish` and a `/v1/broadcast` body.
pub fn publish(data: &[u8]) {
    let got = protocol::parse_publish(data, &LIMITS);
    let want = model::publish(data);
    same_verdict(got.as_ref().map_err(|r| r.code), want.as_ref(), data);
    match got {
        Ok(p) => {
            check_publish(&p);
            let again = protocol::parse_publish(publish_body(&p, None).as_bytes(), &LIMITS);
            assert_eq!(again.as_ref(), Ok(&p));
        }
        Err(r) => check_error(None, r.code, &r.message),
    }

    let got = protocol::parse_broadcast(data, &LIMITS);
    let want = model::broadcast(data);
    same_verdict(got.as_ref().map_err(|r| r.code), want.as_ref(), data);
    match got {
        Ok(all) => {
            assert!(!all.is_empty() && all.len() <= LIMITS.max_broadcast_channels);
            for (i, p) in all.iter().enumerate() {
                check_publish(p);
                assert!(all[..i].iter().all(|q| q.channel != p.channel), "duplicate");
            }
            let channels: Vec<&str> = all.iter().map(|p| p.channel.as_str()).collect();
            let body = publish_body(&all[0], Some(&channels));
            assert_eq!(
                protocol::parse_broadcast(body.as_bytes(), &LIMITS).as_ref(),
                Ok(&all)
            );
        }
        Err(r) => check_error(None, r.code, &r.message),
    }
}

/// Herald and the model read `data` the same way: the same value, or the same error code.
fn same_verdict<T: PartialEq + std::fmt::Debug>(
    got: Result<&T, ErrorCode>,
    want: Result<&T, &ErrorCode>,
    data: &[u8],
) {
    assert_eq!(got, want.map_err(|c| *c), "{}", super::text(data));
}

/// The harness for WebSocket client ops: `data` as one text frame.
pub fn client_op(data: &[u8]) {
    let got = protocol::parse_client_op(data, &LIMITS);
    let want = model::client_op(data);
    assert_eq!(
        got.as_ref().map_err(|e| (e.id, e.rejection.code)),
        want.as_ref().map_err(|e| *e),
        "{}",
        super::text(data)
    );
    match got {
        Ok(op) => {
            match &op {
                ClientOp::Publish { publish, .. } => check_publish(publish),
                ClientOp::Presence { id, channel } | ClientOp::PresenceStats { id, channel } => {
                    check_presence(*id, channel)
                }
                _ => {}
            }
            let again = protocol::parse_client_op(op_frame(&op).as_bytes(), &LIMITS);
            assert_eq!(again.as_ref(), Ok(&op));
        }
        Err(e) => check_error(e.id, e.rejection.code, &e.rejection.message),
    }
}

/// An accepted publish: data is compact, one-line JSON within the limit, and survives both
/// transports unchanged.
fn check_publish(p: &Publish) {
    let text = std::str::from_utf8(&p.data).expect("data is UTF-8");
    serde_json::from_str::<serde_json::Value>(text).expect("data is JSON");
    assert_eq!(json::compact(text), text, "data is compact");
    assert!(!text.contains(['\n', '\r']));
    assert!(p.data.len() <= LIMITS.max_message_bytes);
    let msg = Message {
        channel: p.channel.clone(),
        offset: 1,
        epoch: Epoch::from_random(1),
        event: p.event.clone(),
        data: p.data.clone(),
        published_at_us: 0,
        sender: None,
    };
    wire::check_message_frame(&msg);
    wire::check_sse_message("0000000000000001,1,fuzz", &msg);
    wire::check_poll_answer("0000000000000001,1,fuzz", &msg);
}

/// The replies a presence op of `channel` may get (docs/api.md, "Rooms"): the listing or the
/// counts, or `forbidden` (not subscribed) / `bad_request` (no presence), all carrying `id`.
fn check_presence(id: Option<u64>, channel: &ChannelName) {
    let member = Member::new(
        "alice",
        "3f9c0e12a4b5d6e7-42",
        Some(b"{\"name\":\"Alice\"}"),
    );
    let want: serde_json::Value = serde_json::from_slice(&member.json).expect("member JSON");
    for listed in super::rooms::presence_replies(id, channel, &member) {
        assert_eq!(listed, want);
    }
    check_error(id, ErrorCode::Forbidden, "not subscribed to the channel");
    check_error(
        id,
        ErrorCode::BadRequest,
        "the channel's namespace has no presence",
    );
}

/// A refusal is reported as valid JSON carrying the code (WebSocket frame and HTTP body).
fn check_error(id: Option<u64>, code: ErrorCode, message: &str) {
    let frame: serde_json::Value =
        serde_json::from_slice(&protocol::error_frame(id, code, message)).expect("error frame");
    assert_eq!(frame["code"], code.as_str());
    assert_eq!(frame["message"], message);
    assert_eq!(frame["id"].as_u64(), id);
    let body: serde_json::Value =
        serde_json::from_str(&error_body(code, message)).expect("error body");
    assert_eq!(body["error"]["code"], code.as_str());
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// The JSON members of `p` after `channel`/`channels`.
fn publish_members(p: &Publish) -> String {
    let mut out = String::new();
    if let Some(e) = &p.event {
        out.push_str(&format!(",\"event\":{}", quoted(e.as_str())));
    }
    if let Some(k) = &p.idempotency_key {
        out.push_str(&format!(",\"idempotency_key\":{}", quoted(k)));
    }
    let data = std::str::from_utf8(&p.data).expect("data is UTF-8");
    out.push_str(&format!(",\"data\":{data}"));
    out
}

/// A publish (or, with `channels`, broadcast) body that means `p`.
fn publish_body(p: &Publish, channels: Option<&[&str]>) -> String {
    let target = match channels {
        Some(list) => format!("\"channels\":{}", serde_json::json!(list)),
        None => format!("\"channel\":{}", quoted(p.channel.as_str())),
    };
    format!("{{{target}{}}}", publish_members(p))
}

/// `{"op":OP,"channel":..}` and the `id` member (or nothing).
fn channel_op(op: &str, channel: &ChannelName, id: String) -> String {
    format!(
        "{{\"op\":\"{op}\",\"channel\":{}{id}}}",
        quoted(channel.as_str())
    )
}

/// A client frame that means `op`.
fn op_frame(op: &ClientOp) -> String {
    let id = |id: &Option<u64>| id.map(|i| format!(",\"id\":{i}")).unwrap_or_default();
    match op {
        ClientOp::Subscribe {
            id: i,
            channel,
            since,
        } => {
            let since = since
                .as_ref()
                .map(|s| {
                    format!(
                        ",\"since\":{{\"offset\":{},\"epoch\":\"{}\"}}",
                        s.offset, s.epoch
                    )
                })
                .unwrap_or_default();
            format!(
                "{{\"op\":\"subscribe\",\"channel\":{}{since}{}}}",
                quoted(channel.as_str()),
                id(i)
            )
        }
        ClientOp::Unsubscribe { id: i, channel } => channel_op("unsubscribe", channel, id(i)),
        ClientOp::Presence { id: i, channel } => channel_op("presence", channel, id(i)),
        ClientOp::PresenceStats { id: i, channel } => channel_op("presence_stats", channel, id(i)),
        ClientOp::Publish { id: i, publish } => format!(
            "{{\"op\":\"publish\",\"channel\":{}{}{}}}",
            quoted(publish.channel.as_str()),
            publish_members(publish),
            id(i)
        ),
        ClientOp::Ping { id: i } => format!("{{\"op\":\"ping\"{}}}", id(i)),
        ClientOp::Auth { id: i, token } => {
            format!("{{\"op\":\"auth\",\"token\":{}{}}}", quoted(token), id(i))
        }
        ClientOp::Refresh { id: i, token } => {
            format!(
                "{{\"op\":\"refresh\",\"token\":{}{}}}",
                quoted(token),
                id(i)
            )
        }
    }
}
