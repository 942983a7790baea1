//! Private messages: with `user_channels`, one publish to `user:ID` reaches every connection of
//! that user, on every node, and nobody else.

use serde_json::json;

use super::{Fleet, connect, user_token};
use crate::auth::sse_refused;

#[tokio::test]
async fn one_publish_to_user_bob_reaches_all_of_bobs_connections_and_nobody_else() {
    let fleet = Fleet::redis();
    let a = fleet.node("200ms").await;
    let b = fleet.node("200ms").await;
    let mut bobs = Vec::new();
    for node in [&a, &a, &b] {
        let mut client = connect(node, "bob").await;
        client.subscribe("user:bob").await;
        bobs.push(client);
    }
    let mut alice = connect(&a, "alice").await;
    alice.subscribe("user:alice").await;
    let mut alice_b = connect(&b, "alice").await;
    alice_b.subscribe("user:alice").await;

    // Alice cannot listen in: not over WebSocket, not over SSE, not through history.
    let refused = alice
        .request(json!({"op": "subscribe", "channel": "user:bob"}))
        .await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    let token = user_token("alice");
    assert_eq!(
        sse_refused(
            &b.url(&format!("/v1/sse?channel=user:bob&token={token}")),
            None,
            &[]
        )
        .await,
        (403, "forbidden".to_owned())
    );
    let (status, _) = a
        .get(&format!("/v1/channels/user:bob/history?token={token}"))
        .await;
    assert_eq!(status, 403);

    // The app's backend: one POST.
    let dm =
        json!({"channel": "user:bob", "event": "dm", "data": {"from": "alice", "text": "psst"}});
    let (status, v) = b.post("/v1/publish", &dm.to_string()).await;
    assert_eq!(status, 200, "{v}");
    for client in &mut bobs {
        let m = client.next_message().await;
        assert_eq!(
            (m["event"].as_str(), m["data"]["text"].as_str()),
            (Some("dm"), Some("psst"))
        );
        assert!(
            m.get("from").is_none(),
            "published over HTTP: no client sender"
        );
    }
    // Alice's connections got nothing of it: their next message is the one sent to them.
    a.publish("user:alice", json!("for alice")).await;
    assert_eq!(alice.next_message().await["data"], "for alice");
    assert_eq!(alice_b.next_message().await["data"], "for alice");
}
