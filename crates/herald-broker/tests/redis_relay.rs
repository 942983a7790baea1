//! The relay and subscribes under slow Redis calls, with real Redis: a slow history read of
//! one channel holds up no other channel, an overflowing relay queue turns into a fill from
//! history (every message exactly once, in order), and a slow subscribe holds up no subscribe
//! to another channel. Slowness is a test hook that holds one call until released, so every
//! step awaits an event; nothing is timed.

mod support;

use std::{sync::Arc, time::Duration};

use futures_util::future::join_all;
use herald_broker::{Broker, Hold, RedisBroker, RedisConfig};
use herald_testkit::within;
use support::{Collect, RedisServer, ch, eventually, publish};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        history_size: 10_000,
        history_ttl: Duration::from_secs(60),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    }
}

async fn broker(config: RedisConfig) -> Arc<RedisBroker> {
    RedisBroker::connect(config).await.expect("connect")
}

async fn publish_range(b: &RedisBroker, channel: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        b.publish(publish(channel, i, None)).await.expect("publish");
    }
}

#[tokio::test]
async fn a_slow_gap_fill_on_one_channel_does_not_delay_the_others() {
    let redis = RedisServer::start();
    let publisher = broker(config(redis.url())).await;
    let node = broker(config(redis.url())).await;
    let (slow, fast) = (Collect::new(), Collect::new());
    node.subscribe(&ch("slow"), slow.clone())
        .await
        .expect("subscribe");
    node.subscribe(&ch("fast"), fast.clone())
        .await
        .expect("subscribe");
    publish_range(&publisher, "slow", 1..=1).await;
    slow.wait_for(1).await;

    // A reconnect makes every channel read history; the slow channel's read is held.
    let gate = node.debug_hold(Hold::Fill(ch("slow")));
    let killed = redis.cli(&["client", "kill", "type", "pubsub"]);
    assert_ne!(killed.trim(), "0", "a pub/sub client was killed");
    within("the slow channel's fill to start", gate.reached()).await;

    publish_range(&publisher, "slow", 2..=3).await;
    publish_range(&publisher, "fast", 1..=5).await;
    fast.wait_for(5).await;
    assert_eq!(fast.offsets(), [1, 2, 3, 4, 5]);
    assert_eq!(slow.offsets(), [1], "parked behind its own read");

    gate.release();
    slow.wait_for(3).await;
    assert_eq!(slow.offsets(), [1, 2, 3], "every message once, in order");
}

#[tokio::test]
async fn an_overflowing_relay_queue_is_filled_from_history_exactly_once_in_order() {
    let redis = RedisServer::start();
    let publisher = broker(config(redis.url())).await;
    let node = broker(RedisConfig {
        relay_queue: 4,
        ..config(redis.url())
    })
    .await;
    let sink = Collect::new();
    node.subscribe(&ch("o"), sink.clone())
        .await
        .expect("subscribe");
    publish_range(&publisher, "o", 1..=1).await;
    sink.wait_for(1).await;

    let gate = node.debug_hold(Hold::Relay);
    let n = 60;
    publish_range(&publisher, "o", 2..=n).await;
    within("the relay to hold the first push", gate.reached()).await;
    eventually("the queue to overflow", || async {
        node.stats().snapshot().relay_overflows > 0
    })
    .await;
    let before = node.stats().snapshot();
    assert_eq!(sink.offsets(), [1], "the relay was held");

    gate.release();
    sink.wait_for(n as usize).await;
    assert_eq!(
        sink.offsets(),
        (1..=n).collect::<Vec<_>>(),
        "every offset once, in order"
    );
    let after = node.stats().snapshot();
    assert!(
        after.gap_fills > before.gap_fills && after.gap_fill_messages > 0,
        "dropped messages came from history: {after:?}"
    );
    publish_range(&publisher, "o", n + 1..=n + 1).await;
    sink.wait_for(n as usize + 1).await;
    assert_eq!(sink.offsets().last(), Some(&(n + 1)), "live again");
}

#[tokio::test]
async fn a_slow_subscribe_does_not_delay_subscribes_to_other_channels() {
    let redis = RedisServer::start();
    let publisher = broker(config(redis.url())).await;
    let node = broker(config(redis.url())).await;
    let gate = node.debug_hold(Hold::Subscribe(ch("slow")));
    let slow = Collect::new();
    let held = tokio::spawn({
        let (node, slow) = (node.clone(), slow.clone());
        async move { node.subscribe(&ch("slow"), slow).await }
    });
    within("the slow subscribe to reach Redis", gate.reached()).await;

    // Far more channels than the 64 shards subscribes used to be serialised by: some share
    // any shard with the held one.
    let others: Vec<_> = (0..300).map(|i| ch(&format!("other{i}"))).collect();
    let sinks: Vec<_> = others.iter().map(|_| Collect::new()).collect();
    let results = within(
        "subscribes to other channels",
        join_all(others.iter().zip(&sinks).map(|(c, s)| {
            let sink: Arc<dyn herald_broker::Sink> = s.clone();
            let node = node.clone();
            async move { node.subscribe(c, sink).await }
        })),
    )
    .await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    publish_range(&publisher, "other7", 1..=1).await;
    sinks[7].wait_for(1).await;
    assert!(!held.is_finished(), "the slow subscribe is still held");

    gate.release();
    within("the slow subscribe", held)
        .await
        .expect("task")
        .expect("subscribe");
    publish_range(&publisher, "slow", 1..=2).await;
    slow.wait_for(2).await;
    assert_eq!(slow.offsets(), [1, 2]);
}
