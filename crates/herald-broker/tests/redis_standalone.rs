//! RedisBroker against a real standalone redis-server: the same semantics as MemoryBroker
//! (offsets, idempotency, history and recovery, epochs) and delivery between two nodes.

mod support;

use std::{collections::HashMap, sync::Arc, time::Duration};

use herald_broker::{Broker, History, RedisBroker, RedisConfig, Retention};
use herald_core::{Epoch, EventName, StreamPosition};
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
async fn offsets_are_per_channel_and_start_at_one() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    assert_eq!(b.kind(), "redis");
    b.ready().await.expect("ready");
    let a1 = b.publish(publish("a", 1, None)).await.expect("publish");
    let a2 = b.publish(publish("a", 2, None)).await.expect("publish");
    let b1 = b.publish(publish("b", 1, None)).await.expect("publish");
    assert_eq!(
        (a1.position.offset, a2.position.offset, b1.position.offset),
        (1, 2, 1)
    );
    assert_eq!(a1.position.epoch, a2.position.epoch);
    assert_ne!(a1.position.epoch, b1.position.epoch);
    assert!(!a1.duplicate && !a2.duplicate);
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
async fn history_pages_are_bounded_by_bytes() {
    let redis = RedisServer::start();
    let b = broker(&redis, 100).await;
    for i in 1..=20 {
        b.publish(publish("p", i, None)).await.expect("publish");
    }
    let top = b.history(&ch("p"), latest(0)).await.expect("h").top;
    let start = StreamPosition {
        epoch: top.epoch.clone(),
        offset: 0,
    };
    let one = b.history(&ch("p"), after(&start, 1)).await.expect("h");
    let size = one.messages[0].stored_len();
    let page = b
        .history(
            &ch("p"),
            herald_broker::HistoryQuery::after(start.clone(), 100, size * 5),
        )
        .await
        .expect("h");
    let n = page.messages.len();
    assert!((1..20).contains(&n), "a page, not everything: {n}");
    assert!(page.recovered && !page.is_complete());
    let tiny = b
        .history(&ch("p"), herald_broker::HistoryQuery::after(start, 100, 1))
        .await
        .expect("h");
    assert_eq!(tiny.messages.len(), 1, "at least one message per page");
}

#[tokio::test]
async fn idempotent_publish_returns_the_first_result() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    let sink = Collect::new();
    b.subscribe(&ch("a"), sink.clone())
        .await
        .expect("subscribe");
    let first = b
        .publish(publish("a", 1, Some("k")))
        .await
        .expect("publish");
    let again = b
        .publish(publish("a", 1, Some("k")))
        .await
        .expect("publish");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.position, again.position);
    let other = b
        .publish(publish("a", 2, Some("k2")))
        .await
        .expect("publish");
    assert_eq!(other.position.offset, 2);
    sink.wait_for(2).await;
    assert_eq!(sink.offsets(), vec![1, 2], "a duplicate is not delivered");
    let h = b.history(&ch("a"), latest(100)).await.expect("history");
    assert_eq!(h.messages.len(), 2, "a duplicate is not stored");
    let elsewhere = b
        .publish(publish("b", 1, Some("k")))
        .await
        .expect("publish");
    assert!(!elsewhere.duplicate, "keys are per channel");
}

#[tokio::test]
async fn history_resume_reports_recovery() {
    let redis = RedisServer::start();
    let b = broker(&redis, 3).await;
    for i in 1..=5 {
        b.publish(publish("a", i, None)).await.expect("publish");
    }
    let all = b.history(&ch("a"), latest(100)).await.expect("history");
    let offsets =
        |h: &herald_broker::History| h.messages.iter().map(|m| m.offset).collect::<Vec<_>>();
    assert_eq!(offsets(&all), [3, 4, 5]);
    assert!(!all.recovered, "no since, nothing to recover");
    assert_eq!(all.top.offset, 5);
    let epoch = all.top.epoch.clone();
    let at = |offset| StreamPosition {
        epoch: epoch.clone(),
        offset,
    };

    let ok = b.history(&ch("a"), after(&at(3), 100)).await.expect("h");
    assert!(ok.recovered);
    assert_eq!(offsets(&ok), [4, 5]);

    let caught_up = b.history(&ch("a"), after(&at(5), 100)).await.expect("h");
    assert!(caught_up.recovered && caught_up.messages.is_empty());

    let too_old = b.history(&ch("a"), after(&at(1), 100)).await.expect("h");
    assert!(!too_old.recovered, "offset 2 was trimmed");
    assert_eq!(
        offsets(&too_old),
        [3, 4, 5],
        "what is retained is still returned"
    );

    let cut = b.history(&ch("a"), after(&at(2), 1)).await.expect("h");
    assert!(
        cut.recovered,
        "3 follows 2: a page cut by its limit still continues"
    );
    assert!(!cut.is_complete());
    assert_eq!(offsets(&cut), [3]);

    let other = Epoch::parse("ffff").expect("epoch");
    let wrong = b
        .history(
            &ch("a"),
            after(
                &StreamPosition {
                    epoch: other,
                    offset: 4,
                },
                100,
            ),
        )
        .await
        .expect("h");
    assert!(!wrong.recovered && wrong.messages.is_empty());

    let future = b.history(&ch("a"), after(&at(9), 100)).await.expect("h");
    assert!(
        !future.recovered,
        "a position beyond the top is from another incarnation"
    );
    assert!(future.messages.is_empty());
}

#[tokio::test]
async fn messages_keep_event_data_and_timestamp() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    let sink = Collect::new();
    b.subscribe(&ch("e"), sink.clone())
        .await
        .expect("subscribe");
    let mut p = publish("e", 0, None);
    p.event = Some(EventName::parse("update").expect("event"));
    p.data = bytes::Bytes::from_static(b"{\"text\":\"a b\\nc\",\"n\":[1,2]}");
    b.publish(p.clone()).await.expect("publish");
    sink.wait_for(1).await;
    let live = sink.messages()[0].clone();
    let stored = b
        .history(&ch("e"), latest(10))
        .await
        .expect("history")
        .messages[0]
        .clone();
    assert_eq!(live, stored, "live and history carry the same message");
    assert_eq!(live.event, p.event);
    assert_eq!(live.data, p.data);
    assert_eq!(live.channel, p.channel);
    assert!(live.published_at_us > 0);
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
async fn two_nodes_deliver_every_publish_once_in_order() {
    let redis = RedisServer::start();
    let publisher = broker(&redis, 1000).await;
    let node = broker(&redis, 1000).await;
    let sink = Collect::new();
    let quiet = Collect::new();
    node.subscribe(&ch("x"), sink.clone())
        .await
        .expect("subscribe");
    node.subscribe(&ch("other"), quiet.clone())
        .await
        .expect("subscribe");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let p = publisher.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    p.publish(publish("x", t * 1000 + i, None))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    sink.wait_for(400).await;
    assert_eq!(sink.offsets(), (1..=400).collect::<Vec<_>>());
    assert!(quiet.offsets().is_empty(), "channels are separate");

    node.unsubscribe(&ch("x")).await;
    publisher
        .publish(publish("other", 1, None))
        .await
        .expect("publish");
    publisher
        .publish(publish("x", 1, None))
        .await
        .expect("publish");
    quiet.wait_for(1).await;
    // "other" was published after "x"'s last message and has arrived, and one connection
    // delivers in order, so "x" would have arrived by now if it were still relayed.
    publisher
        .publish(publish("other", 2, None))
        .await
        .expect("publish");
    quiet.wait_for(2).await;
    assert_eq!(sink.offsets().len(), 400, "unsubscribed");
    assert_eq!(node.stats().snapshot().decode_errors, 0);
}

#[tokio::test]
async fn resubscribing_starts_from_the_current_top() {
    let redis = RedisServer::start();
    let b = broker(&redis, 10).await;
    let first = Collect::new();
    b.subscribe(&ch("r"), first.clone())
        .await
        .expect("subscribe");
    b.publish(publish("r", 1, None)).await.expect("publish");
    first.wait_for(1).await;
    b.unsubscribe(&ch("r")).await;
    b.publish(publish("r", 2, None)).await.expect("publish");
    let second = Collect::new();
    b.subscribe(&ch("r"), second.clone())
        .await
        .expect("subscribe");
    b.publish(publish("r", 3, None)).await.expect("publish");
    second.wait_for(1).await;
    assert_eq!(
        second.offsets(),
        vec![3],
        "what was acked before subscribe is history's job"
    );
    assert_eq!(first.offsets(), vec![1]);
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
