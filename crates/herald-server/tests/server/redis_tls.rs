//! Herald on a TLS Redis (`rediss://`) that requires client certificates, logged in as an ACL
//! user with only the permissions docs/operations.md lists: publish, subscribe and resume work
//! across nodes; credentials Redis rejects and certificates Herald does not trust stop the start
//! (status 1, like any broker that cannot start) with a clear message, before "listening";
//! passwords never reach a log line.

use herald_testkit::{RedisServer, TestCerts, acl};
use serde_json::json;

use crate::support::{
    Herald, Launch,
    clients::{Sse, Ws},
};

const PASSWORD: &str = "pw-Zq8f3kR1";

/// A Redis with a plain port (for the test's own redis-cli) and a TLS port that requires a
/// client certificate; user `herald` has the rules of docs/operations.md ("ACL").
fn tls_redis(certs: &TestCerts) -> (RedisServer, u16) {
    let user = acl::user_args("herald", PASSWORD, &[acl::HERALD_RULES]);
    let args: Vec<&str> = user.iter().map(String::as_str).collect();
    let redis = RedisServer::start_tls(certs, "yes", &args);
    let tls_port = redis.client_port();
    (redis, tls_port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_an_acl_user_publishes_subscribes_and_resumes() {
    let certs = TestCerts::generate();
    let (_redis, tls_port) = tls_redis(&certs);
    let password_file = certs.dir.join("redis-password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("write password file");
    let url = format!("rediss://herald@127.0.0.1:{tls_port}");
    let mut args = vec![
        "--redis-url".to_owned(),
        url,
        "--redis-password-file".to_owned(),
        password_file.display().to_string(),
    ];
    args.extend(certs.herald_args("ca.crt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let a = Herald::start(&args).await;
    let b = Herald::start(&args).await;
    a.wait_for_ready(true).await;

    let mut ws = Ws::connect(&b.ws_url("/v1/ws")).await;
    ws.subscribe("t", None).await;
    let mut sse = Sse::connect(&a.url("/v1/sse?channel=t"), None).await;
    for i in 1..=3 {
        assert_eq!(a.publish("t", json!(i)).await, i);
    }
    // A channel has no epoch before its first message: take it from a message.
    let mut epoch = String::new();
    for i in 1..=3u64 {
        let m = ws.next_message().await;
        assert_eq!(m["offset"], i);
        epoch = m["epoch"].as_str().expect("epoch").to_owned();
        assert_eq!(sse.next_message().await.json(), json!(i));
    }
    let token = sse.last_id.clone().expect("id");
    drop(sse);
    let body = r#"{"channel":"t","data":4,"idempotency_key":"k4"}"#;
    let (s1, first) = b.post("/v1/publish", body).await;
    let (s2, again) = a.post("/v1/publish", body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(first, again, "idempotent across nodes");
    let mut sse = Sse::connect(&b.url("/v1/sse?channel=t"), Some(&token)).await;
    assert_eq!(
        sse.next().await.expect("subscribed").json()["recovered"],
        true
    );
    assert_eq!(
        sse.next_message().await.json(),
        json!(4),
        "resumed on the other node"
    );
    drop(ws);
    let mut ws = Ws::connect(&a.ws_url("/v1/ws")).await;
    assert_eq!(
        ws.subscribe("t", Some((3, &epoch))).await["recovered"],
        true
    );
    assert_eq!(ws.next_message().await["offset"], 4);
}

#[tokio::test]
async fn redis_refusals_stop_the_start_with_a_clear_message() {
    let certs = TestCerts::generate();
    let (_redis, tls_port) = tls_redis(&certs);
    let cases = [
        (
            format!("rediss://herald:wrong-{PASSWORD}@127.0.0.1:{tls_port}"),
            "ca.crt",
            "Redis rejected the credentials",
        ),
        (
            format!("rediss://herald:{PASSWORD}@127.0.0.1:{tls_port}"),
            "other-ca.crt",
            "TLS with Redis failed",
        ),
    ];
    for (url, ca, why) in cases {
        let mut args = vec!["--redis-url".to_owned(), url];
        args.extend(certs.herald_args(ca));
        Herald::assert_refused_at_start(&args, why, PASSWORD).await;
    }
    // A plain connection to the TLS port, and TLS files without a TLS URL, are refused too.
    let (code, _, stderr) = Herald::run_to_exit(&[
        "--redis-url",
        &format!("redis://127.0.0.1:{tls_port}"),
        "--redis-tls-ca-file",
        &certs.path("ca.crt"),
    ])
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("redis_tls_ca_file"), "{stderr}");
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let certs = TestCerts::generate();
    let (redis, tls_port) = tls_redis(&certs);
    let url = format!("rediss://herald:{PASSWORD}@127.0.0.1:{tls_port}");
    let mut args = vec![
        "--redis-url".to_owned(),
        url,
        "--log-level".to_owned(),
        "trace".to_owned(),
    ];
    args.extend(certs.herald_args("ca.crt"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node = Herald::launch(Launch {
        args: &args,
        capture_log: true,
        ..Launch::default()
    })
    .await;
    node.publish_retrying("s", json!(1), "s1").await;
    // Connection trouble makes the broker log its errors and reconnect.
    redis.cli(&["client", "kill", "user", "herald"]);
    node.wait_metric(
        "herald_backbone_events_total",
        &["event=\"reconnect\""],
        |v| v >= 1.0,
    )
    .await;
    node.publish_retrying("s", json!(2), "s2").await;
    let (_, metrics) = node.get("/metrics").await;
    assert!(!metrics.contains(PASSWORD));
    node.wait_log("redis pub/sub connection lost").await;
    node.kill().await;
    let logged = node.log();
    assert!(!logged.contains(PASSWORD), "the password is in the log");
}
