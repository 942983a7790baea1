//! Client publish over WebSocket: through the broker like an HTTP publish, with the server's
//! `from` and `info`, never the client's.

use serde_json::{Value, json};

use super::{Client, Fleet, connect, user_token};
use crate::{
    auth::{hs256, now},
    support::{Herald, clients::Sse},
};

/// Publishes `data` to `channel` over the socket; returns the reply (`published` or `error`).
async fn publish(client: &mut Client, channel: &str, extra: Value) -> Value {
    let mut op = json!({"op": "publish", "channel": channel});
    for (k, v) in extra.as_object().expect("object") {
        op[k] = v.clone();
    }
    client.request(op).await
}

/// `room`'s history read with `sub`'s token: the messages.
async fn history(node: &Herald, room: &str, sub: &str) -> Vec<Value> {
    let (status, body) = node
        .get(&format!(
            "/v1/channels/{room}/history?token={}",
            user_token(sub)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["messages"].as_array().expect("messages").clone()
}

#[tokio::test]
async fn two_users_on_two_nodes_publish_into_one_room_and_see_one_order_with_the_right_from() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let b = fleet.node("200ms").await;
    let room = "chat:lobby";
    let mut alice = connect(&a, "alice").await;
    let mut bob = connect(&b, "bob").await;
    alice.subscribe(room).await;
    bob.subscribe(room).await;
    // An SSE stream with envelopes, on b, reads the sender too.
    let mut sse = Sse::connect(
        &b.url(&format!(
            "/v1/sse?channel={room}&envelope=true&token={}",
            user_token("carol")
        )),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);

    // What a client writes into `from` or `info` is ignored; the server writes its own.
    let ack = publish(
        &mut alice,
        room,
        json!({"data": "from alice", "from": "mallory", "info": {"admin": true}}),
    )
    .await;
    assert_eq!(
        (ack["type"].as_str(), ack["channel"].as_str()),
        (Some("published"), Some(room)),
        "{ack}"
    );
    let ack_b = publish(&mut bob, room, json!({"data": "from bob"})).await;
    assert_eq!(ack_b["type"], "published", "{ack_b}");

    let mut seen = Vec::new();
    for client in [&mut alice, &mut bob] {
        let first = client.next_message().await;
        let second = client.next_message().await;
        seen.push([first, second]);
    }
    assert_eq!(
        seen[0], seen[1],
        "both clients see both messages, in one order"
    );
    for m in &seen[0] {
        let (user, name, ack) = if m["data"] == "from alice" {
            ("alice", "ALICE", &ack)
        } else {
            ("bob", "BOB", &ack_b)
        };
        assert_eq!(m["from"], user, "{m}");
        assert_eq!(m["info"], json!({"name": name}), "{m}");
        assert_eq!(
            m["offset"], ack["offset"],
            "the ack names the message's offset"
        );
    }

    // SSE with envelopes: the same object as the WebSocket frame.
    let mut from_sse = Vec::new();
    while from_sse.len() < 2 {
        let ev = sse.next().await.expect("an event");
        if ev.event == "message" {
            from_sse.push(ev.json());
        }
    }
    assert_eq!(from_sse, seen[0].to_vec());

    // History keeps the sender, on either node.
    let messages: Vec<Value> = history(&a, room, "alice")
        .await
        .into_iter()
        .filter(|m| m.get("event").is_none())
        .collect();
    assert_eq!(messages.len(), 2);
    for (stored, delivered) in messages.iter().zip(&seen[0]) {
        assert_eq!(stored["from"], delivered["from"]);
        assert_eq!(stored["info"], delivered["info"]);
        assert_eq!(stored["data"], delivered["data"]);
    }
}

#[tokio::test]
async fn client_publish_is_refused_for_reserved_events_and_without_permission() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let mut alice = connect(&a, "alice").await;
    alice.subscribe("chat:x").await;

    // Reserved event types: invalid_event, nothing published.
    let err = publish(
        &mut alice,
        "chat:x",
        json!({"data": 1, "event": "herald.join"}),
    )
    .await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("invalid_event")),
        "{err}"
    );
    let err = publish(
        &mut alice,
        "chat:x",
        json!({"data": 1, "event": "herald.message"}),
    )
    .await;
    assert_eq!(err["code"], "invalid_event", "{err}");

    // A namespace without client publish: forbidden.
    let err = publish(&mut alice, "user:alice", json!({"data": 1})).await;
    assert_eq!(err["code"], "forbidden", "{err}");

    // A token whose `publish` claim does not cover the channel: forbidden; no token where a
    // token is needed: unauthorized.
    let reader = hs256(&json!({"sub": "rita", "exp": now() + 60, "channels": ["chat:*"]}));
    let mut rita = Client::from_url(&a.ws_url(&format!("/v1/ws?token={reader}"))).await;
    assert_eq!(
        publish(&mut rita, "chat:x", json!({"data": 1})).await["code"],
        "forbidden"
    );
    let mut anonymous = Client::from_url(&a.ws_url("/v1/ws")).await;
    assert_eq!(
        publish(&mut anonymous, "chat:x", json!({"data": 1})).await["code"],
        "unauthorized"
    );

    // Nothing of it reached the room: the next message alice sees is her own.
    assert_eq!(
        publish(&mut alice, "chat:x", json!({"data": "ok"})).await["type"],
        "published"
    );
    let m = alice.next_message().await;
    assert_eq!(
        (m["data"].as_str(), m["from"].as_str()),
        (Some("ok"), Some("alice"))
    );
    // An idempotent retry is one message, as over HTTP.
    let first = publish(
        &mut alice,
        "chat:x",
        json!({"data": "once", "idempotency_key": "k1"}),
    )
    .await;
    let again = publish(
        &mut alice,
        "chat:x",
        json!({"data": "once", "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(
        (first["type"].as_str(), first["offset"].as_u64()),
        (Some("published"), again["offset"].as_u64())
    );
    assert_eq!(
        publish(&mut alice, "chat:x", json!({"data": "after"})).await["type"],
        "published"
    );
    assert_eq!(alice.next_message().await["data"], "once");
    assert_eq!(alice.next_message().await["data"], "after");
}
