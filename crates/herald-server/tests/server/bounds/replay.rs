//! Resumes are replayed at the pace the client reads: a gap many times the connection's queue
//! bound completes, on SSE and WebSocket, memory and Redis brokers. The slow-consumer rule is
//! for clients that fall behind live traffic, and its final notice reaches a client that reads.

use herald_testkit::{RedisServer, clients::RawWs};
use serde_json::json;
use tokio::io::AsyncReadExt;

use super::{fat, get_unread, publish_many, tiny_socket};
use crate::support::{
    Herald,
    clients::{Sse, Ws},
    within,
};

/// 70 messages of 60,000 bytes (4.2 MB) against a 200 KB queue bound.
const GAP: u64 = 70;
const BOUND: &str = "200000";

/// Finding 4: on main both resumes were cut off as slow consumers every time (and counted as
/// recovered), so the client reconnected and failed forever.
async fn a_gap_larger_than_the_queue_bound_resumes(extra: &[&str]) {
    let mut args = vec!["--queue-max-bytes", BOUND];
    args.extend_from_slice(extra);
    let h = Herald::start(&args).await;
    let epoch = publish_many(&h, "big", GAP as usize, fat(60_000)).await;

    let mut sse = Sse::connect(
        &h.url("/v1/sse?channel=big"),
        Some(&format!("{epoch},0,big")),
    )
    .await;
    let sub = sse.next().await.expect("subscribed");
    assert_eq!(
        (sub.event.as_str(), &sub.json()["recovered"]),
        ("herald.subscribed", &json!(true))
    );
    for i in 1..=GAP {
        let ev = sse.next().await.expect("the replay goes on");
        assert_eq!(ev.event, "message", "{ev:?}");
        let offset: u64 = ev
            .id
            .as_deref()
            .and_then(|id| id.split(',').nth(1))
            .and_then(|o| o.parse().ok())
            .expect("id");
        assert_eq!(offset, i);
    }

    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    assert_eq!(
        ws.subscribe("big", Some((0, &epoch))).await["recovered"],
        true
    );
    for i in 1..=GAP {
        let m = ws.next_or_close().await.expect("the replay goes on");
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("message"), Some(i))
        );
    }

    // Then live, once each.
    h.publish("big", json!("live")).await;
    assert_eq!(sse.next_message().await.json(), json!("live"));
    assert_eq!(ws.next_message().await["offset"], GAP + 1);
    assert_eq!(
        h.metric("herald_recoveries_total", &["outcome=\"recovered\""])
            .await,
        2.0
    );
    assert_eq!(
        h.metric("herald_disconnects_total", &["reason=\"slow_consumer\""])
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_many_times_the_queue_bound_resumes_on_the_memory_broker() {
    a_gap_larger_than_the_queue_bound_resumes(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_many_times_the_queue_bound_resumes_on_redis() {
    let redis = RedisServer::start();
    a_gap_larger_than_the_queue_bound_resumes(&["--redis-url", &redis.url()]).await;
}

/// Publishes 16 KB messages to `channel` until the server drops one for a slow consumer.
async fn overflow(h: &Herald, channel: &str) {
    within("a slow-consumer drop", async {
        loop {
            for _ in 0..5 {
                h.publish(channel, fat(16_000)).await;
            }
            if h.metric(
                "herald_messages_dropped_total",
                &["reason=\"slow_consumer\""],
            )
            .await
                > 0.0
            {
                return;
            }
        }
    })
    .await;
}

/// Finding 9: a client that stopped reading long enough to overflow, then reads, gets the final
/// notice after what was in flight (on main it mostly got a bare EOF: the blocked writer was
/// dropped without one).
#[tokio::test]
async fn a_slow_consumer_that_reads_again_gets_the_websocket_close_4000() {
    let h = Herald::start(&[
        "--queue-max-bytes",
        "100000",
        "--max-message-bytes",
        "20000",
    ])
    .await;
    let stream = tiny_socket(&h.addr()).await;
    let mut ws = RawWs::handshake(stream, &h.addr(), "/v1/ws?channel=slow").await;
    let (op, _) = ws.read_frame().await.expect("subscribed frame");
    assert_eq!(op, 0x1);
    overflow(&h, "slow").await;
    assert_eq!(ws.read_close_code().await, Some(4000));
}

#[tokio::test]
async fn a_slow_consumer_that_reads_again_gets_the_sse_closing_event() {
    let h = Herald::start(&[
        "--queue-max-bytes",
        "100000",
        "--max-message-bytes",
        "20000",
    ])
    .await;
    let mut s = get_unread(&h.addr(), "/v1/sse?channel=slow HTTP/1.1").await;
    h.wait_metric("herald_connections", &["transport=\"sse\""], |v| v >= 1.0)
        .await;
    overflow(&h, "slow").await;
    let mut text = Vec::new();
    within("the end of the stream", s.read_to_end(&mut text))
        .await
        .expect("read");
    let text = String::from_utf8_lossy(&text);
    let tail = &text[text.len().saturating_sub(300)..];
    assert!(
        tail.contains("event: herald.error") && tail.contains("slow_consumer"),
        "the stream ends with the notice: {tail}"
    );
}
