//! What the brokers keep and how long a Redis call may take: `--redis-timeout` is the bound that
//! applies, idempotency holds for the TTL however many keys come after, reads create nothing,
//! and the embedded broker's memory has a limit that publishes fail loudly against.

use futures_util::{SinkExt, StreamExt};
use herald_testkit::RedisServer;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::fat;
use crate::support::{
    Herald,
    clients::{Sse, Ws},
    within,
};

/// Finding 2: with `--redis-timeout 3s`, a Redis that answers after ~1.2 s is slow, not down.
/// On main the redis crate's own 500 ms response timeout failed these calls.
#[tokio::test]
async fn redis_timeout_is_the_bound_that_applies() {
    let redis = RedisServer::start();
    let h = Herald::start(&["--redis-url", &redis.url(), "--redis-timeout", "3s"]).await;
    h.publish("slow", json!(0)).await;
    for what in ["publish", "history"] {
        assert_eq!(redis.cli(&["CLIENT", "PAUSE", "1200", "ALL"]).trim(), "OK");
        let (status, body) = match what {
            "publish" => {
                let (s, v) = h
                    .post("/v1/publish", r#"{"channel":"slow","data":1}"#)
                    .await;
                (s, v.to_string())
            }
            _ => h.get("/v1/channels/slow/history").await,
        };
        assert_eq!(status, 200, "{what} during a 1.2 s pause: {body}");
    }
}

/// Publishes over one WebSocket (pipelined: all ops sent, then all replies read), each with its
/// own idempotency key; returns the replies in order.
async fn publish_keys(h: &Herald, channel: &str, keys: impl Iterator<Item = String>) -> Vec<Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(h.ws_url("/v1/ws"))
        .await
        .expect("ws");
    let mut n = 0;
    for key in keys {
        let op = json!({"op": "publish", "channel": channel, "data": n, "idempotency_key": key, "id": n});
        ws.feed(WsMessage::text(op.to_string()))
            .await
            .expect("send");
        n += 1;
    }
    ws.flush().await.expect("flush");
    let mut replies = Vec::with_capacity(n);
    within("publish replies", async {
        while replies.len() < n {
            match ws.next().await {
                Some(Ok(WsMessage::Text(t))) => {
                    replies.push(serde_json::from_str(&t).expect("json"))
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await;
    replies
}

/// Finding 5: an idempotent retry after 10,000 publishes with other keys, within the TTL, must
/// return the first result. On main the embedded broker had forgotten it (a duplicate at offset
/// 10,002).
async fn idempotency_outlives_ten_thousand_other_keys(extra: &[&str]) {
    // Pipelined publishes over one WebSocket: no per-connection rate limit for this test.
    let mut args = vec![
        "--allow-client-publish",
        "true",
        "--ws-message-rate",
        "0",
        "--ws-publish-rate",
        "0",
    ];
    args.extend_from_slice(extra);
    let h = Herald::start(&args).await;
    let body = r#"{"channel":"orders","data":1,"idempotency_key":"order-42"}"#;
    let (status, first) = h.post("/v1/publish", body).await;
    assert_eq!(status, 200, "{first}");
    let replies = publish_keys(&h, "orders", (0..10_000).map(|k| format!("k{k}"))).await;
    assert!(
        replies.iter().all(|r| r["type"] == "published"),
        "{:?}",
        replies.iter().find(|r| r["type"] != "published")
    );
    let (status, again) = h.post("/v1/publish", body).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first, "the first result, not a duplicate");
    assert_eq!(
        h.metric(
            "herald_messages_published_total",
            &["outcome=\"duplicate\""]
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_outlives_ten_thousand_other_keys_on_the_memory_broker() {
    idempotency_outlives_ten_thousand_other_keys(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_outlives_ten_thousand_other_keys_on_redis() {
    let redis = RedisServer::start();
    idempotency_outlives_ten_thousand_other_keys(&["--redis-url", &redis.url()]).await;
}

/// Reads of channels nobody published to: history, WebSocket subscribes (fresh and resuming),
/// SSE streams.
async fn read_unknown_channels(h: &Herald, n: usize) {
    for i in 0..n {
        let (status, _) = h
            .get(&format!("/v1/channels/nobody-{i}/history?since=0"))
            .await;
        assert_eq!(status, 200);
    }
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    for i in 0..20 {
        let sub = ws.subscribe(&format!("ghost-{i}"), None).await;
        assert_eq!((&sub["epoch"], &sub["offset"]), (&json!(""), &json!(0)));
        ws.subscribe(&format!("ghost-resume-{i}"), Some((0, "abc")))
            .await;
    }
    drop(ws);
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=phantom"), Some(",0,phantom")).await;
    let ev = sse.next().await.expect("subscribed");
    assert_eq!(
        ev.json()["recovered"],
        true,
        "nothing missed before the first message"
    );
    drop(sse);
}

/// Finding 6 (memory): on main every read of an unknown channel created an entry kept for the
/// TTL (+20 MB for 50,000 reads).
#[tokio::test]
async fn reads_of_unknown_channels_leave_no_state_in_the_memory_broker() {
    let h = Herald::start(&["--channel-linger", "10ms"]).await;
    read_unknown_channels(&h, 500).await;
    h.wait_metric("herald_subscriptions", &[], |v| v == 0.0)
        .await;
    h.wait_metric("herald_broker_channels", &[], |v| v == 0.0)
        .await;
    let (_, text) = h.get("/metrics").await;
    assert!(
        text.contains("\nherald_broker_channels 0\n"),
        "no channel kept"
    );
    assert!(
        text.contains("\nherald_broker_memory_bytes 0\n"),
        "nothing kept"
    );
    h.publish("real", json!(1)).await;
    assert_eq!(h.metric("herald_broker_channels", &[]).await, 1.0);
    assert!(h.metric("herald_broker_memory_bytes", &[]).await > 0.0);
}

/// Finding 6 (Redis): on main 20,000 reads of unknown channels left 20,000 `...:m` keys with a
/// one-hour TTL.
#[tokio::test]
async fn reads_of_unknown_channels_leave_no_keys_in_redis() {
    let redis = RedisServer::start();
    let h = Herald::start(&["--redis-url", &redis.url(), "--channel-linger", "10ms"]).await;
    read_unknown_channels(&h, 500).await;
    h.wait_metric("herald_subscriptions", &[], |v| v == 0.0)
        .await;
    assert_eq!(
        redis.cli(&["--scan", "--pattern", "herald:*"]).trim(),
        "",
        "no key"
    );
    h.publish("real", json!(1)).await;
    assert!(
        !redis
            .cli(&["--scan", "--pattern", "herald:*"])
            .trim()
            .is_empty()
    );
}

/// Finding 6: the embedded broker's memory is bounded; past the bound a publish gets a clear
/// error, and nothing already stored is forgotten (an idempotent retry still answers).
#[tokio::test]
async fn the_memory_broker_refuses_publishes_past_its_bound_and_forgets_nothing() {
    let h = Herald::start(&["--memory-max-bytes", "1000000"]).await;
    let keyed = r#"{"channel":"c0","data":0,"idempotency_key":"first"}"#;
    let (status, first) = h.post("/v1/publish", keyed).await;
    assert_eq!(status, 200);
    let refusal = within("the bound", async {
        for i in 1.. {
            let body = json!({"channel": format!("c{}", i % 7), "data": fat(50_000)}).to_string();
            let (status, v) = h.post("/v1/publish", &body).await;
            if status != 200 {
                return (status, v);
            }
        }
        unreachable!()
    })
    .await;
    assert_eq!(refusal.0, 503, "{}", refusal.1);
    assert_eq!(refusal.1["error"]["code"], "storage_full", "{}", refusal.1);
    let (status, again) = h.post("/v1/publish", keyed).await;
    assert_eq!((status, again), (200, first), "still remembered");
    assert!(h.metric("herald_broker_memory_bytes", &[]).await <= 1_000_000.0);
    assert_eq!(
        h.metric("herald_messages_published_total", &["outcome=\"full\""])
            .await,
        1.0
    );
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"memory_max_bytes\""]
        )
        .await,
        1.0
    );
}

/// Finding 9: with Redis down, an SSE subscribe waited for the broker twice (the fast path, then
/// hyper) before its 503; with a 20 s `--redis-timeout` that is 40 s on main. Once a reconnect
/// attempt has failed, Redis is known to be unreachable and the answer comes at once.
#[tokio::test]
async fn with_redis_down_an_sse_subscribe_gets_its_503_without_waiting() {
    let mut redis = RedisServer::start();
    let h = Herald::start(&["--redis-url", &redis.url(), "--redis-timeout", "20s"]).await;
    h.wait_for_ready(true).await;
    redis.kill();
    h.wait_metric(
        "herald_backbone_events_total",
        &["event=\"connect_failure\""],
        |v| v >= 1.0,
    )
    .await;
    let sse = within(
        "the SSE answer",
        Sse::try_connect(&h.url("/v1/sse?channel=down"), None),
    )
    .await
    .expect("response");
    assert_eq!(sse.status, 503);
}
