//! Herald on a Redis Cluster over TLS (`rediss+cluster://`; the cluster bus and replication use
//! TLS too, and every node requires a client certificate), logged in as an ACL user with only
//! the rules docs/operations.md lists for Cluster: publish, sharded pub/sub and resume work
//! across nodes on every shard (and with replicated durability, shards without a replica answer
//! 503); credentials Redis rejects, a certificate Herald does not trust
//! and a user without the Cluster permissions stop the start with a clear message.

use herald_testkit::{ClusterOptions, RedisCluster, TestCerts, acl};
use serde_json::json;

use crate::support::{
    Herald, Launch,
    clients::{Sse, Ws},
};

const PASSWORD: &str = "pw-Cl7x2Vq9";

/// A TLS cluster (no replicas) where user `herald` has the documented Cluster rules and user
/// `plain` only the standalone ones.
fn tls_cluster(certs: &TestCerts) -> RedisCluster {
    let mut args = acl::user_args("herald", PASSWORD, &[acl::HERALD_RULES, acl::CLUSTER_RULES]);
    args.extend(acl::user_args("plain", PASSWORD, &[acl::HERALD_RULES]));
    RedisCluster::start_with(ClusterOptions {
        tls: Some(certs),
        args,
        ..ClusterOptions::default()
    })
}

/// The cluster's URL logged in as `user` (with `password`, if given, in the URL).
fn url_as(cluster: &RedisCluster, user: &str, password: Option<&str>) -> String {
    let login = match password {
        Some(pw) => format!("{user}:{pw}@"),
        None => format!("{user}@"),
    };
    cluster.url().replacen("://", &format!("://{login}"), 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_with_an_acl_user_publishes_subscribes_and_resumes_on_every_shard() {
    let certs = TestCerts::generate();
    let cluster = tls_cluster(&certs);
    let mut args = vec!["--redis-url".to_owned(), url_as(&cluster, "herald", None)];
    args.extend(certs.herald_args("ca.crt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The password from the environment, as a secret manager would pass it.
    let launch = || {
        Herald::launch(Launch {
            args: &args,
            env: &[("HERALD_REDIS_PASSWORD", PASSWORD)],
            ..Launch::default()
        })
    };
    let a = launch().await;
    let b = launch().await;
    a.wait_for_ready(true).await;
    b.wait_for_ready(true).await;

    let channels = cluster.channels_on_every_shard("t");
    let mut ws = Ws::connect(&b.ws_url("/v1/ws")).await;
    let mut sse = Vec::new();
    for c in &channels {
        ws.subscribe(c, None).await;
        sse.push(Sse::connect(&a.url(&format!("/v1/sse?channel={c}")), None).await);
    }
    for i in 1..=2u64 {
        for c in &channels {
            assert_eq!(a.publish(c, json!(i)).await, i);
        }
    }
    // Sharded pub/sub from node a's publishes to node b's WebSocket, per channel in order.
    let mut got = std::collections::HashMap::<String, Vec<u64>>::new();
    for _ in 0..2 * channels.len() {
        let m = ws.next_message().await;
        let c = m["channel"].as_str().expect("channel").to_owned();
        got.entry(c)
            .or_default()
            .push(m["offset"].as_u64().expect("offset"));
    }
    for c in &channels {
        assert_eq!(got.get(c), Some(&vec![1, 2]), "{c}: {got:?}");
    }
    let mut tokens = Vec::new();
    for s in &mut sse {
        for i in 1..=2u64 {
            assert_eq!(s.next_message().await.json(), json!(i));
        }
        tokens.push(s.last_id.clone().expect("id"));
    }
    drop(sse);
    drop(ws);
    for c in &channels {
        let body = json!({"channel": c, "data": 3, "idempotency_key": "k3"}).to_string();
        let (s1, first) = b.post("/v1/publish", &body).await;
        let (s2, again) = a.post("/v1/publish", &body).await;
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(first, again, "idempotent across nodes");
        assert_eq!(first["offset"], 3);
    }
    // Each SSE client resumes on the other node from where it was.
    for (c, token) in channels.iter().zip(&tokens) {
        let mut sse = Sse::connect(&b.url(&format!("/v1/sse?channel={c}")), Some(token)).await;
        assert_eq!(
            sse.next().await.expect("subscribed").json()["recovered"],
            true
        );
        assert_eq!(sse.next_message().await.json(), json!(3), "{c}");
    }

    // Replicated durability starts with the documented rules (it also needs `CLUSTER MYID`),
    // and on shards without a replica no publish is acknowledged: 503, retry with the key.
    let mut replicated = args.clone();
    replicated.extend([
        "--publish-durability",
        "replicated",
        "--redis-wait-timeout",
        "100ms",
    ]);
    let c = Herald::launch(Launch {
        args: &replicated,
        env: &[("HERALD_REDIS_PASSWORD", PASSWORD)],
        ..Launch::default()
    })
    .await;
    c.wait_for_ready(true).await;
    for ch in &channels {
        let body = json!({"channel": ch, "data": 4, "idempotency_key": "k4"}).to_string();
        let (status, reply) = c.post("/v1/publish", &body).await;
        assert_eq!(status, 503, "{ch}: {reply}");
        assert_eq!(reply["error"]["code"], "unavailable", "{ch}: {reply}");
    }
}

#[tokio::test]
async fn rediss_cluster_refusals_stop_the_start_with_a_clear_message() {
    let certs = TestCerts::generate();
    let cluster = tls_cluster(&certs);
    let wrong = format!("wrong-{PASSWORD}");
    let cases = [
        (
            url_as(&cluster, "herald", Some(&wrong)),
            "ca.crt",
            "Redis rejected the credentials",
        ),
        (
            url_as(&cluster, "herald", Some(PASSWORD)),
            "other-ca.crt",
            "TLS with Redis failed",
        ),
        (
            url_as(&cluster, "plain", Some(PASSWORD)),
            "ca.crt",
            "the Redis user lacks a permission Herald needs",
        ),
    ];
    for (url, ca, why) in cases {
        let mut args = vec!["--redis-url".to_owned(), url];
        args.extend(certs.herald_args(ca));
        Herald::assert_refused_at_start(&args, why, PASSWORD).await;
    }
}
