//! Publishers: named API keys scoped to channels and rate-limited, never leaked; WebSocket
//! clients rate-limited per connection.

use serde_json::{Value, json};

use crate::support::{
    Herald, Launch,
    clients::{Sse, Ws},
    within,
};

const BILLING: &str = "k-billing-7f3a9c1e5b2d4f60";
const OPS: &str = "k-ops-0e1d2c3b4a596877";
const LIST: &str = "k-list-99887766554433";

/// Status, `Retry-After`, and body of a POST with an optional bearer key and extra header.
async fn post(
    h: &Herald,
    path: &str,
    key: Option<&str>,
    extra: Option<(&str, &str)>,
    body: Value,
) -> (u16, Option<String>, Value) {
    let mut req = h
        .http
        .post(h.url(path))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    if let Some((name, value)) = extra {
        req = req.header(name, value);
    }
    let resp = within("POST", req.send()).await.expect("POST");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().expect("ascii").to_owned());
    (status, retry_after, resp.json().await.expect("JSON body"))
}

fn publish_body(channel: &str, data: Value) -> Value {
    json!({"channel": channel, "data": data})
}

#[tokio::test]
async fn named_keys_are_scoped_rate_limited_and_never_leak() {
    let dir = std::env::temp_dir().join(format!("herald-publishers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key_file = dir.join("billing.key");
    std::fs::write(&key_file, format!("{BILLING}\n")).expect("write key");
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[api_keys]]
name = "listed"
key = "{LIST}"

[[api_keys]]
name = "billing"
key_file = "{}"
channels = ["orders.*"]
rate = "1/h"
burst = 4

[[api_keys]]
name = "ops"
key_env = "HERALD_TEST_OPS_KEY"
"#,
            key_file.display()
        ),
    )
    .expect("write config");
    let h = Herald::launch(Launch {
        args: &[
            "--config",
            config.to_str().expect("utf8"),
            "--log-level",
            "debug",
        ],
        env: &[("HERALD_TEST_OPS_KEY", OPS)],
        capture_log: true,
        ..Launch::default()
    })
    .await;
    let mut orders = Sse::connect(&h.url("/v1/sse?channel=orders.1"), None).await;
    let mut bodies = Vec::new();

    // No key, a wrong key, a key only in a cookie (CSRF): 401.
    for (key, cookie) in [
        (None, None),
        (Some("k-billing-wrong"), None),
        (
            None,
            Some(("cookie", format!("herald_token={OPS}; api_key={OPS}"))),
        ),
    ] {
        let cookie = cookie.as_ref().map(|(n, v)| (*n, v.as_str()));
        let (status, _, v) = post(
            &h,
            "/v1/publish",
            key,
            cookie,
            publish_body("orders.1", json!(0)),
        )
        .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (401, Some("unauthorized")),
            "{v}"
        );
        bodies.push(v);
    }

    // billing publishes to orders.* (1 of its 4 requests), not to users.1 (2 of 4).
    let (status, _, v) = post(
        &h,
        "/v1/publish",
        Some(BILLING),
        None,
        publish_body("orders.1", json!(1)),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(orders.next_message().await.json(), json!(1));
    let (status, _, v) = post(
        &h,
        "/v1/publish",
        Some(BILLING),
        None,
        publish_body("users.1", json!(2)),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    bodies.push(v);
    // A broadcast is checked channel by channel (3 of 4): the allowed channel is published.
    let (status, _, v) = post(
        &h,
        "/v1/broadcast",
        Some(BILLING),
        None,
        json!({"channels": ["orders.1", "users.1"], "data": 3}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["offset"], 2, "{v}");
    assert_eq!(v["results"][1]["error"]["code"], "forbidden", "{v}");
    assert_eq!(orders.next_message().await.json(), json!(3));
    bodies.push(v);
    // All channels forbidden: the status says so (4 of 4).
    let (status, _, v) = post(
        &h,
        "/v1/broadcast",
        Some(BILLING),
        None,
        json!({"channels": ["users.2"], "data": 4}),
    )
    .await;
    assert_eq!(status, 403, "{v}");
    bodies.push(v);

    // billing is over its rate: 429 with Retry-After; ops and the listed key are served.
    let (status, retry_after, v) = post(
        &h,
        "/v1/publish",
        Some(BILLING),
        None,
        publish_body("orders.1", json!(5)),
    )
    .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{v}"
    );
    let retry_after: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(retry_after >= 1, "{retry_after}");
    bodies.push(v);
    for key in [OPS, LIST] {
        let (status, _, v) = post(
            &h,
            "/v1/publish",
            Some(key),
            None,
            publish_body("users.1", json!(6)),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    let (status, _, _) = post(
        &h,
        "/v1/publish",
        Some(OPS),
        None,
        publish_body("orders.1", json!(7)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        orders.next_message().await.json(),
        json!(7),
        "nothing of the refused publishes arrived"
    );

    assert_eq!(
        h.metric(
            "herald_api_key_rejections_total",
            &["key=\"billing\"", "reason=\"forbidden\""]
        )
        .await,
        3.0
    );
    assert_eq!(
        h.metric(
            "herald_api_key_rejections_total",
            &["key=\"billing\"", "reason=\"rate_limited\""]
        )
        .await,
        1.0
    );
    assert_eq!(
        h.metric("herald_api_key_rejections_total", &["key=\"ops\""])
            .await,
        0.0,
        "every key's series exists from the start"
    );
    assert_eq!(
        h.metric("herald_limit_rejections_total", &["limit=\"api_key_rate\""])
            .await,
        1.0
    );

    // No key appears in error bodies, metrics or the (debug-level) log.
    let (_, metrics) = h.get("/metrics").await;
    let log = h.log();
    assert!(
        log.contains("connection limits"),
        "the log was captured: {log}"
    );
    let texts = [
        bodies.iter().map(Value::to_string).collect::<String>(),
        metrics,
        log,
    ];
    for secret in [BILLING, OPS, LIST] {
        for text in &texts {
            assert!(!text.contains(secret), "a key leaked into: {text}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn websocket_publishers_are_rate_limited_per_connection_then_closed() {
    let h = Herald::start(&[
        "--allow-client-publish",
        "true",
        "--ws-publish-rate",
        "1/h",
        "--ws-publish-burst",
        "2",
    ])
    .await;
    let mut watcher = Ws::connect(&h.ws_url("/v1/ws?channel=room")).await;
    watcher.next().await;
    let mut flooder = Ws::connect(&h.ws_url("/v1/ws")).await;
    let mut calm = Ws::connect(&h.ws_url("/v1/ws")).await;
    let publish = |i: u64| json!({"op": "publish", "channel": "room", "data": i, "id": i});

    // Two within the burst, two refused with their ids, then the connection is closed.
    for i in 1..=2 {
        flooder.send(publish(i)).await;
        assert_eq!(flooder.next().await["type"], "published");
    }
    for i in 3..=4 {
        flooder.send(publish(i)).await;
        let v = flooder.next().await;
        assert_eq!(
            (v["code"].as_str(), v["id"].as_u64()),
            (Some("rate_limited"), Some(i)),
            "{v}"
        );
    }
    flooder.send(publish(5)).await;
    assert_eq!(flooder.next_or_close().await, Err(Some(4029)));

    // Another connection has its own budget; the watcher saw exactly the accepted publishes.
    calm.send(publish(6)).await;
    assert_eq!(calm.next().await["type"], "published");
    for expected in [1, 2, 6] {
        assert_eq!(watcher.next_message().await["data"], expected);
    }
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"ws_publish_rate\""]
        )
        .await,
        3.0
    );
    h.wait_metric(
        "herald_disconnects_total",
        &["reason=\"rate_limited\""],
        |v| v == 1.0,
    )
    .await;
}

#[tokio::test]
async fn websocket_message_floods_are_refused_then_closed() {
    let h = Herald::start(&["--ws-message-rate", "1/h", "--ws-message-burst", "3"]).await;
    let mut watcher = Ws::connect(&h.ws_url("/v1/ws?channel=m")).await;
    watcher.next().await;
    let mut flooder = Ws::connect(&h.ws_url("/v1/ws")).await;
    for i in 1..=3 {
        flooder.send(json!({"op": "ping", "id": i})).await;
        assert_eq!(flooder.next().await, json!({"type": "pong", "id": i}));
    }
    for i in 4..=6 {
        flooder
            .send(json!({"op": "subscribe", "channel": "m", "id": i}))
            .await;
        let v = flooder.next().await;
        assert_eq!(
            (v["code"].as_str(), v["id"].as_u64()),
            (Some("rate_limited"), Some(i)),
            "{v}"
        );
    }
    flooder.send(json!({"op": "ping", "id": 7})).await;
    assert_eq!(flooder.next_or_close().await, Err(Some(4029)));
    h.publish("m", json!("still here")).await;
    assert_eq!(watcher.next_message().await["data"], "still here");
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"ws_message_rate\""]
        )
        .await,
        4.0
    );
}

#[tokio::test]
async fn scoped_keys_hold_on_a_redis_backed_pair_of_nodes() {
    let redis = herald_testkit::RedisServer::start();
    let dir = std::env::temp_dir().join(format!("herald-publishers-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("herald.toml");
    std::fs::write(
        &config,
        format!(
            "redis_url = \"{}\"\n[[api_keys]]\nname = \"billing\"\nkey = \"{BILLING}\"\nchannels = [\"orders.*\"]\n",
            redis.url()
        ),
    )
    .expect("write config");
    let config = config.to_str().expect("utf8");
    let a = Herald::start(&["--config", config]).await;
    let b = Herald::start(&["--config", config]).await;
    let mut on_b = Ws::connect(&b.ws_url("/v1/ws?channel=orders.1")).await;
    on_b.next().await;
    for node in [&a, &b] {
        let (status, _, v) = post(
            node,
            "/v1/publish",
            Some(BILLING),
            None,
            publish_body("users.1", json!(0)),
        )
        .await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{v}"
        );
        let (status, _, _) = post(
            node,
            "/v1/publish",
            None,
            None,
            publish_body("orders.1", json!(0)),
        )
        .await;
        assert_eq!(status, 401);
    }
    let (status, _, v) = post(
        &a,
        "/v1/publish",
        Some(BILLING),
        None,
        publish_body("orders.1", json!("via a")),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(on_b.next_message().await["data"], "via a");
    let _ = std::fs::remove_dir_all(dir);
}
