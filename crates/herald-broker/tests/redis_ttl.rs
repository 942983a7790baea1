//! RedisBroker's keys and times against a real redis-server: a publish refreshes a channel's
//! key TTLs once per refresh interval (not on every publish), yet no key ever lives without a
//! TTL and a quiet channel's keys still go after `history_ttl` (plus the documented slack);
//! history entries carry the message's own publish time (the node's clock), not Redis `TIME`.

mod support;

use std::{sync::Arc, time::Duration};

use herald_broker::{Broker, RedisBroker, RedisConfig};
use support::{RedisServer, ch, eventually, latest, publish};

async fn broker(redis: &RedisServer, ttl: Duration) -> Arc<RedisBroker> {
    RedisBroker::connect(RedisConfig {
        url: redis.url(),
        history_size: 100,
        history_ttl: ttl,
        ..RedisConfig::default()
    })
    .await
    .expect("connect")
}

/// `INFO commandstats` calls of `command` since the last `CONFIG RESETSTAT`.
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("calls"))
}

fn pttl(redis: &RedisServer, key: &str) -> i64 {
    redis.cli(&["PTTL", key]).trim().parse().expect("pttl")
}

const META: &str = "herald:{news}:m";
const STREAM: &str = "herald:{news}:s";

#[tokio::test]
async fn publishes_refresh_the_ttls_once_per_interval_and_keys_always_have_one() {
    let redis = RedisServer::start();
    // An hour's TTL: keys live 61 minutes, and a refresh is trusted for a minute.
    let b = broker(&redis, Duration::from_secs(3600)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    for i in 1..=20 {
        b.publish(publish("news", i, None)).await.expect("publish");
    }
    assert_eq!(
        calls(&redis, "pexpire"),
        2,
        "the first publish set both TTLs; the next 19 (within the minute) did not"
    );
    for key in [META, STREAM] {
        let left = pttl(&redis, key);
        assert!(left > 0 && left <= 3_660_000, "{key}: {left}");
    }

    // A key that vanished behind the node's back is made again with a TTL, though the node's
    // record says the channel was refreshed a moment ago.
    redis.cli(&["DEL", STREAM]);
    let p = b.publish(publish("news", 21, None)).await.expect("publish");
    assert_eq!(p.position.offset, 21, "same epoch: the meta key is there");
    assert!(pttl(&redis, STREAM) > 0, "the new stream has a TTL");
    let h = b.history(&ch("news"), latest(10)).await.expect("history");
    assert_eq!(h.messages.len(), 1, "history restarts with the new stream");

    redis.cli(&["DEL", META]);
    let q = b.publish(publish("news", 22, None)).await.expect("publish");
    assert_eq!(q.position.offset, 1, "a new epoch");
    assert_ne!(q.position.epoch, p.position.epoch);
    for key in [META, STREAM] {
        assert!(pttl(&redis, key) > 0, "{key} of the new epoch has a TTL");
    }

    // A duplicate appends nothing and refreshes nothing: the channel is still refreshed when
    // due. (A fresh node: its records are empty.)
    let other = broker(&redis, Duration::from_secs(3600)).await;
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let first = other
        .publish(publish("keyed", 1, Some("k")))
        .await
        .expect("publish");
    let again = other
        .publish(publish("keyed", 1, Some("k")))
        .await
        .expect("publish");
    assert!(again.duplicate);
    assert_eq!(again.position, first.position);
    assert_eq!(calls(&redis, "pexpire"), 2);
}

#[tokio::test]
async fn a_quiet_channel_loses_its_keys_after_the_ttl() {
    let redis = RedisServer::start();
    let b = broker(&redis, Duration::from_millis(400)).await;
    let mut first = None;
    for i in 1..=5 {
        first.get_or_insert(b.publish(publish("news", i, None)).await.expect("publish"));
    }
    let first = first.expect("published");
    // No publishes and no reads: both keys expire (after 400 ms plus the 50 ms slack).
    eventually("the channel's keys to expire", || async {
        redis.cli(&["EXISTS", META, STREAM]).trim() == "0"
    })
    .await;
    let next = b.publish(publish("news", 6, None)).await.expect("publish");
    assert_eq!(next.position.offset, 1, "the channel starts a new epoch");
    assert_ne!(next.position.epoch, first.position.epoch);
}

#[tokio::test]
async fn history_entries_carry_the_messages_publish_time() {
    let redis = RedisServer::start();
    let b = broker(&redis, Duration::from_secs(60)).await;
    for i in 1..=3 {
        b.publish(publish("news", i, None)).await.expect("publish");
    }
    let h = b.history(&ch("news"), latest(10)).await.expect("history");
    assert_eq!(h.messages.len(), 3);
    // XRANGE prints, per entry: id, "t", the time in ms, "p", the payload.
    let raw = redis.cli(&["XRANGE", STREAM, "-", "+"]);
    let lines: Vec<&str> = raw.lines().map(str::trim).collect();
    let times: Vec<u64> = lines
        .windows(2)
        .filter(|w| w[0] == "t")
        .map(|w| w[1].parse().expect("ms"))
        .collect();
    let expected: Vec<u64> = h
        .messages
        .iter()
        .map(|m| m.published_at_us / 1000)
        .collect();
    assert_eq!(times, expected);
}
