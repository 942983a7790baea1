//! Live delivery: publishes reach the right SSE and WebSocket subscribers, in order.

use serde_json::json;

use crate::support::{
    Herald,
    clients::{Sse, Ws},
};

#[tokio::test]
async fn a_publish_reaches_sse_and_ws_subscribers_of_that_channel_only() {
    let h = Herald::start(&[]).await;
    let mut sse_news = Sse::connect(&h.url("/v1/sse?channel=news"), None).await;
    assert_eq!(sse_news.status, 200);
    let mut sse_other = Sse::connect(&h.url("/v1/sse?channel=other"), None).await;
    let mut ws_news = Ws::connect(&h.ws_url("/v1/ws?channel=news")).await;
    assert_eq!(ws_news.next().await["type"], "subscribed");
    let mut ws_other = Ws::connect(&h.ws_url("/v1/ws")).await;
    ws_other.subscribe("other", None).await;

    h.publish("news", json!({"title": "hi"})).await;
    h.publish("other", json!("for other")).await;

    let ev = sse_news.next_message().await;
    assert_eq!(
        (ev.event.as_str(), ev.json()),
        ("message", json!({"title": "hi"}))
    );
    let m = ws_news.next_message().await;
    assert_eq!(
        (m["channel"].as_str(), m["offset"].as_u64(), &m["data"]),
        (Some("news"), Some(1), &json!({"title": "hi"}))
    );
    // The other channel's subscribers see only their own message (it is the first they get).
    assert_eq!(sse_other.next_message().await.json(), json!("for other"));
    assert_eq!(ws_other.next_message().await["data"], json!("for other"));

    // The deliveries are counted per transport and their fan-out latency is recorded.
    h.wait_metric(
        "herald_messages_delivered_total",
        &["transport=\"sse\""],
        |v| v >= 2.0,
    )
    .await;
    h.wait_metric(
        "herald_messages_delivered_total",
        &["transport=\"ws\""],
        |v| v >= 2.0,
    )
    .await;
    h.wait_metric("herald_fanout_latency_seconds_count", &[], |v| v >= 2.0)
        .await;
    assert_eq!(
        h.metric("herald_messages_published_total", &["outcome=\"ok\""])
            .await,
        2.0
    );
    assert_eq!(
        h.metric(
            "herald_http_requests_total",
            &["route=\"publish\"", "status=\"200\""]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn multi_channel_streams_keep_per_channel_order() {
    let h = Herald::start(&[]).await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=a&channel=b"), None).await;
    let mut ws = Ws::connect(&h.ws_url("/v1/ws?channel=a&channel=b")).await;
    for _ in 0..2 {
        assert_eq!(ws.next().await["type"], "subscribed");
    }
    for i in 0..50 {
        h.publish(if i % 3 == 0 { "a" } else { "b" }, json!({"i": i}))
            .await;
    }
    let (mut last_a, mut last_b) = (-1i64, -1i64);
    let mut ws_seen = Vec::new();
    for _ in 0..50 {
        let i = sse.next_message().await.json()["i"].as_i64().expect("i");
        let last = if i % 3 == 0 { &mut last_a } else { &mut last_b };
        assert!(i > *last, "per-channel order");
        *last = i;
        let m = ws.next_message().await;
        ws_seen.push((
            m["channel"].as_str().expect("channel").to_owned(),
            m["offset"].as_u64().expect("offset"),
        ));
    }
    for ch in ["a", "b"] {
        let offsets: Vec<u64> = ws_seen
            .iter()
            .filter(|(c, _)| c == ch)
            .map(|(_, o)| *o)
            .collect();
        assert_eq!(
            offsets,
            (1..=offsets.len() as u64).collect::<Vec<_>>(),
            "channel {ch} in order, no gap"
        );
    }
    // The SSE id covers both channels.
    let id = sse.last_id.clone().expect("id");
    assert!(id.contains(",a") && id.contains(",b"), "{id}");
}

#[tokio::test]
async fn idempotent_publish_and_broadcast() {
    let h = Herald::start(&[]).await;
    let mut ws = Ws::connect(&h.ws_url("/v1/ws?channel=x&channel=y")).await;
    ws.next().await;
    ws.next().await;
    let body = r#"{"channel":"x","data":1,"idempotency_key":"order-1"}"#;
    let (s1, first) = h.post("/v1/publish", body).await;
    let (s2, again) = h.post("/v1/publish", body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, again, "a retry returns the first result");

    let (status, v) = h
        .post("/v1/broadcast", r#"{"channels":["x","y"],"data":"both"}"#)
        .await;
    assert_eq!(status, 200);
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    assert_eq!(
        (
            results[0]["channel"].as_str(),
            results[0]["offset"].as_u64()
        ),
        (Some("x"), Some(2))
    );
    assert_eq!(
        (
            results[1]["channel"].as_str(),
            results[1]["offset"].as_u64()
        ),
        (Some("y"), Some(1))
    );

    let mut got = Vec::new();
    for _ in 0..3 {
        let m = ws.next_message().await;
        got.push((
            m["channel"].as_str().expect("c").to_owned(),
            m["offset"].as_u64().expect("o"),
        ));
    }
    got.sort();
    assert_eq!(
        got,
        [("x".into(), 1), ("x".into(), 2), ("y".into(), 1)],
        "the duplicate was not delivered"
    );
}

#[tokio::test]
async fn websocket_clients_publish_only_when_allowed() {
    let closed = Herald::start(&[]).await;
    let mut ws = Ws::connect(&closed.ws_url("/v1/ws")).await;
    ws.send(json!({"op": "publish", "channel": "c", "data": 1, "id": 7}))
        .await;
    let v = ws.next().await;
    assert_eq!(
        (v["type"].as_str(), v["code"].as_str(), v["id"].as_u64()),
        (Some("error"), Some("forbidden"), Some(7))
    );

    let open = Herald::start(&["--allow-client-publish", "true"]).await;
    let mut ws = Ws::connect(&open.ws_url("/v1/ws?channel=c")).await;
    ws.next().await;
    ws.send(json!({"op": "publish", "channel": "c", "data": {"k": 1}, "id": 8}))
        .await;
    let mut types = Vec::new();
    for _ in 0..2 {
        let v = ws.next().await;
        types.push(v["type"].as_str().expect("type").to_owned());
    }
    types.sort();
    assert_eq!(types, ["message", "published"]);
    ws.send(json!({"op": "ping", "id": 9})).await;
    assert_eq!(ws.next().await, json!({"type": "pong", "id": 9}));
}

#[tokio::test]
async fn history_endpoint_serves_retained_messages() {
    let h = Herald::start(&["--history-size", "3"]).await;
    for i in 1..=5 {
        h.publish("chat:room/1", json!(i)).await;
    }
    let (status, body) = h.get("/v1/channels/chat%3Aroom%2F1/history").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let offsets: Vec<u64> = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["offset"].as_u64().expect("o"))
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
    let (_, body) = h.get("/v1/channels/chat:room%2F1/history?since=4").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        (v["recovered"].as_bool(), v["messages"][0]["data"].as_u64()),
        (Some(true), Some(5))
    );
    let (_, body) = h.get("/v1/channels/chat:room%2F1/history?since=1").await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["recovered"], false, "offset 2 is no longer retained");
}

/// An SSE request that is not the first on its connection is served by the HTTP stack rather
/// than the fresh-connection fast path; both must stream the same way.
#[tokio::test]
async fn sse_on_a_reused_keep_alive_connection_streams_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Herald::start(&[]).await;
    let mut s = tokio::net::TcpStream::connect(h.addr())
        .await
        .expect("connect");
    let host = h.addr();
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(r#"{"status":"ok"}"#) {
        let n = crate::support::within("healthz", s.read(&mut buf))
            .await
            .expect("read");
        assert!(n > 0, "connection closed");
        got.extend_from_slice(&buf[..n]);
    }
    s.write_all(format!("GET /v1/sse?channel=ka HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    h.wait_metric("herald_subscriptions", &[], |v| v == 1.0)
        .await;
    h.publish("ka", json!("kept alive")).await;
    let mut text = String::new();
    while !text.contains("data: \"kept alive\"") {
        let n = crate::support::within("the event", s.read(&mut buf))
            .await
            .expect("read");
        assert!(n > 0, "connection closed");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: herald.subscribed"), "{text}");
}
