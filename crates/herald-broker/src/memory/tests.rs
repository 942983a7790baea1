use super::*;
use bytes::Bytes;

fn cfg(size: usize, ttl_secs: u64) -> MemoryConfig {
    MemoryConfig {
        history_size: size,
        history_ttl: Duration::from_secs(ttl_secs),
        max_idempotency_keys: 4,
    }
}

fn publish(channel: &str, n: u64, key: Option<&str>) -> Publish {
    Publish {
        channel: ChannelName::parse(channel).expect("name"),
        event: None,
        data: Bytes::from(n.to_string()),
        idempotency_key: key.map(str::to_owned),
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
async fn offsets_are_per_channel_and_start_at_one() {
    let b = MemoryBroker::new(cfg(10, 60));
    let a1 = b.publish(publish("a", 1, None)).await.expect("publish");
    let a2 = b.publish(publish("a", 2, None)).await.expect("publish");
    let b1 = b.publish(publish("b", 1, None)).await.expect("publish");
    assert_eq!(
        (a1.position.offset, a2.position.offset, b1.position.offset),
        (1, 2, 1)
    );
    assert_eq!(a1.position.epoch, a2.position.epoch);
    assert_ne!(
        a1.position.epoch, b1.position.epoch,
        "epochs are random per channel"
    );
}

#[tokio::test]
async fn idempotent_publish_returns_the_first_result() {
    let b = MemoryBroker::new(cfg(10, 60));
    let sink = Arc::new(Collect::default());
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
    assert_eq!(*sink.0.lock(), vec![1], "a duplicate is not delivered");
}

#[tokio::test]
async fn history_resume_reports_recovery() {
    let b = MemoryBroker::new(cfg(3, 60));
    for i in 1..=5 {
        b.publish(publish("a", i, None)).await.expect("publish");
    }
    let all = b.history(&ch("a"), None, 100).await.expect("history");
    assert_eq!(
        all.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    assert!(!all.recovered, "no since, nothing to recover");
    let epoch = all.top.epoch.clone();

    let ok = b
        .history(
            &ch("a"),
            Some(&StreamPosition {
                epoch: epoch.clone(),
                offset: 3,
            }),
            100,
        )
        .await
        .expect("h");
    assert!(ok.recovered);
    assert_eq!(
        ok.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [4, 5]
    );

    let caught_up = b
        .history(
            &ch("a"),
            Some(&StreamPosition {
                epoch: epoch.clone(),
                offset: 5,
            }),
            100,
        )
        .await
        .expect("h");
    assert!(caught_up.recovered && caught_up.messages.is_empty());

    let too_old = b
        .history(
            &ch("a"),
            Some(&StreamPosition {
                epoch: epoch.clone(),
                offset: 1,
            }),
            100,
        )
        .await
        .expect("h");
    assert!(!too_old.recovered, "offset 2 was trimmed");
    assert_eq!(
        too_old.messages.len(),
        3,
        "what is retained is still returned"
    );

    let cut = b
        .history(
            &ch("a"),
            Some(&StreamPosition {
                epoch: epoch.clone(),
                offset: 2,
            }),
            1,
        )
        .await
        .expect("h");
    assert!(!cut.recovered, "limit cut the read short");

    let other = Epoch::parse("ffff").expect("epoch");
    let wrong = b
        .history(
            &ch("a"),
            Some(&StreamPosition {
                epoch: other,
                offset: 4,
            }),
            100,
        )
        .await
        .expect("h");
    assert!(!wrong.recovered && wrong.messages.is_empty());

    let future = b
        .history(&ch("a"), Some(&StreamPosition { epoch, offset: 9 }), 100)
        .await
        .expect("h");
    assert!(
        !future.recovered,
        "a position beyond the top is from another incarnation"
    );
}

#[tokio::test(start_paused = true)]
async fn ttl_expires_history_and_idempotency_keys_and_sweeps_idle_channels() {
    let b = MemoryBroker::new(cfg(10, 60));
    let first = b
        .publish(publish("a", 1, Some("k")))
        .await
        .expect("publish");
    tokio::time::advance(Duration::from_secs(61)).await;
    let h = b.history(&ch("a"), None, 100).await.expect("history");
    assert!(h.messages.is_empty(), "expired");
    let again = b
        .publish(publish("a", 1, Some("k")))
        .await
        .expect("publish");
    assert!(!again.duplicate, "key expired with the TTL");
    assert_eq!(again.position.offset, 2);
    tokio::time::advance(Duration::from_secs(61)).await;
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
async fn idempotency_keys_are_bounded() {
    let b = MemoryBroker::new(cfg(10, 60));
    for k in 0..10 {
        b.publish(publish("a", k, Some(&format!("k{k}"))))
            .await
            .expect("publish");
    }
    assert!(
        !b.publish(publish("a", 0, Some("k0")))
            .await
            .expect("publish")
            .duplicate,
        "evicted"
    );
    assert!(
        b.publish(publish("a", 9, Some("k9")))
            .await
            .expect("publish")
            .duplicate,
        "recent kept"
    );
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
