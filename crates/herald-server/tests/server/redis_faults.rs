//! Failures around the Redis backbone: a node killed, Redis stopped and restarted (with and
//! without persistence), pub/sub connections killed server-side. Publishers retry with their
//! idempotency key, as documented; subscribers dedupe by offset.

use std::{collections::BTreeSet, sync::Arc};

use herald_testkit::RedisServer;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::{Herald, clients::Ws, within};

/// A WebSocket subscriber that, like herald.js, reconnects to the next node after any close and
/// resumes with `since`, keeping the offsets it saw (duplicates included, to count them).
struct Resumer {
    urls: Vec<String>,
    channel: String,
    epoch: String,
    last: u64,
    seen: Vec<u64>,
}

impl Resumer {
    /// Runs until it has seen offset `last_acked` (set once the publisher is done).
    async fn run(mut self, mut last_acked: watch::Receiver<Option<u64>>) -> Vec<u64> {
        let mut node = 0;
        'connections: loop {
            let mut ws = Ws::connect(&self.urls[node % self.urls.len()]).await;
            node += 1;
            let since = (!self.epoch.is_empty()).then_some((self.last, self.epoch.as_str()));
            let sub = ws.subscribe(&self.channel, since).await;
            self.epoch = sub["epoch"].as_str().expect("epoch").to_owned();
            loop {
                if last_acked
                    .borrow()
                    .is_some_and(|target| self.last >= target)
                {
                    return self.seen;
                }
                let frame: Value = tokio::select! {
                    frame = ws.next_or_close() => match frame {
                        Ok(v) => v,
                        Err(_) => continue 'connections,
                    },
                    _ = last_acked.changed() => continue,
                };
                if frame["type"] == "message" {
                    let offset = frame["offset"].as_u64().expect("offset");
                    // A position is the last message's epoch and offset.
                    self.epoch = frame["epoch"].as_str().expect("epoch").to_owned();
                    self.seen.push(offset);
                    self.last = self.last.max(offset);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_no_acknowledged_message() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Herald::start(&["--redis-url", &redis.url()]).await);
    }
    // Subscribers start on the node that will die, and fail over to the survivors.
    let urls: Vec<String> = [2, 0, 1]
        .iter()
        .map(|&i| nodes[i].ws_url("/v1/ws"))
        .collect();
    let (finished, last_acked) = watch::channel(None);
    let mut subscribers = Vec::new();
    for _ in 0..4 {
        let r = Resumer {
            urls: urls.clone(),
            channel: "k".into(),
            epoch: String::new(),
            last: 0,
            seen: Vec::new(),
        };
        subscribers.push(tokio::spawn(r.run(last_acked.clone())));
    }
    nodes[2]
        .wait_metric("herald_subscriptions", &[], |v| v == 4.0)
        .await;

    let mut acked = BTreeSet::new();
    for i in 0..300u64 {
        if i == 100 {
            nodes[2].kill().await;
        }
        let (offset, _, _) = nodes[(i % 2) as usize]
            .publish_retrying("k", json!(i), &format!("k-{i}"))
            .await;
        acked.insert(offset);
    }
    finished.send_replace(acked.last().copied());
    for s in subscribers {
        let seen = within("subscriber to catch up", s)
            .await
            .expect("subscriber");
        let unique: BTreeSet<u64> = seen.iter().copied().collect();
        assert_eq!(
            unique, acked,
            "every acknowledged message, after dedupe by offset"
        );
    }
}

/// Publishes 1..=n through `node`, retrying; returns the acknowledged offsets and how many
/// attempts failed.
async fn publish_range(
    node: &Herald,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
) -> (Vec<u64>, u32) {
    let mut offsets = Vec::new();
    let mut failures = 0;
    for i in range {
        let (offset, _, failed) = node
            .publish_retrying(channel, json!(i), &format!("{channel}-{i}"))
            .await;
        offsets.push(offset);
        failures += failed;
    }
    (offsets, failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_with_aof_fails_fast_then_delivers_everything_once() {
    let mut redis = RedisServer::start_aof();
    let a =
        Arc::new(Herald::start(&["--redis-url", &redis.url(), "--redis-timeout", "300ms"]).await);
    let b = Herald::start(&["--redis-url", &redis.url(), "--redis-timeout", "300ms"]).await;
    let mut subscribers = Vec::new();
    for node in [&*a, &b] {
        let mut ws = Ws::connect(&node.ws_url("/v1/ws")).await;
        ws.subscribe("o", None).await;
        subscribers.push(ws);
    }
    let (mut acked, _) = publish_range(&a, "o", 1..=20).await;

    redis.kill();
    // Publishes fail fast with 503 (the publisher keeps retrying), readiness turns unready.
    let (status, body) = a.post("/v1/publish", r#"{"channel":"o","data":0}"#).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("unavailable"))
    );
    a.wait_for_ready(false).await;
    let outage_publisher = {
        let a = a.clone();
        tokio::spawn(async move { publish_range(&a, "o", 21..=40).await })
    };
    // Let it fail at least once against the dead Redis, then bring Redis back.
    a.wait_metric(
        "herald_messages_published_total",
        &["outcome=\"unavailable\""],
        |v| v >= 3.0,
    )
    .await;
    redis.restart();
    let (more, failures) = outage_publisher.await.expect("publisher");
    assert!(failures > 0, "the outage was observed by the publisher");
    acked.extend(more);
    a.wait_for_ready(true).await;
    b.wait_for_ready(true).await;
    let (more, _) = publish_range(&b, "o", 41..=50).await;
    acked.extend(more);
    assert_eq!(
        acked,
        (1..=50).collect::<Vec<_>>(),
        "AOF kept the epoch and offsets"
    );

    // Subscribers stayed connected and got everything exactly once, in order.
    for ws in &mut subscribers {
        for i in 1..=50u64 {
            let m = ws.next_message().await;
            assert_eq!(m["offset"].as_u64(), Some(i));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_without_persistence_is_an_explicit_reset() {
    let mut redis = RedisServer::start();
    let a = Herald::start(&["--redis-url", &redis.url(), "--redis-timeout", "300ms"]).await;
    let mut ws = Ws::connect(&a.ws_url("/v1/ws")).await;
    let old_epoch = ws.subscribe("r", None).await["epoch"]
        .as_str()
        .expect("epoch")
        .to_owned();
    a.publish("r", json!(1)).await;
    assert_eq!(ws.next_message().await["offset"], 1);
    redis.restart();
    a.wait_for_ready(true).await;
    let (offset, new_epoch, _) = a.publish_retrying("r", json!("after"), "r-after").await;
    assert_ne!(new_epoch, old_epoch, "history was lost: new epoch");
    assert_eq!(offset, 1);
    // The subscriber is told, not left in silence or fed a stream it cannot place.
    let reset = within("reset", async {
        loop {
            let v = ws.next().await;
            if v["type"] == "subscribed" {
                return v;
            }
        }
    })
    .await;
    assert_eq!(
        (reset["recovered"].as_bool(), reset["epoch"].as_str()),
        (Some(false), Some(new_epoch.as_str()))
    );
    let m = ws.next_message().await;
    assert_eq!(
        (m["offset"].as_u64(), &m["data"]),
        (Some(1), &json!("after"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_pubsub_connections_are_noticed_and_gaps_filled() {
    let redis = RedisServer::start();
    let a = Arc::new(Herald::start(&["--redis-url", &redis.url()]).await);
    let b = Herald::start(&["--redis-url", &redis.url()]).await;
    let mut ws = Ws::connect(&b.ws_url("/v1/ws")).await;
    ws.subscribe("p", None).await;
    const N: u64 = 300;
    let publisher = {
        let a = a.clone();
        tokio::spawn(async move { publish_range(&a, "p", 1..=N).await })
    };
    for _ in 0..3 {
        // Wait for progress, then cut every pub/sub connection under the nodes' feet.
        let seen = ws.next_message().await["offset"].as_u64().expect("offset");
        assert!(seen <= N);
        redis.cli(&["client", "kill", "type", "pubsub"]);
    }
    let (acked, _) = publisher.await.expect("publisher");
    assert_eq!(acked.len() as u64, N);
    // Everything after the last offset read above arrives, in order, once.
    let mut last = None;
    let mut offsets = Vec::new();
    while last != Some(N) {
        let o = ws.next_message().await["offset"].as_u64().expect("offset");
        offsets.push(o);
        last = Some(o);
    }
    assert!(
        offsets.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous: {offsets:?}"
    );
    b.wait_metric(
        "herald_backbone_events_total",
        &["event=\"reconnect\""],
        |v| v >= 1.0,
    )
    .await;
}
