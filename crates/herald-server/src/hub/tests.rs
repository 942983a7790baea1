use super::*;
use bytes::Bytes;
use herald_broker::{HistoryQuery, MemoryBroker, MemoryConfig};
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
            page_messages: 1000,
            page_bytes: 256 << 10,
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
        sender: None,
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

/// Drains `o` as a reading client would until `n` messages came (or the outbox closed):
/// (subscribed frames as (offset, recovered), message offsets, close reason).
async fn read_all(o: &Outbox, n: usize) -> (Vec<(u64, bool)>, Vec<u64>, Option<CloseReason>) {
    let mut subs = Vec::new();
    let mut msgs = Vec::new();
    loop {
        let batch = o.take().await;
        for item in batch.items {
            match item {
                Item::Subscribed(s) => subs.push((s.position.offset, s.recovered)),
                Item::Message(d) => msgs.push(d.msg.offset),
                Item::Raw(_) => {}
            }
        }
        if batch.closed.is_some() || msgs.len() >= n {
            return (subs, msgs, batch.closed);
        }
    }
}

fn small_outbox(max_bytes: usize) -> Arc<Outbox> {
    Outbox::new(
        Bounds {
            max_items: 10_000,
            max_bytes,
        },
        CancellationToken::default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_many_times_the_queue_bound_completes_at_the_readers_pace() {
    let hub = hub_with_history(1000);
    let start = StreamPosition {
        epoch: publish(&hub, "big", 0).await.epoch,
        offset: 0,
    };
    for i in 1..300 {
        publish(&hub, "big", i).await;
    }
    // Room for a few messages at a time: the replay must be paced, never a slow consumer.
    let o = small_outbox(1000);
    hub.subscribe(1, &o, &ch("big"), Some(start), None)
        .await
        .expect("sub");
    let mut offsets = Vec::new();
    let mut subs = Vec::new();
    let mut live_sent = false;
    while offsets.len() < 300 {
        let batch = o.take().await;
        assert_eq!(
            batch.closed, None,
            "a reading client is never cut off by a replay"
        );
        assert!(batch.items.len() < 300, "paced, not all at once");
        for item in batch.items {
            match item {
                Item::Subscribed(s) => subs.push((s.position.offset, s.recovered)),
                Item::Message(d) => offsets.push(d.msg.offset),
                Item::Raw(_) => {}
            }
        }
        if offsets.len() >= 150 && !live_sent {
            live_sent = true;
            // Live messages arrive meanwhile; they follow the history, once each.
            for i in 300..310 {
                publish(&hub, "big", i).await;
            }
        }
    }
    while offsets.len() < 310 {
        offsets.extend(drain(&o).await.1);
    }
    assert_eq!(subs, vec![(0, true)]);
    assert_eq!(offsets, (1..=310).collect::<Vec<_>>());
    publish(&hub, "big", 310).await;
    assert_eq!(drain(&o).await.1, vec![311], "live afterwards");
    assert_eq!(
        hub.metrics
            .recoveries
            .with_label_values(&["recovered"])
            .get(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_messages_that_overflow_a_replays_buffer_are_read_from_history() {
    let hub = hub_with_history(5000);
    let start = StreamPosition {
        epoch: publish(&hub, "hot", 0).await.epoch,
        offset: 0,
    };
    for i in 1..50 {
        publish(&hub, "hot", i).await;
    }
    let o = small_outbox(2000);
    hub.subscribe(1, &o, &ch("hot"), Some(start), None)
        .await
        .expect("sub");
    // Far more live traffic than the buffer holds while the client is not reading.
    for i in 50..1000 {
        publish(&hub, "hot", i).await;
    }
    let (subs, offsets, closed) = read_all(&o, 1000).await;
    assert_eq!(closed, None);
    assert_eq!(subs, vec![(0, true)]);
    assert_eq!(
        offsets,
        (1..=1000).collect::<Vec<_>>(),
        "nothing lost, nothing twice"
    );
    // The replay may still be dropping buffered duplicates of what history gave after the last
    // message reached the queue; it lets go of everything before it goes live, and counts the
    // recovery when it does.
    let recovered = hub.metrics.recoveries.with_label_values(&["recovered"]);
    tokio::time::timeout(Duration::from_secs(30), async {
        while recovered.get() < 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the replay goes live");
    assert_eq!(o.held(), 0, "nothing left held once live");
}

#[tokio::test]
async fn a_subscriber_from_before_the_first_message_continues_without_a_reset() {
    let hub = hub();
    let o = outbox();
    hub.subscribe(1, &o, &ch("empty"), None, None)
        .await
        .expect("sub");
    let batch = o.take().await;
    match &batch.items[0] {
        Item::Subscribed(s) => assert_eq!(s.position, StreamPosition::start()),
        _ => panic!("subscribed first"),
    }
    publish(&hub, "empty", 1).await;
    assert_eq!(drain(&o).await, (vec![], vec![1]), "no spurious reset");
    // And a resume from that position gets the first message, recovered.
    let o2 = outbox();
    hub.subscribe(2, &o2, &ch("empty"), Some(StreamPosition::start()), None)
        .await
        .expect("sub");
    assert_eq!(drain(&o2).await, (vec![(0, true)], vec![1]));
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

/// A memory broker whose history reads are counted and can be held: a read takes its snapshot,
/// then waits for a permit, so a test can act while a read is in flight.
struct HeldReads {
    inner: Arc<MemoryBroker>,
    reads: std::sync::atomic::AtomicUsize,
    entered: tokio::sync::Notify,
    permits: tokio::sync::Semaphore,
}

impl HeldReads {
    fn new(open: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryBroker::new(MemoryConfig::default()),
            reads: Default::default(),
            entered: tokio::sync::Notify::new(),
            permits: tokio::sync::Semaphore::new(if open {
                tokio::sync::Semaphore::MAX_PERMITS
            } else {
                0
            }),
        })
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl Broker for HeldReads {
    async fn publish(
        &self,
        p: herald_core::protocol::Publish,
    ) -> Result<herald_broker::Published, BrokerError> {
        self.inner.publish(p).await
    }
    async fn history(
        &self,
        channel: &ChannelName,
        query: HistoryQuery,
    ) -> Result<History, BrokerError> {
        let snapshot = self.inner.history(channel, query).await;
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.entered.notify_one();
        self.permits.acquire().await.expect("open").forget();
        snapshot
    }
    async fn subscribe(
        &self,
        channel: &ChannelName,
        sink: Arc<dyn Sink>,
    ) -> Result<(), BrokerError> {
        self.inner.subscribe(channel, sink).await
    }
    async fn unsubscribe(&self, channel: &ChannelName) {
        self.inner.unsubscribe(channel).await
    }
    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }
    fn kind(&self) -> &'static str {
        "held"
    }
}

fn hub_over(broker: Arc<HeldReads>) -> Arc<Hub> {
    Hub::new(
        broker,
        HubConfig {
            linger: Duration::from_millis(10),
            page_messages: 1000,
            page_bytes: 256 << 10,
        },
        Default::default(),
    )
}

#[tokio::test]
async fn concurrent_fresh_subscribers_share_top_reads() {
    let broker = HeldReads::new(true);
    let hub = hub_over(broker.clone());
    for i in 1..=3 {
        publish(&hub, "burst", i).await;
    }
    let outboxes: Vec<_> = (0..50).map(|_| outbox()).collect();
    let subscribes: Vec<_> = outboxes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let (hub, o) = (hub.clone(), o.clone());
            tokio::spawn(async move {
                hub.subscribe(i as u64 + 1, &o, &ch("burst"), None, None)
                    .await
            })
        })
        .collect();
    for s in subscribes {
        s.await.expect("task").expect("subscribe");
    }
    assert!(
        broker.reads() < 50,
        "50 concurrent subscribes made {} broker reads",
        broker.reads()
    );
    publish(&hub, "burst", 4).await;
    for o in &outboxes {
        assert_eq!(drain(o).await, (vec![(3, false)], vec![4]));
    }
}

#[tokio::test]
async fn a_subscriber_arriving_during_a_top_read_waits_for_the_next_one() {
    let broker = HeldReads::new(false);
    let hub = hub_over(broker.clone());
    let (a, b) = (outbox(), outbox());
    let first = {
        let (hub, a) = (hub.clone(), a.clone());
        tokio::spawn(async move { hub.subscribe(1, &a, &ch("c"), None, None).await })
    };
    // A's read has taken its snapshot (top 0) and is held.
    broker.entered.notified().await;
    // Published after that snapshot: A gets it from its buffer, B must not start before it.
    publish(&hub, "c", 1).await;
    let second = {
        let (hub, b) = (hub.clone(), b.clone());
        tokio::spawn(async move { hub.subscribe(2, &b, &ch("c"), None, None).await })
    };
    let reads = hub
        .shard("c")
        .lock()
        .get(&ch("c"))
        .map(|e| e.top.clone())
        .expect("entry");
    while reads.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    broker
        .permits
        .add_permits(tokio::sync::Semaphore::MAX_PERMITS >> 1);
    first.await.expect("task").expect("subscribe a");
    second.await.expect("task").expect("subscribe b");
    assert_eq!(broker.reads(), 2, "B joined a read that started after it");
    assert_eq!(drain(&a).await, (vec![(0, false)], vec![1]));
    assert_eq!(drain(&b).await, (vec![(1, false)], vec![]));
}

#[tokio::test]
async fn a_subscribe_dropped_before_it_is_live_leaves_nothing_behind() {
    let broker = HeldReads::new(false);
    let hub = hub_over(broker.clone());
    let o = outbox();
    let pending = {
        let (hub, o) = (hub.clone(), o.clone());
        tokio::spawn(async move { hub.subscribe(1, &o, &ch("gone"), None, None).await })
    };
    // The subscribe waits on its history read: the client goes away (its future is dropped).
    broker.entered.notified().await;
    assert_eq!(hub.subscription_count(), 1);
    pending.abort();
    assert!(pending.await.expect_err("aborted").is_cancelled());
    assert_eq!(
        hub.subscription_count(),
        0,
        "the buffering slot was removed"
    );
}

/// Counts the messages written to it; takes everything.
#[derive(Default)]
struct CountingWire(std::sync::atomic::AtomicUsize);

impl Wire for CountingWire {
    fn try_write(&self, item: Item) -> Sent {
        if matches!(item, Item::Message(_)) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        Sent::Whole
    }

    fn transport(&self) -> &'static str {
        "test"
    }
}

#[tokio::test]
async fn one_message_is_written_directly_to_a_bounded_number_of_subscribers() {
    let hub = hub();
    let n = DIRECT_WRITES_PER_MESSAGE + 6;
    let mut subs = Vec::new();
    for conn in 0..n as u64 {
        let (o, wire) = (outbox(), Arc::new(CountingWire::default()));
        hub.subscribe(conn, &o, &ch("big"), None, None)
            .await
            .expect("sub");
        drain(&o).await; // the `subscribed` frame
        // The writer comes back for more and finds nothing: the connection is idle.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(o.poll_take(&mut cx, &mut Default::default()).is_pending());
        o.attach(wire.clone());
        subs.push((o, wire));
    }
    publish(&hub, "big", 1).await;
    let written = subs
        .iter()
        .filter(|(_, w)| w.0.load(Ordering::Relaxed) == 1);
    assert_eq!(written.count(), DIRECT_WRITES_PER_MESSAGE);
    // The others have it queued for their writers, in order as always.
    let mut queued = 0;
    for (o, w) in &subs {
        if w.0.load(Ordering::Relaxed) == 0 {
            assert_eq!(o.queued().0, 1);
            assert_eq!(drain(o).await.1, vec![1]);
            queued += 1;
        }
    }
    assert_eq!(queued, 6);
}
