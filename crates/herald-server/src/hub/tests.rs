use super::*;
use bytes::Bytes;
use herald_broker::{MemoryBroker, MemoryConfig};
use herald_core::protocol::Publish;
use tokio_util::sync::CancellationToken;

fn hub_with_history(history_size: usize) -> Arc<Hub> {
    let broker = MemoryBroker::new(MemoryConfig {
        history_size,
        ..MemoryConfig::default()
    });
    Hub::new(
        broker,
        HubConfig {
            linger: Duration::from_millis(10),
            resume_limit: history_size,
        },
        Default::default(),
    )
}

fn hub() -> Arc<Hub> {
    hub_with_history(100)
}

fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("name")
}

fn outbox() -> Arc<Outbox> {
    Outbox::new(
        Bounds {
            max_items: 10_000,
            max_bytes: 10 << 20,
        },
        CancellationToken::default(),
    )
}

async fn publish(hub: &Hub, channel: &str, n: u64) -> StreamPosition {
    let p = Publish {
        channel: ch(channel),
        event: None,
        data: Bytes::from(n.to_string()),
        idempotency_key: None,
    };
    hub.broker().publish(p).await.expect("publish").position
}

/// Drains what is queued: (subscribed frames as (offset, recovered), message offsets).
async fn drain(o: &Outbox) -> (Vec<(u64, bool)>, Vec<u64>) {
    let batch = o.take().await;
    let mut subs = Vec::new();
    let mut msgs = Vec::new();
    for item in batch.items {
        match item {
            Item::Subscribed(s) => subs.push((s.position.offset, s.recovered)),
            Item::Message(d) => msgs.push(d.msg.offset),
            Item::Raw(_) => {}
        }
    }
    (subs, msgs)
}

#[tokio::test]
async fn live_messages_reach_subscribers_of_that_channel_only() {
    let hub = hub();
    let (a, b) = (outbox(), outbox());
    hub.subscribe(1, &a, &ch("a"), None, None)
        .await
        .expect("sub");
    hub.subscribe(2, &b, &ch("b"), None, None)
        .await
        .expect("sub");
    publish(&hub, "a", 1).await;
    assert_eq!(drain(&a).await, (vec![(0, false)], vec![1]));
    assert_eq!(drain(&b).await, (vec![(0, false)], vec![]));
    assert!(matches!(
        hub.subscribe(1, &a, &ch("a"), None, None).await,
        Err(SubscribeError::AlreadySubscribed(_))
    ));
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_messages() {
    let hub = hub();
    let first = publish(&hub, "a", 1).await;
    for i in 2..=5 {
        publish(&hub, "a", i).await;
    }
    let o = outbox();
    hub.subscribe(1, &o, &ch("a"), Some(first.clone()), None)
        .await
        .expect("sub");
    publish(&hub, "a", 6).await;
    assert_eq!(drain(&o).await, (vec![(1, true)], vec![2, 3, 4, 5, 6]));

    let other = StreamPosition {
        epoch: Epoch::parse("nope").expect("epoch"),
        offset: 3,
    };
    let o2 = outbox();
    hub.subscribe(2, &o2, &ch("a"), Some(other), None)
        .await
        .expect("sub");
    assert_eq!(
        drain(&o2).await,
        (vec![(6, false)], vec![]),
        "unknown epoch: explicit reset, live only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_loses_and_duplicates_nothing_under_concurrent_publishing() {
    let hub = hub_with_history(5000);
    let start = publish(&hub, "seam", 0).await;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 1..=2000 {
                publish(&hub, "seam", i).await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Resume subscribers at staggered moments while the publisher runs.
    let mut boxes = Vec::new();
    for conn in 0..20u64 {
        let o = outbox();
        hub.subscribe(conn, &o, &ch("seam"), Some(start.clone()), None)
            .await
            .expect("sub");
        boxes.push(o);
        tokio::task::yield_now().await;
    }
    publisher.await.expect("publisher");
    for o in boxes {
        let mut offsets = Vec::new();
        while offsets.last() != Some(&2001) {
            let (subs, msgs) = drain(&o).await;
            assert!(subs.iter().all(|(_, recovered)| *recovered));
            offsets.extend(msgs);
        }
        assert_eq!(
            offsets,
            (2..=2001).collect::<Vec<_>>(),
            "every message once, in order"
        );
    }
}

#[tokio::test]
async fn a_slow_consumer_is_cut_off_without_affecting_others() {
    let hub = hub();
    let slow = Outbox::new(
        Bounds {
            max_items: 5,
            max_bytes: 1 << 20,
        },
        CancellationToken::default(),
    );
    let fast = outbox();
    hub.subscribe(1, &slow, &ch("a"), None, None)
        .await
        .expect("sub");
    hub.subscribe(2, &fast, &ch("a"), None, None)
        .await
        .expect("sub");
    for i in 1..=20 {
        publish(&hub, "a", i).await;
    }
    let batch = slow.take().await;
    assert_eq!(batch.closed, Some(CloseReason::SlowConsumer));
    assert!(batch.items.is_empty());
    assert_eq!(drain(&fast).await.1, (1..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_backbone_subscription_lingers_then_goes() {
    let hub = hub();
    let o = outbox();
    hub.subscribe(1, &o, &ch("a"), None, None)
        .await
        .expect("sub");
    assert_eq!((hub.channel_count(), hub.subscription_count()), (1, 1));
    assert!(hub.unsubscribe(1, &ch("a")));
    assert_eq!(hub.subscription_count(), 0);
    // Resubscribing within the linger keeps the entry; leaving for good removes it.
    hub.subscribe(2, &o, &ch("a"), None, None)
        .await
        .expect("sub");
    hub.unsubscribe(2, &ch("a"));
    while hub.channel_count() != 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    publish(&hub, "a", 1).await;
    let o2 = outbox();
    hub.subscribe(3, &o2, &ch("a"), None, None)
        .await
        .expect("sub");
    publish(&hub, "a", 2).await;
    assert_eq!(drain(&o2).await.1, vec![2]);
}
