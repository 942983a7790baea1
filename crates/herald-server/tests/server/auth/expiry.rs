//! A connection outlives no token: refresh keeps it going; without one it ends at `exp` with
//! the documented code, and a client that reconnects with a fresh token and its position loses
//! nothing.

use serde_json::json;

use super::{claims, hs256, secured, token};
use crate::support::clients::{Sse, Ws};

#[tokio::test]
async fn websocket_refresh_keeps_the_subscriptions_the_new_token_grants() {
    let node = secured(&[]).await;
    let first = token(Some("alice"), &["news.*", "chat:*"]);
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={first}"))).await;
    ws.subscribe("news.a", None).await;
    ws.subscribe("chat:1", None).await;

    // Another user's token, or an invalid one, is refused; the connection keeps its token.
    ws.send(json!({"op": "refresh", "token": token(Some("bob"), &["*"]), "id": 1}))
        .await;
    let err = ws.next().await;
    assert_eq!(
        (err["code"].as_str(), err["id"].as_u64()),
        (Some("forbidden"), Some(1))
    );
    ws.send(json!({"op": "refresh", "token": hs256(&claims(Some("alice"), &["*"], -30)), "id": 2}))
        .await;
    assert_eq!(ws.next().await["code"], "token_expired");

    // The new token no longer grants chat:*: that subscription ends, news.a goes on.
    let second = hs256(&claims(Some("alice"), &["news.*"], 120));
    ws.send(json!({"op": "refresh", "token": second, "id": 3}))
        .await;
    let ended = ws.next().await;
    assert_eq!(
        ended,
        json!({"type": "unsubscribed", "channel": "chat:1", "reason": "forbidden"})
    );
    let ok = ws.next().await;
    assert_eq!(
        (ok["type"].as_str(), ok["sub"].as_str(), ok["id"].as_u64()),
        (Some("authenticated"), Some("alice"), Some(3))
    );
    node.publish("chat:1", json!("gone")).await;
    node.publish("news.a", json!("still here")).await;
    let m = ws.next_message().await;
    assert_eq!(
        (m["channel"].as_str(), m["data"].as_str()),
        (Some("news.a"), Some("still here"))
    );
    ws.send(json!({"op": "subscribe", "channel": "chat:1"}))
        .await;
    assert_eq!(ws.next().await["code"], "forbidden");
}

#[tokio::test]
async fn expiry_without_refresh_closes_with_4401_and_a_fresh_token_resumes_without_loss() {
    let node = secured(&["--jwt-leeway", "0s"]).await;
    let short = hs256(&claims(Some("alice"), &["news.*"], 2));
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={short}"))).await;
    ws.subscribe("news.a", None).await;
    node.publish("news.a", json!(1)).await;
    // The position from the message: a channel has no epoch before its first message.
    let m = ws.next_message().await;
    let seen = m["offset"].as_u64().expect("offset");
    let epoch = m["epoch"].as_str().expect("epoch").to_owned();
    // No refresh: at exp an error frame, then close 4401 ("reconnect with a new token").
    let err = ws.next().await;
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("token_expired"))
    );
    assert_eq!(ws.next_or_close().await, Err(Some(4401)));
    // Published while the client was away.
    node.publish("news.a", json!(2)).await;
    node.publish("news.a", json!(3)).await;
    let fresh = token(Some("alice"), &["news.*"]);
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={fresh}"))).await;
    let sub = ws.subscribe("news.a", Some((seen, &epoch))).await;
    assert_eq!(sub["recovered"], true);
    node.publish("news.a", json!(4)).await;
    for i in 2..=4 {
        assert_eq!(ws.next_message().await["data"], i);
    }
    // Counted once the expired connection is torn down (after its close handshake).
    node.wait_metric(
        "herald_disconnects_total",
        &["reason=\"token_expired\""],
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test]
async fn an_sse_stream_ends_with_token_expired_and_resumes_with_a_fresh_cookie() {
    let node = secured(&["--jwt-leeway", "0s"]).await;
    let short = hs256(&claims(None, &["news.*"], 2));
    let cookie = format!("herald_token={short}");
    let mut sse = Sse::try_connect_with(
        &node.url("/v1/sse?channel=news.a"),
        None,
        &[("cookie", &cookie)],
    )
    .await
    .expect("request");
    assert_eq!(sse.status, 200);
    node.publish("news.a", json!(1)).await;
    assert_eq!(sse.next_message().await.json(), 1);
    let last_id = sse.last_id.clone().expect("id");
    let end = sse.next().await.expect("the closing event");
    assert_eq!(end.event, "herald.error");
    assert_eq!(end.json()["code"], "token_expired");
    assert!(sse.next().await.is_none(), "the stream ends");
    node.publish("news.a", json!(2)).await;
    // What a page does: its backend sets a fresh HttpOnly cookie; EventSource reconnects with it
    // and its Last-Event-ID.
    let cookie = format!("herald_token={}", token(None, &["news.*"]));
    let mut sse = Sse::try_connect_with(
        &node.url("/v1/sse?channel=news.a"),
        Some(&last_id),
        &[("cookie", &cookie)],
    )
    .await
    .expect("request");
    assert_eq!(
        sse.next().await.expect("subscribed").json()["recovered"],
        true
    );
    assert_eq!(sse.next_message().await.json(), 2);
}

#[tokio::test]
async fn a_websocket_that_never_authenticates_is_closed_after_auth_timeout() {
    let node = secured(&["--auth-timeout", "1s"]).await;
    let mut silent = Ws::connect(&node.ws_url("/v1/ws")).await;
    let mut authed = Ws::connect(&node.ws_url("/v1/ws")).await;
    authed
        .send(json!({"op": "auth", "token": token(None, &["news.*"])}))
        .await;
    assert_eq!(authed.next().await["type"], "authenticated");
    let err = silent.next().await;
    assert_eq!(err["code"], "unauthorized");
    assert_eq!(silent.next_or_close().await, Err(Some(4401)));
    // The other one, opened at the same moment, is still served.
    authed.send(json!({"op": "ping", "id": 5})).await;
    assert_eq!(authed.next().await, json!({"type": "pong", "id": 5}));
}
