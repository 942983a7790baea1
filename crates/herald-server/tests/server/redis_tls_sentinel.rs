//! Herald behind Sentinel over TLS (`rediss+sentinel://`: the Sentinels, the data nodes and
//! replication all speak TLS and require client certificates), with a password on the Sentinels
//! (`requirepass`) and herald logged in to them as a Sentinel ACL user with only the rules
//! docs/operations.md lists, and to the data nodes as an ACL user: discovery, `+switch-master`
//! and a failover work end to end; a wrong Sentinel password stops the start.

use herald_testkit::{RedisSentinel, SentinelOptions, TestCerts, acl};
use serde_json::json;

use crate::support::{Herald, Launch, clients::Ws};

const PASSWORD: &str = "pw-Sn4b8Lm2";
const SENTINEL_PASSWORD: &str = "pw-Ws6c1Rt5";

/// The Sentinel ACL of docs/operations.md ("TLS and ACL"), for user `herald`.
const SENTINEL_RULES: &str = "-@all +@connection +sentinel|get-master-addr-by-name +subscribe \
                              &+switch-master";

fn tls_sentinel(certs: &TestCerts) -> RedisSentinel {
    RedisSentinel::start_with(SentinelOptions {
        replicas: 1,
        tls: Some(certs),
        node_args: acl::user_args("herald", PASSWORD, &[acl::HERALD_RULES]),
        // The Sentinels' default user has a password (they use it with each other); herald
        // logs in as a user of its own.
        sentinel_password: Some("pw-Dq3h7Kx0".to_owned()),
        sentinel_conf: vec![format!(
            "user herald on >{SENTINEL_PASSWORD} {SENTINEL_RULES}"
        )],
    })
}

/// Herald's arguments: data node user in the URL (its password comes from the environment),
/// the Sentinel user and its password file, the TLS files.
fn args(certs: &TestCerts, redis: &RedisSentinel, sentinel_password: &str) -> Vec<String> {
    let file = certs
        .dir
        .join(format!("sentinel-password-{}", sentinel_password.len()));
    std::fs::write(&file, format!("{sentinel_password}\n")).expect("write the password file");
    let mut args: Vec<String> = [
        "--redis-url",
        &redis.url().replacen("://", "://herald@", 1),
        "--redis-sentinel-username",
        "herald",
        "--redis-sentinel-password-file",
        &file.display().to_string(),
        "--redis-timeout",
        "500ms",
        "--redis-probe-interval",
        "500ms",
    ]
    .map(str::to_owned)
    .into();
    args.extend(certs.herald_args("ca.crt"));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_sentinel_with_passwords_discovers_and_follows_a_failover() {
    let certs = TestCerts::generate();
    let mut redis = tls_sentinel(&certs);
    let args = args(&certs, &redis, SENTINEL_PASSWORD);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Herald::launch(Launch {
        args: &args,
        env: &[("HERALD_REDIS_PASSWORD", PASSWORD)],
        ..Launch::default()
    })
    .await;
    node.wait_for_ready(true).await;
    let mut ws = Ws::connect(&node.ws_url("/v1/ws")).await;
    ws.subscribe("s", None).await;
    for i in 1..=3u64 {
        assert_eq!(node.publish("s", json!(i)).await, i);
        assert_eq!(ws.next_message().await["offset"], i);
    }

    let old = redis.primary_port();
    redis.primary().kill();
    let promoted = redis.wait_for_failover(old);
    assert_ne!(promoted, old);
    // The announcement came through the authenticated TLS subscription to the Sentinels.
    node.wait_metric(
        "herald_backbone_events_total",
        &["event=\"primary_switch\""],
        |v| v >= 1.0,
    )
    .await;
    node.wait_for_ready(true).await;
    let (offset, _, _) = node.publish_retrying("s", json!(4), "k4").await;
    assert!(offset >= 4, "offsets go on on the new primary: {offset}");
    let m = ws.next_message().await;
    assert_eq!(
        (m["offset"].as_u64(), &m["data"]),
        (Some(offset), &json!(4))
    );
}

#[tokio::test]
async fn a_wrong_sentinel_password_stops_the_start() {
    let certs = TestCerts::generate();
    let redis = tls_sentinel(&certs);
    let args = args(&certs, &redis, "wrong-sentinel-password");
    Herald::assert_refused_at_start(
        &args,
        "Redis rejected the credentials",
        "wrong-sentinel-password",
    )
    .await;
}
