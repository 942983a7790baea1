//! RedisBroker with Sentinel: failover with replicated durability (no acknowledged message
//! lost, everything delivered once, in order), a pub/sub connection left on a frozen old primary
//! (only the self-probe can tell), and a history that lost what a node had delivered (an
//! explicit reset, never silence).

mod support;

use std::time::Duration;

use herald_broker::{Broker, Durability, RedisBroker, RedisConfig};
use herald_core::StreamPosition;
use support::{
    Collect, RedisSentinel, RedisServer, after, ch, eventually, latest, publish, publish_range,
};

fn config(url: String) -> RedisConfig {
    RedisConfig {
        url,
        history_size: 10_000,
        history_ttl: Duration::from_secs(60),
        timeout: Duration::from_millis(500),
        wait_timeout: Duration::from_millis(500),
        probe_interval: Duration::from_millis(200),
        probe_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..RedisConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_with_replicated_durability_loses_no_acknowledged_message() {
    // Two replicas: after the failover the new primary still has one to acknowledge writes.
    let mut redis = RedisSentinel::start(2);
    let replicated = |url: String| RedisConfig {
        durability: Durability::Replicated,
        ..config(url)
    };
    let publisher = RedisBroker::connect(replicated(redis.url()))
        .await
        .expect("connect");
    let node = RedisBroker::connect(replicated(redis.url()))
        .await
        .expect("connect");
    let sink = Collect::new();
    node.subscribe(&ch("f"), sink.clone())
        .await
        .expect("subscribe");
    // Publishing goes on through the kill: the second half starts only once the primary is
    // dead, so the publisher meets the outage however fast the first half went.
    let (killed, kill_done) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            let (mut acked, first) = publish_range(publisher.clone(), "f", 1..=150).await;
            let _ = kill_done.await;
            let (more, second) = publish_range(publisher, "f", 151..=300).await;
            acked.extend(more);
            (acked, first + second)
        }
    });
    sink.wait_for(100).await;
    let old = redis.primary_port();
    redis.primary().kill();
    let _ = killed.send(());
    let promoted = redis.wait_for_failover(old);
    let (acked, failures) = task.await.expect("publisher");
    assert_eq!(
        acked,
        (1..=300).collect::<Vec<_>>(),
        "one offset per key, no gap"
    );
    sink.wait_for(300).await;
    assert_eq!(
        sink.offsets(),
        (1..=300).collect::<Vec<_>>(),
        "every acknowledged message once, in order"
    );
    eprintln!(
        "failover {old} -> {promoted}: {failures} publish attempts failed; publisher {:?}; node {:?}",
        publisher.stats().snapshot(),
        node.stats().snapshot()
    );
    // No assertion on `failures`: the second half is published entirely after the kill, so the
    // failover is exercised either way; on a loaded machine the broker's own reconnect can
    // outlast Sentinel's promotion, and then no attempt fails at all (seen once in a full run).
    let h = node.history(&ch("f"), latest(1)).await.expect("history");
    assert_eq!(h.top.offset, 300, "the new primary has everything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pubsub_connection_left_on_a_frozen_primary_is_caught_by_the_probe() {
    let mut redis = RedisSentinel::start(1);
    let publisher = RedisBroker::connect(config(redis.url()))
        .await
        .expect("connect");
    // Deaf to +switch-master: only the self-probe can notice that its pub/sub connection sits
    // on a server that no longer gets any publish.
    let node = RedisBroker::connect(RedisConfig {
        follow_switch_master: false,
        ..config(redis.url())
    })
    .await
    .expect("connect");
    let sink = Collect::new();
    node.subscribe(&ch("z"), sink.clone())
        .await
        .expect("subscribe");
    publisher
        .publish(publish("z", 1, None))
        .await
        .expect("publish");
    sink.wait_for(1).await;
    let old = redis.primary_port();
    redis.primary().freeze();
    redis.wait_for_failover(old);
    let (acked, _) = publish_range(publisher.clone(), "z", 2..=20).await;
    assert_eq!(acked, (2..=20).collect::<Vec<_>>());
    sink.wait_for(20).await;
    assert_eq!(sink.offsets(), (1..=20).collect::<Vec<_>>());
    let stats = node.stats().snapshot();
    assert!(stats.probe_failures >= 1, "{stats:?}");
    assert_eq!(stats.primary_switches, 0, "{stats:?}");
    // Kill the frozen server now rather than thawing it into a second primary.
    redis
        .nodes
        .iter_mut()
        .find(|n| n.port == old)
        .expect("old")
        .kill();
}

/// What a failover without replicated durability can do to a channel: the new primary's
/// history is behind what a node delivered, or has other messages at the same offsets. Made
/// here by rewriting the channel's keys, then a pub/sub reconnect makes the relay look again.
#[tokio::test]
async fn a_history_that_lost_delivered_messages_resets_the_channel() {
    let redis = RedisServer::start();
    let node = RedisBroker::connect(config(redis.url()))
        .await
        .expect("connect");
    for (channel, rewrite) in [("behind", false), ("rewritten", true)] {
        let sink = Collect::new();
        node.subscribe(&ch(channel), sink.clone())
            .await
            .expect("subscribe");
        for i in 1..=10 {
            node.publish(publish(channel, i, None))
                .await
                .expect("publish");
        }
        sink.wait_for(10).await;
        let epoch = sink.messages()[0].epoch.clone();
        let (meta, stream) = (
            format!("herald:{{{channel}}}:m"),
            format!("herald:{{{channel}}}:s"),
        );
        if rewrite {
            // Same epoch and top, but offset 10 is another message.
            let entry = sink.messages()[9].clone();
            redis.cli(&["xtrim", &stream, "maxlen", "0"]);
            redis.cli(&["del", &stream]);
            let payload = format!(
                "h1 10 {} {} {} {channel}\n\"other\"",
                epoch.as_str(),
                entry.published_at_us + 1,
                ""
            );
            let now_ms = (herald_broker::now_us() / 1000).to_string();
            redis.cli(&["xadd", &stream, "10-0", "t", &now_ms, "p", &payload]);
        } else {
            redis.cli(&["hset", &meta, "o", "6"]);
            redis.cli(&["xdel", &stream, "7-0", "8-0", "9-0", "10-0"]);
        }
        let resets = node.stats().snapshot().history_resets;
        redis.cli(&["client", "kill", "type", "pubsub"]);
        eventually("the channel to be reset", || async {
            node.stats().snapshot().history_resets > resets
        })
        .await;
        // The next publish starts a new epoch, and the subscriber sees it: an explicit reset.
        let next = node
            .publish(publish(channel, 11, None))
            .await
            .expect("publish");
        assert_ne!(next.position.epoch, epoch, "{channel}: a new epoch");
        sink.wait_for(11).await;
        let last = sink.messages()[10].clone();
        assert_eq!(last.position(), next.position, "{channel}");
        let stale = node
            .history(
                &ch(channel),
                after(&StreamPosition { epoch, offset: 10 }, 10),
            )
            .await
            .expect("history");
        assert!(
            !stale.recovered,
            "{channel}: resuming the old epoch is a reset"
        );
        node.unsubscribe(&ch(channel)).await;
    }
}
