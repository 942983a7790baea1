//! The Broker contract: what every broker configuration (memory, Redis standalone, Cluster,
//! Sentinel, with either durability) must do, as one suite run against each of them.
//!
//! A configuration is given as a [`Nodes`] factory: `node(history_size)` returns a broker that
//! shares its backend with every other node of the same `history_size` (two Redis brokers on
//! one Redis are two nodes; the memory broker is one node, returned twice). Every case uses
//! channels of its own, so one backend serves the whole run.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use herald_broker::{Broker, History, HistoryQuery, Sink, Start};
use herald_core::{ChannelName, Epoch, EventName, Message, StreamPosition, protocol::Publish};
use tokio::sync::watch;

use crate::HANG;

/// Makes a broker node with the given `history_size` on the configuration under test.
pub trait Nodes: Sync {
    fn node(
        &self,
        history_size: usize,
    ) -> Pin<Box<dyn Future<Output = Arc<dyn Broker>> + Send + '_>>;
}

impl<F, Fut> Nodes for F
where
    F: Fn(usize) -> Fut + Sync,
    Fut: Future<Output = Arc<dyn Broker>> + Send + 'static,
{
    fn node(
        &self,
        history_size: usize,
    ) -> Pin<Box<dyn Future<Output = Arc<dyn Broker>> + Send + '_>> {
        Box::pin(self(history_size))
    }
}

/// Runs every case against `nodes`; a failure names the configuration and the case.
pub async fn run(config: &str, nodes: &impl Nodes) {
    let tag = format!("{:x}", rand_u32());
    let ch = |case: &str| ChannelName::parse(&format!("{case}-{tag}")).expect("channel name");
    macro_rules! case {
        ($name:ident) => {{
            eprintln!("contract[{config}]: {}", stringify!($name));
            $name(nodes, ch(stringify!($name))).await;
        }};
    }
    case!(offsets_are_per_channel_and_start_at_one);
    case!(epochs_are_per_channel_and_kept_by_publishes);
    case!(idempotent_publish_returns_the_first_result);
    case!(history_resume_reports_recovery);
    case!(history_pages_are_bounded_by_bytes);
    case!(a_channel_without_history_reads_as_the_start);
    case!(messages_keep_event_data_and_timestamp);
    case!(two_nodes_deliver_every_publish_once_in_order);
    case!(unsubscribe_stops_delivery);
    case!(resubscribing_starts_from_the_current_top);
    case!(the_seam_loses_nothing_after_subscribe_returns);
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    t ^ std::process::id().rotate_left(16)
}

/// A sink that records what it receives and lets a test await a count.
pub struct Collect {
    got: std::sync::Mutex<Vec<Arc<Message>>>,
    count: watch::Sender<usize>,
}

impl Collect {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            got: std::sync::Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
        })
    }

    pub fn messages(&self) -> Vec<Arc<Message>> {
        self.got.lock().expect("lock").clone()
    }

    pub fn offsets(&self) -> Vec<u64> {
        self.messages().iter().map(|m| m.offset).collect()
    }

    /// Waits until a message at `offset` or later arrived; panics after a generous deadline.
    pub async fn wait_for_offset(&self, offset: u64) {
        let mut rx = self.count.subscribe();
        let reached = |_: &usize| self.offsets().last().is_some_and(|o| *o >= offset);
        let waited = tokio::time::timeout(HANG, rx.wait_for(reached)).await;
        assert!(
            waited.is_ok(),
            "waited for offset {offset}, got {:?}",
            self.offsets()
        );
    }

    /// Waits until at least `n` messages arrived; panics after a generous deadline.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let waited = tokio::time::timeout(HANG, rx.wait_for(|c| *c >= n)).await;
        assert!(
            waited.is_ok(),
            "waited for {n} messages, got {:?}",
            self.offsets()
        );
    }
}

impl Sink for Collect {
    fn deliver(&self, msg: Arc<Message>) {
        let mut got = self.got.lock().expect("lock");
        got.push(msg);
        self.count.send_replace(got.len());
    }
}

fn publish(channel: &ChannelName, n: u64, key: Option<&str>) -> Publish {
    Publish {
        channel: channel.clone(),
        event: None,
        data: bytes::Bytes::from(n.to_string()),
        idempotency_key: key.map(str::to_owned),
        sender: None,
    }
}

fn sibling(c: &ChannelName, suffix: &str) -> ChannelName {
    ChannelName::parse(&format!("{c}-{suffix}")).expect("channel name")
}

fn offsets(h: &History) -> Vec<u64> {
    h.messages.iter().map(|m| m.offset).collect()
}

/// The newest `limit` messages, in one unbounded page.
fn latest(limit: usize) -> HistoryQuery {
    HistoryQuery {
        start: Start::Latest,
        limit,
        max_bytes: usize::MAX,
    }
}

/// Up to `limit` messages after `pos`, in one unbounded page.
fn after(pos: &StreamPosition, limit: usize) -> HistoryQuery {
    HistoryQuery::after(pos.clone(), limit, usize::MAX)
}

async fn offsets_are_per_channel_and_start_at_one(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    let b = sibling(&a, "b");
    let a1 = n.publish(publish(&a, 1, None)).await.expect("publish");
    let a2 = n.publish(publish(&a, 2, None)).await.expect("publish");
    let b1 = n.publish(publish(&b, 1, None)).await.expect("publish");
    assert_eq!(
        (a1.position.offset, a2.position.offset, b1.position.offset),
        (1, 2, 1)
    );
    assert!(!a1.duplicate && !a2.duplicate && !b1.duplicate);
}

async fn epochs_are_per_channel_and_kept_by_publishes(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    let b = sibling(&a, "b");
    let a1 = n.publish(publish(&a, 1, None)).await.expect("publish");
    let a2 = n.publish(publish(&a, 2, None)).await.expect("publish");
    let b1 = n.publish(publish(&b, 1, None)).await.expect("publish");
    assert_eq!(a1.position.epoch, a2.position.epoch);
    assert_ne!(
        a1.position.epoch, b1.position.epoch,
        "epochs are random per channel"
    );
    let h = n.history(&a, latest(10)).await.expect("history");
    assert_eq!(h.top, a2.position, "history's top is the last publish");
}

async fn idempotent_publish_returns_the_first_result(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    let sink = Collect::new();
    n.subscribe(&a, sink.clone()).await.expect("subscribe");
    let first = n.publish(publish(&a, 1, Some("k"))).await.expect("publish");
    let again = n.publish(publish(&a, 1, Some("k"))).await.expect("publish");
    assert!(!first.duplicate && again.duplicate);
    assert_eq!(first.position, again.position);
    let other = n
        .publish(publish(&a, 2, Some("k2")))
        .await
        .expect("publish");
    assert_eq!(other.position.offset, 2);
    sink.wait_for(2).await;
    assert_eq!(sink.offsets(), vec![1, 2], "a duplicate is not delivered");
    let h = n.history(&a, latest(100)).await.expect("history");
    assert_eq!(h.messages.len(), 2, "a duplicate is not stored");
    let elsewhere = n
        .publish(publish(&sibling(&a, "b"), 1, Some("k")))
        .await
        .expect("publish");
    assert!(!elsewhere.duplicate, "keys are per channel");
    n.unsubscribe(&a).await;
}

async fn history_resume_reports_recovery(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(3).await;
    for i in 1..=5 {
        n.publish(publish(&a, i, None)).await.expect("publish");
    }
    let all = n.history(&a, latest(100)).await.expect("history");
    assert_eq!(offsets(&all), [3, 4, 5]);
    assert!(!all.recovered, "no since, nothing to recover");
    assert_eq!(all.top.offset, 5);
    let epoch = all.top.epoch.clone();
    let at = |offset| StreamPosition {
        epoch: epoch.clone(),
        offset,
    };
    let ok = n.history(&a, after(&at(3), 100)).await.expect("history");
    assert!(ok.recovered && ok.is_complete());
    assert_eq!(offsets(&ok), [4, 5]);
    let caught_up = n.history(&a, after(&at(5), 100)).await.expect("history");
    assert!(caught_up.recovered && caught_up.messages.is_empty());
    let too_old = n.history(&a, after(&at(1), 100)).await.expect("history");
    assert!(!too_old.recovered, "offset 2 was trimmed");
    assert_eq!(
        offsets(&too_old),
        [3, 4, 5],
        "what is retained is still returned"
    );
    let cut = n.history(&a, after(&at(2), 1)).await.expect("history");
    assert!(
        cut.recovered,
        "3 follows 2: a page cut by its limit still continues"
    );
    assert!(!cut.is_complete(), "and says there is more to read");
    assert_eq!(offsets(&cut), [3]);
    let other = StreamPosition {
        epoch: Epoch::parse("ffff").expect("epoch"),
        offset: 4,
    };
    let wrong = n.history(&a, after(&other, 100)).await.expect("history");
    assert!(
        !wrong.recovered && wrong.messages.is_empty(),
        "another epoch"
    );
    let future = n.history(&a, after(&at(9), 100)).await.expect("history");
    assert!(
        !future.recovered && future.messages.is_empty(),
        "a position beyond the top is from another incarnation"
    );
    let tail = n.history(&a, latest(2)).await.expect("history");
    assert_eq!(offsets(&tail), [4, 5], "latest reads the newest");
    let in_current = HistoryQuery {
        start: Start::AfterOffset(4),
        limit: 10,
        max_bytes: usize::MAX,
    };
    let h = n.history(&a, in_current).await.expect("history");
    assert!(h.recovered);
    assert_eq!(offsets(&h), [5]);
}

async fn history_pages_are_bounded_by_bytes(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    for i in 1..=20 {
        n.publish(publish(&a, i, None)).await.expect("publish");
    }
    let top = n.history(&a, latest(0)).await.expect("history").top;
    let start = StreamPosition {
        epoch: top.epoch.clone(),
        offset: 0,
    };
    let one = n.history(&a, after(&start, 1)).await.expect("history");
    let size = one.messages[0].stored_len();
    let page = n
        .history(&a, HistoryQuery::after(start.clone(), 100, size * 5))
        .await
        .expect("history");
    let got = page.messages.len();
    assert!((1..20).contains(&got), "a page, not everything: {got}");
    assert!(page.recovered && !page.is_complete());
    let tiny = n
        .history(&a, HistoryQuery::after(start, 100, 1))
        .await
        .expect("history");
    assert_eq!(tiny.messages.len(), 1, "at least one message per page");
}

async fn a_channel_without_history_reads_as_the_start(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    let h = n.history(&a, latest(10)).await.expect("history");
    assert_eq!(
        h.top,
        StreamPosition::start(),
        "no epoch before the first publish"
    );
    assert!(h.messages.is_empty() && !h.recovered);
    let from_start = n
        .history(&a, after(&StreamPosition::start(), 10))
        .await
        .expect("history");
    assert!(
        from_start.recovered,
        "nothing missed since before the first message"
    );
    let again = n.history(&a, latest(10)).await.expect("history");
    assert_eq!(
        again.top,
        StreamPosition::start(),
        "reading created nothing"
    );
    let p = n.publish(publish(&a, 1, None)).await.expect("publish");
    assert_eq!(p.position.offset, 1);
    let resumed = n
        .history(&a, after(&StreamPosition::start(), 10))
        .await
        .expect("history");
    assert!(
        resumed.recovered,
        "the start position continues into the first epoch"
    );
    assert_eq!(offsets(&resumed), [1]);
}

async fn messages_keep_event_data_and_timestamp(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    let sink = Collect::new();
    n.subscribe(&a, sink.clone()).await.expect("subscribe");
    let mut p = publish(&a, 0, None);
    p.event = Some(EventName::parse("update").expect("event"));
    p.data = bytes::Bytes::from_static(b"{\"text\":\"a b\\nc\",\"n\":[1,2]}");
    n.publish(p.clone()).await.expect("publish");
    sink.wait_for(1).await;
    let live = sink.messages()[0].clone();
    let stored = n.history(&a, latest(10)).await.expect("history").messages[0].clone();
    assert_eq!(live, stored, "live and history carry the same message");
    assert_eq!(
        (&live.event, &live.data, &live.channel),
        (&p.event, &p.data, &p.channel)
    );
    assert!(live.published_at_us > 0);
    n.unsubscribe(&a).await;
}

async fn two_nodes_deliver_every_publish_once_in_order(nodes: &impl Nodes, a: ChannelName) {
    let publisher = nodes.node(1000).await;
    let node = nodes.node(1000).await;
    let quiet_channel = sibling(&a, "quiet");
    let sink = Collect::new();
    let quiet = Collect::new();
    node.subscribe(&a, sink.clone()).await.expect("subscribe");
    node.subscribe(&quiet_channel, quiet.clone())
        .await
        .expect("subscribe");
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let p = publisher.clone();
            let a = a.clone();
            tokio::spawn(async move {
                for i in 0..25 {
                    p.publish(publish(&a, t * 1000 + i, None))
                        .await
                        .expect("publish");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("publisher task");
    }
    sink.wait_for(200).await;
    assert_eq!(sink.offsets(), (1..=200).collect::<Vec<_>>());
    assert!(quiet.offsets().is_empty(), "channels are separate");
    node.unsubscribe(&a).await;
    node.unsubscribe(&quiet_channel).await;
}

async fn unsubscribe_stops_delivery(nodes: &impl Nodes, a: ChannelName) {
    let publisher = nodes.node(1000).await;
    let node = nodes.node(1000).await;
    let marker_channel = sibling(&a, "marker");
    let sink = Collect::new();
    let marker = Collect::new();
    node.subscribe(&a, sink.clone()).await.expect("subscribe");
    node.subscribe(&marker_channel, marker.clone())
        .await
        .expect("subscribe");
    publisher
        .publish(publish(&a, 1, None))
        .await
        .expect("publish");
    sink.wait_for(1).await;
    node.unsubscribe(&a).await;
    publisher
        .publish(publish(&a, 2, None))
        .await
        .expect("publish");
    // Published after `a`'s message and delivered by the same backbone in order: once the
    // marker is in, `a`'s message would have been too, were `a` still relayed.
    publisher
        .publish(publish(&marker_channel, 1, None))
        .await
        .expect("publish");
    marker.wait_for(1).await;
    publisher
        .publish(publish(&marker_channel, 2, None))
        .await
        .expect("publish");
    marker.wait_for(2).await;
    assert_eq!(sink.offsets(), vec![1], "unsubscribed");
    node.unsubscribe(&marker_channel).await;
}

async fn resubscribing_starts_from_the_current_top(nodes: &impl Nodes, a: ChannelName) {
    let n = nodes.node(1000).await;
    let first = Collect::new();
    n.subscribe(&a, first.clone()).await.expect("subscribe");
    n.publish(publish(&a, 1, None)).await.expect("publish");
    first.wait_for(1).await;
    n.unsubscribe(&a).await;
    n.publish(publish(&a, 2, None)).await.expect("publish");
    let second = Collect::new();
    n.subscribe(&a, second.clone()).await.expect("subscribe");
    n.publish(publish(&a, 3, None)).await.expect("publish");
    second.wait_for(1).await;
    assert_eq!(
        second.offsets(),
        vec![3],
        "what was acknowledged before subscribe is history's job"
    );
    assert_eq!(first.offsets(), vec![1]);
    n.unsubscribe(&a).await;
}

/// Subscribing while another node publishes: every message acknowledged after `subscribe`
/// returned reaches the sink, and what reaches it is contiguous and in order.
async fn the_seam_loses_nothing_after_subscribe_returns(nodes: &impl Nodes, a: ChannelName) {
    let publisher = nodes.node(1000).await;
    let node = nodes.node(1000).await;
    const N: u64 = 300;
    let (subscribed_tx, subscribed) = watch::channel(false);
    let hammer = {
        let p = publisher.clone();
        let a = a.clone();
        tokio::spawn(async move {
            let mut after_subscribe = Vec::new();
            for i in 1..=N {
                let done = *subscribed.borrow();
                let acked = p.publish(publish(&a, i, None)).await.expect("publish");
                if done {
                    after_subscribe.push(acked.position.offset);
                }
                if i % 16 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            after_subscribe
        })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    let sink = Collect::new();
    node.subscribe(&a, sink.clone()).await.expect("subscribe");
    subscribed_tx.send_replace(true);
    let mut after = hammer.await.expect("publisher");
    // One more, surely after subscribe (the hammer may have finished before it returned).
    let last = publisher
        .publish(publish(&a, N + 1, None))
        .await
        .expect("publish");
    after.push(last.position.offset);
    let first_after = after[0];
    sink.wait_for_offset(N + 1).await;
    let got = sink.offsets();
    assert!(
        got.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous, in order: {got:?}"
    );
    assert!(
        got.first().is_some_and(|f| *f <= first_after) && got.last() == Some(&(N + 1)),
        "everything acknowledged after subscribe returned: {first_after}..={}, got {got:?}",
        N + 1
    );
    node.unsubscribe(&a).await;
}
