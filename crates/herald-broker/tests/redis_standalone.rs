//! RedisBroker against a real standalone redis-server: what is specific to Redis (reads create
//! no keys, idempotency under many keys, TTL expiry, retention per namespace). The semantics
//! every broker shares (offsets, idempotency, history pages and recovery, epochs, delivery
//! between nodes, the seam) are the Broker contract suite, run by `tests/contract.rs`.

mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_broker::{Broker, History, RedisBroker, RedisConfig, Retention};
use herald_core::StreamPosition;
use support::{Collect, RedisServer, after, ch, eventually, latest, publish};

fn config(url: String, history_size: usize) -> RedisConfig {
    RedisConfig {
        url,
        history_size,
        history_ttl: Duration::from_secs(60),
        ..RedisConfig::default()
    }
}

async fn broker(redis: &RedisServer, history_size: usize) -> Arc<RedisBroker> {
    RedisBroker::connect(config(redis.url(), history_size))
        .await
        .expect("connect")
}

#[tokio::test]
async fn reads_create_nothing_and_the_first_publish_creates_the_epoch() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    for i in 0..50 {
        let name = format!("fresh-{i}");
        let h = b.history(&ch(&name), latest(100)).await.expect("history");
        assert_eq!(
            h.top,
            StreamPosition::start(),
            "no epoch before the first publish"
        );
        assert!(h.messages.is_empty() && !h.recovered);
        let caught_up = b
            .history(&ch(&name), after(&h.top, 100))
            .await
            .expect("history");
        assert!(
            caught_up.recovered,
            "nothing missed since before the first message"
        );
    }
    // The node's own probe channels are the only keys; reads created none.
    let sink = Collect::new();
    b.subscribe(&ch("watched"), sink.clone())
        .await
        .expect("subscribe");
    b.unsubscribe(&ch("watched")).await;
    assert_eq!(redis.cli(&["--scan", "--pattern", "herald:*"]).trim(), "");

    let p = b
        .publish(publish("fresh-0", 1, None))
        .await
        .expect("publish");
    assert!(!p.position.epoch.is_none());
    assert_eq!(p.position.offset, 1);
    let resumed = b
        .history(&ch("fresh-0"), after(&StreamPosition::start(), 100))
        .await
        .expect("history");
    assert!(
        resumed.recovered,
        "the start position continues into the first epoch"
    );
    assert_eq!(resumed.messages.len(), 1);
}

#[tokio::test]
async fn idempotency_holds_after_ten_thousand_other_keys() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    let first = b
        .publish(publish("orders", 0, Some("order-42")))
        .await
        .expect("publish");
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            for k in (t..10_001).step_by(8) {
                b.publish(publish("orders", k, Some(&format!("k{k}"))))
                    .await
                    .expect("publish");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    let again = b
        .publish(publish("orders", 0, Some("order-42")))
        .await
        .expect("publish");
    assert!(
        again.duplicate,
        "remembered for the TTL, however many keys came after"
    );
    assert_eq!(again.position, first.position);
}

#[tokio::test]
async fn history_expires_with_the_ttl() {
    let redis = RedisServer::start();
    let b = RedisBroker::connect(RedisConfig {
        history_ttl: Duration::from_millis(300),
        ..config(redis.url(), 10)
    })
    .await
    .expect("connect");
    let first = b
        .publish(publish("t", 1, Some("k")))
        .await
        .expect("publish");
    eventually("the history to expire", || async {
        b.history(&ch("t"), latest(10))
            .await
            .is_ok_and(|h| h.messages.is_empty())
    })
    .await;
    let again = b
        .publish(publish("t", 1, Some("k")))
        .await
        .expect("publish");
    assert!(!again.duplicate, "the key expired with the TTL");
    // Reads kept the channel (and its epoch) alive, as with MemoryBroker.
    assert_eq!(again.position.offset, 2);
    assert_eq!(again.position.epoch, first.position.epoch);
}

#[tokio::test]
async fn retention_is_decided_per_namespace() {
    let redis = RedisServer::start();
    let short = Retention {
        size: 2,
        ttl: Duration::from_secs(1),
    };
    let b = RedisBroker::connect(RedisConfig {
        retention_by_namespace: HashMap::from([("short".to_owned(), short)]),
        ..config(redis.url(), 10)
    })
    .await
    .expect("connect");
    for i in 1..=5 {
        b.publish(publish("short:a", i, None))
            .await
            .expect("publish");
        b.publish(publish("long", i, None)).await.expect("publish");
    }
    let offsets = |h: History| h.messages.iter().map(|m| m.offset).collect::<Vec<_>>();
    let long = b.history(&ch("long"), latest(100)).await.expect("history");
    assert_eq!(offsets(long), [1, 2, 3, 4, 5]);
    // The short TTL may already have trimmed some of the two kept: never more than two.
    let short = b
        .history(&ch("short:a"), latest(100))
        .await
        .expect("history");
    assert!(
        offsets(short).iter().all(|o| [4, 5].contains(o)),
        "MAXLEN 2 in the short namespace"
    );
    // A read from the start returns no more than the channel keeps either.
    let from_start = b
        .history(&ch("short:a"), after(&StreamPosition::start(), 100))
        .await
        .expect("history");
    assert!(from_start.messages.len() <= 2);
    eventually("the short namespace's history to expire", || async {
        b.history(&ch("short:a"), latest(10))
            .await
            .is_ok_and(|h| h.messages.is_empty())
    })
    .await;
    let long = b.history(&ch("long"), latest(100)).await.expect("history");
    assert_eq!(long.messages.len(), 5, "the long TTL is untouched");
}

#[tokio::test]
async fn a_zero_namespace_ttl_is_refused() {
    let zero = Retention {
        size: 10,
        ttl: Duration::ZERO,
    };
    let err = RedisBroker::connect(RedisConfig {
        retention_by_namespace: HashMap::from([("x".to_owned(), zero)]),
        ..config("redis://127.0.0.1:1".to_owned(), 10)
    })
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("history_ttl"), "{err}");
}

#[tokio::test]
async fn scripts_are_loaded_again_after_a_script_flush() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    let first = b.publish(publish("s", 1, None)).await.expect("publish");
    // SCRIPT FLUSH is what a Redis restart or failover does to the script cache: the next
    // EVALSHA is answered NOSCRIPT, and the broker loads the script and runs it again.
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]).trim(), "OK");
    let second = b.publish(publish("s", 2, None)).await.expect("publish");
    assert_eq!(second.position.offset, first.position.offset + 1);
    assert_eq!(second.position.epoch, first.position.epoch);
    redis.cli(&["SCRIPT", "FLUSH"]);
    let h = b.history(&ch("s"), latest(10)).await.expect("history");
    assert_eq!(h.messages.len(), 2);
}
