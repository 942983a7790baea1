//! RedisBroker under faults: pub/sub connections killed mid-stream, a connection that goes
//! silent, Redis restarted with and without persistence, Redis down.

mod support;

use std::{sync::Arc, time::Duration};

use herald_broker::{Broker, BrokerError, RedisBroker, RedisConfig};
use herald_core::StreamPosition;
use support::{Collect, RedisServer, after, ch, eventually, latest, publish, until_ok};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        history_size: 10_000,
        history_ttl: Duration::from_secs(60),
        timeout: Duration::from_millis(500),
        probe_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    }
}

async fn broker(url: String) -> Arc<RedisBroker> {
    RedisBroker::connect(config(url)).await.expect("connect")
}

/// Publishes `1..=n` to `channel` one after another, retrying while Redis is unavailable.
fn publish_continuously(
    b: Arc<RedisBroker>,
    channel: &'static str,
    n: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 1;
        while i <= n {
            match b.publish(publish(channel, i, Some(&format!("k{i}")))).await {
                Ok(p) => {
                    assert_eq!(p.position.offset, i, "one offset per idempotency key");
                    i += 1;
                }
                Err(BrokerError::Unavailable(_)) => tokio::task::yield_now().await,
                Err(e) => panic!("publish: {e}"),
            }
        }
    })
}

#[tokio::test]
async fn killed_pubsub_connections_lose_nothing() {
    let redis = RedisServer::start();
    let publisher = broker(redis.url()).await;
    let node = broker(redis.url()).await;
    let sink = Collect::new();
    node.subscribe(&ch("k"), sink.clone())
        .await
        .expect("subscribe");
    let n = 600;
    let task = publish_continuously(publisher.clone(), "k", n);
    for at in [50, 250, 450] {
        sink.wait_for(at).await;
        let killed = redis.cli(&["client", "kill", "type", "pubsub"]);
        assert_ne!(killed.trim(), "0", "a pub/sub client was killed");
    }
    task.await.expect("publisher");
    sink.wait_for(n as usize).await;
    assert_eq!(
        sink.offsets(),
        (1..=n).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    eventually("the node to count its reconnects", || async {
        node.stats().snapshot().reconnects >= 3
    })
    .await;
    eprintln!("stats: {:?}", node.stats().snapshot());
    node.ready().await.expect("ready again");
}

/// Gap fills read history in bounded pages like every read: a gap of many pages is filled page by
/// page, in order, nothing lost.
#[tokio::test]
async fn gap_fills_read_many_small_pages_and_lose_nothing() {
    let redis = RedisServer::start();
    let publisher = broker(redis.url()).await;
    let node = RedisBroker::connect(RedisConfig {
        page_bytes: 100, // two or three messages per read
        ..config(redis.url())
    })
    .await
    .expect("connect");
    let sink = Collect::new();
    node.subscribe(&ch("g"), sink.clone())
        .await
        .expect("subscribe");
    publisher
        .publish(publish("g", 1, None))
        .await
        .expect("publish");
    sink.wait_for(1).await;
    node.debug_mute_pubsub();
    for i in 2..=60 {
        publisher
            .publish(publish("g", i, None))
            .await
            .expect("publish");
    }
    sink.wait_for(60).await;
    assert_eq!(sink.offsets(), (1..=60).collect::<Vec<_>>());
    let stats = node.stats().snapshot();
    assert!(stats.gap_fills >= 10, "read in many pages: {stats:?}");
}

#[tokio::test]
async fn a_silent_pubsub_connection_is_detected_by_the_probe() {
    let redis = RedisServer::start();
    let publisher = broker(redis.url()).await;
    let node = broker(redis.url()).await;
    let sink = Collect::new();
    node.subscribe(&ch("s"), sink.clone())
        .await
        .expect("subscribe");
    publisher
        .publish(publish("s", 1, None))
        .await
        .expect("publish");
    sink.wait_for(1).await;
    node.debug_mute_pubsub();
    for i in 2..=20 {
        publisher
            .publish(publish("s", i, None))
            .await
            .expect("publish");
    }
    sink.wait_for(20).await;
    assert_eq!(sink.offsets(), (1..=20).collect::<Vec<_>>());
    let stats = node.stats().snapshot();
    assert!(stats.probe_failures >= 1, "{stats:?}");
    assert!(stats.gap_fill_messages >= 1, "{stats:?}");
}

#[tokio::test]
async fn aof_restart_keeps_acked_messages_and_the_epoch() {
    let mut redis = RedisServer::start_aof();
    let b = broker(redis.url()).await;
    let sink = Collect::new();
    b.subscribe(&ch("p"), sink.clone())
        .await
        .expect("subscribe");
    let mut last = None;
    for i in 1..=10 {
        last = Some(b.publish(publish("p", i, None)).await.expect("publish"));
    }
    let last = last.expect("published").position;
    sink.wait_for(10).await;
    redis.restart();
    let since = StreamPosition {
        epoch: last.epoch.clone(),
        offset: 0,
    };
    let channel = ch("p");
    let h = until_ok("history after the restart", || {
        b.history(&channel, after(&since, 100))
    })
    .await;
    assert!(h.recovered, "same epoch, nothing lost");
    assert_eq!(h.top, last);
    assert_eq!(h.messages.len(), 10);
    let next = b.publish(publish("p", 11, None)).await.expect("publish");
    assert_eq!(next.position.epoch, last.epoch);
    assert_eq!(next.position.offset, 11);
    sink.wait_for(11).await;
    assert_eq!(sink.offsets(), (1..=11).collect::<Vec<_>>());
}

#[tokio::test]
async fn restart_without_persistence_changes_the_epoch() {
    let mut redis = RedisServer::start();
    let b = broker(redis.url()).await;
    let sink = Collect::new();
    b.subscribe(&ch("v"), sink.clone())
        .await
        .expect("subscribe");
    let before = b
        .publish(publish("v", 1, None))
        .await
        .expect("publish")
        .position;
    sink.wait_for(1).await;
    redis.restart();
    let published = until_ok("a publish after the restart", || {
        b.publish(publish("v", 2, None))
    })
    .await
    .position;
    assert_ne!(published.epoch, before.epoch, "history was lost: new epoch");
    assert_eq!(published.offset, 1);
    sink.wait_for(2).await;
    let got = sink.messages();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[1].position(), published, "the sink sees the new epoch");
    let stale = b
        .history(&ch("v"), after(&before, 10))
        .await
        .expect("history");
    assert!(!stale.recovered, "the old epoch cannot be resumed");
}

#[tokio::test]
async fn redis_down_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let b = broker(redis.url()).await;
    let sink = Collect::new();
    b.subscribe(&ch("d"), sink.clone())
        .await
        .expect("subscribe");
    b.ready().await.expect("ready");
    redis.kill();
    // The outer timeout only turns a hang into a failure; the broker's own bound is 500ms.
    let failed = tokio::time::timeout(Duration::from_secs(10), b.publish(publish("d", 1, None)))
        .await
        .expect("publish must not hang");
    assert!(
        matches!(failed, Err(BrokerError::Unavailable(_))),
        "{failed:?}"
    );
    let not_ready = tokio::time::timeout(Duration::from_secs(10), b.ready())
        .await
        .expect("ready must not hang");
    assert!(not_ready.is_err());
    let history = tokio::time::timeout(Duration::from_secs(10), b.history(&ch("d"), latest(1)))
        .await
        .expect("history must not hang");
    assert!(matches!(history, Err(BrokerError::Unavailable(_))));

    redis.restart();
    eventually("ready after the restart", || async {
        b.ready().await.is_ok()
    })
    .await;
    let p = b.publish(publish("d", 1, None)).await.expect("publish");
    assert_eq!(p.position.offset, 1);
    sink.wait_for(1).await;
    assert_eq!(sink.offsets(), vec![1]);
}

#[tokio::test]
async fn subscribe_while_redis_is_down_fails_then_works() {
    let mut redis = RedisServer::start();
    let b = broker(redis.url()).await;
    redis.kill();
    eventually("not ready", || async { b.ready().await.is_err() }).await;
    let sink = Collect::new();
    let r = b.subscribe(&ch("late"), sink.clone()).await;
    assert!(matches!(r, Err(BrokerError::Unavailable(_))), "{r:?}");
    redis.restart();
    eventually("ready", || async { b.ready().await.is_ok() }).await;
    b.subscribe(&ch("late"), sink.clone())
        .await
        .expect("subscribe");
    b.publish(publish("late", 1, None)).await.expect("publish");
    sink.wait_for(1).await;
}

#[tokio::test]
async fn an_unreachable_redis_does_not_block_connect() {
    let port = support::free_port();
    let b = RedisBroker::connect(config(format!("redis://127.0.0.1:{port}")))
        .await
        .expect("connect returns while Redis is down");
    assert!(b.ready().await.is_err());
    assert!(matches!(
        b.publish(publish("x", 1, None)).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(
        RedisBroker::connect(config("http://nope".into()))
            .await
            .is_err()
    );
}
