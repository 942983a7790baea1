use super::*;
use bytes::Bytes;
use std::sync::atomic::Ordering;

fn cfg(size: usize, ttl_secs: u64) -> MemoryConfig {
    MemoryConfig {
        history_size: size,
        history_ttl: Duration::from_secs(ttl_secs),
        ..MemoryConfig::default()
    }
}

fn latest(limit: usize) -> HistoryQuery {
    HistoryQuery {
        start: crate::Start::Latest,
        limit,
        max_bytes: usize::MAX,
    }
}

fn offsets(h: &History) -> Vec<u64> {
    h.messages.iter().map(|m| m.offset).collect()
}

fn publish(channel: &str, n: u64, key: Option<&str>) -> Publish {
    Publish {
        channel: ChannelName::parse(channel).expect("name"),
        event: None,
        data: Bytes::from(n.to_string()),
        idempotency_key: key.map(str::to_owned),
        sender: None,
    }
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("name")
}

#[derive(Default)]
struct Collect(parking_lot::Mutex<Vec<u64>>);

impl Sink for Collect {
    fn deliver(&self, msg: Arc<Message>) {
        self.0.lock().push(msg.offset);
    }
}

#[tokio::test]
async fn reads_and_subscriptions_of_unknown_channels_leave_nothing_behind() {
    let b = MemoryBroker::new(cfg(10, 60));
    for i in 0..100 {
        let h = b
            .history(&ch(&format!("nobody-{i}")), latest(10))
            .await
            .expect("h");
        assert_eq!(
            h.top,
            StreamPosition::start(),
            "no epoch before the first publish"
        );
        assert!(h.messages.is_empty());
        let resume = HistoryQuery::after(StreamPosition::start(), 10, usize::MAX);
        assert!(
            b.history(&ch(&format!("nobody-{i}")), resume)
                .await
                .expect("h")
                .recovered
        );
    }
    let sink = Arc::new(Collect::default());
    b.subscribe(&ch("watched"), sink.clone())
        .await
        .expect("subscribe");
    b.unsubscribe(&ch("watched")).await;
    assert_eq!(b.channel_count(), 0);
    assert_eq!(b.stats().bytes.load(Ordering::Relaxed), 0);
    assert_eq!(b.stats().channels.load(Ordering::Relaxed), 0);

    // A subscriber from before the first message continues into the epoch that publish creates.
    b.subscribe(&ch("new"), sink.clone())
        .await
        .expect("subscribe");
    let p = b.publish(publish("new", 1, None)).await.expect("publish");
    assert!(!p.position.epoch.is_none());
    assert!(StreamPosition::start().is_followed_by(&p.position.epoch, p.position.offset));
    let resumed = b
        .history(
            &ch("new"),
            HistoryQuery::after(StreamPosition::start(), 10, usize::MAX),
        )
        .await
        .expect("h");
    assert!(
        resumed.recovered,
        "nothing was missed since before the first message"
    );
    assert_eq!(offsets(&resumed), [1]);
}

#[tokio::test]
async fn the_memory_bound_refuses_publishes_loudly_and_forgets_nothing() {
    let b = MemoryBroker::new(MemoryConfig {
        max_bytes: 20_000,
        ..cfg(1000, 60)
    });
    let first = b
        .publish(publish("a", 0, Some("k0")))
        .await
        .expect("publish");
    let mut refused = None;
    for k in 1..1000 {
        match b.publish(publish("a", k, Some(&format!("k{k}")))).await {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    assert!(matches!(refused, Some(BrokerError::Full(_))), "{refused:?}");
    assert!(b.stats().bytes.load(Ordering::Relaxed) <= 20_000);
    let again = b
        .publish(publish("a", 0, Some("k0")))
        .await
        .expect("a retry still answers");
    assert!(again.duplicate && again.position == first.position);
    assert!(matches!(
        b.publish(publish("other", 0, None)).await,
        Err(BrokerError::Full(_))
    ));
    assert_eq!(
        b.channel_count(),
        1,
        "a refused publish leaves no channel behind"
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_history_and_idempotency_keys_and_sweeps_idle_channels() {
    let b = MemoryBroker::new(cfg(10, 60));
    let first = b
        .publish(publish("a", 1, Some("k")))
        .await
        .expect("publish");
    tokio::time::advance(Duration::from_secs(30)).await;
    b.history(&ch("a"), latest(100)).await.expect("history"); // a read keeps the epoch alive
    tokio::time::advance(Duration::from_secs(31)).await;
    let h = b.history(&ch("a"), latest(100)).await.expect("history");
    assert!(h.messages.is_empty(), "expired");
    assert_eq!(
        h.top, first.position,
        "the epoch outlives its messages while read"
    );
    let again = b
        .publish(publish("a", 1, Some("k")))
        .await
        .expect("publish");
    assert!(!again.duplicate, "key expired with the TTL");
    assert_eq!(again.position.offset, 2);
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        b.history(&ch("a"), latest(100)).await.expect("h").top,
        StreamPosition::start(),
        "idle past the TTL: gone, like a Redis key that expired"
    );
    b.sweep();
    assert_eq!(b.channel_count(), 0);
    let fresh = b.publish(publish("a", 1, None)).await.expect("publish");
    assert_ne!(
        fresh.position.epoch, first.position.epoch,
        "history lost: new epoch"
    );
    assert_eq!(fresh.position.offset, 1);
}

#[tokio::test]
async fn idempotency_keys_last_the_ttl_however_many_there_are() {
    let b = MemoryBroker::new(cfg(10, 60));
    let first = b
        .publish(publish("a", 0, Some("order-42")))
        .await
        .expect("publish");
    for k in 0..10_001 {
        b.publish(publish("a", k, Some(&format!("k{k}"))))
            .await
            .expect("publish");
    }
    let again = b
        .publish(publish("a", 0, Some("order-42")))
        .await
        .expect("publish");
    assert!(
        again.duplicate,
        "remembered for the TTL, not evicted by count"
    );
    assert_eq!(again.position, first.position);
}

#[tokio::test]
async fn concurrent_publishes_reach_the_sink_in_offset_order() {
    let b = MemoryBroker::new(cfg(10, 60));
    let sink = Arc::new(Collect::default());
    b.subscribe(&ch("a"), sink.clone())
        .await
        .expect("subscribe");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    b.publish(publish("a", t * 1000 + i, None))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    assert_eq!(*sink.0.lock(), (1..=800).collect::<Vec<_>>());
    b.unsubscribe(&ch("a")).await;
    b.publish(publish("a", 0, None)).await.expect("publish");
    assert_eq!(sink.0.lock().len(), 800, "unsubscribed");
}

/// Channels of the `short` namespace keep 2 messages for 10 s; every other channel the
/// configured 10 for 60 s.
fn per_namespace() -> MemoryConfig {
    let short = Retention {
        size: 2,
        ttl: Duration::from_secs(10),
    };
    MemoryConfig {
        retention_by_namespace: HashMap::from([("short".to_owned(), short)]),
        ..cfg(10, 60)
    }
}

#[tokio::test(start_paused = true)]
async fn retention_is_decided_per_namespace() {
    let b = MemoryBroker::new(per_namespace());
    for i in 1..=5 {
        b.publish(publish("short:a", i, Some(&format!("k{i}"))))
            .await
            .expect("publish");
        b.publish(publish("long", i, None)).await.expect("publish");
        b.publish(publish("shorter:a", i, None))
            .await
            .expect("publish");
    }
    let short = b
        .history(&ch("short:a"), latest(100))
        .await
        .expect("history");
    assert_eq!(offsets(&short), [4, 5], "size 2 in the short namespace");
    let long = b.history(&ch("long"), latest(100)).await.expect("history");
    assert_eq!(offsets(&long), [1, 2, 3, 4, 5]);
    let other = b
        .history(&ch("shorter:a"), latest(100))
        .await
        .expect("history");
    assert_eq!(
        offsets(&other),
        [1, 2, 3, 4, 5],
        "a namespace, not a prefix"
    );

    tokio::time::advance(Duration::from_secs(11)).await;
    let short = b
        .history(&ch("short:a"), latest(100))
        .await
        .expect("history");
    assert!(short.messages.is_empty(), "10 s TTL in the short namespace");
    let again = b
        .publish(publish("short:a", 5, Some("k5")))
        .await
        .expect("publish");
    assert!(
        !again.duplicate,
        "idempotency keys expire with the channel's TTL"
    );
    let long = b.history(&ch("long"), latest(100)).await.expect("history");
    assert_eq!(long.messages.len(), 5, "60 s TTL elsewhere");
}

#[tokio::test(start_paused = true)]
async fn a_short_namespace_ttl_frees_memory_without_a_read() {
    let b = MemoryBroker::new(per_namespace());
    b.publish(publish("short:a", 1, Some("k")))
        .await
        .expect("publish");
    assert_eq!(b.channel_count(), 1);
    // The sweep is paced by the shortest TTL (10 s / 4), not the default 60 s one.
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(b.channel_count(), 0, "swept after the namespace's TTL");
    assert_eq!(b.stats().bytes.load(Ordering::Relaxed), 0);
}
