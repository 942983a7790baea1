//! Test support: a collecting sink and polling helpers; Redis processes come from herald-testkit.
//!
//! Every server gets its own temporary directory and is killed (and the directory removed) on
//! drop, so a failing test leaves nothing running.

#![allow(dead_code)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use herald_broker::Sink;
use herald_core::{ChannelName, Message, protocol::Publish};
use tokio::sync::watch;

#[allow(unused_imports)] // each test binary uses a different subset
pub use herald_testkit::{RedisCluster, RedisServer, cli, free_port};

/// A sink that records what it receives and lets a test await a count.
pub struct Collect {
    got: parking_lot::Mutex<Vec<Arc<Message>>>,
    count: watch::Sender<usize>,
}

impl Collect {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            got: parking_lot::Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
        })
    }

    pub fn messages(&self) -> Vec<Arc<Message>> {
        self.got.lock().clone()
    }

    pub fn offsets(&self) -> Vec<u64> {
        self.got.lock().iter().map(|m| m.offset).collect()
    }

    /// Waits until at least `n` messages arrived; panics after a generous deadline.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|c| *c >= n)).await;
        assert!(
            waited.is_ok(),
            "waited for {n} messages, got {:?}",
            self.offsets()
        );
    }
}

impl Sink for Collect {
    fn deliver(&self, msg: Arc<Message>) {
        let mut got = self.got.lock();
        got.push(msg);
        self.count.send_replace(got.len());
    }
}

pub fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("channel name")
}

pub fn publish(channel: &str, n: u64, key: Option<&str>) -> Publish {
    Publish {
        channel: ch(channel),
        event: None,
        data: bytes::Bytes::from(n.to_string()),
        idempotency_key: key.map(str::to_owned),
    }
}

/// Polls an async condition until it holds; panics after a deadline.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Retries an async call until it succeeds (e.g. while Redis restarts); panics after a deadline.
pub async fn until_ok<T, E: std::fmt::Debug, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => assert!(Instant::now() < deadline, "{what}: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The newest `limit` messages, in one unbounded page.
pub fn latest(limit: usize) -> herald_broker::HistoryQuery {
    herald_broker::HistoryQuery {
        start: herald_broker::Start::Latest,
        limit,
        max_bytes: usize::MAX,
    }
}

/// Up to `limit` messages after `pos`, in one unbounded page.
pub fn after(pos: &herald_core::StreamPosition, limit: usize) -> herald_broker::HistoryQuery {
    herald_broker::HistoryQuery::after(pos.clone(), limit, usize::MAX)
}
