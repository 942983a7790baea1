//! Test support: polling helpers; Redis processes and the collecting sink come from herald-testkit.
//!
//! Every server gets its own temporary directory and is killed (and the directory removed) on
//! drop, so a failing test leaves nothing running.

#![allow(dead_code)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use herald_broker::{Broker, BrokerError, RedisBroker};
use herald_core::{ChannelName, protocol::Publish};

#[allow(unused_imports)] // each test binary uses a different subset
pub use herald_testkit::{
    RedisCluster, RedisSentinel, RedisServer, cli, contract::Collect, free_port,
};

pub fn ch(name: &str) -> ChannelName {
    ChannelName::parse(name).expect("channel name")
}

pub fn publish(channel: &str, n: u64, key: Option<&str>) -> Publish {
    Publish {
        channel: ch(channel),
        event: None,
        data: bytes::Bytes::from(n.to_string()),
        idempotency_key: key.map(str::to_owned),
        sender: None,
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

/// Publishes `from..=to` to `channel` one after another with idempotency keys, retrying while
/// Redis is unavailable; returns the acknowledged offsets and how many attempts failed.
pub async fn publish_range(
    b: Arc<RedisBroker>,
    channel: &str,
    range: std::ops::RangeInclusive<u64>,
) -> (Vec<u64>, u32) {
    let mut acked = Vec::new();
    let mut failures = 0;
    for i in range {
        loop {
            match b.publish(publish(channel, i, Some(&format!("k{i}")))).await {
                Ok(p) => {
                    acked.push(p.position.offset);
                    break;
                }
                Err(BrokerError::Unavailable(_)) => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("publish: {e}"),
            }
        }
    }
    (acked, failures)
}
