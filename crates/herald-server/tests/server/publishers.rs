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

/// An HTTP answer: status, `Retry-After`, JSON body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

impl Answer {
    /// Status and error code, for refusals.
    fn refusal(&self) -> (u16, Option<&str>) {
        (self.status, self.body["error"]["code"].as_str())
    }
}

/// POSTs `body` to `path` with an optional bearer key and extra header.
async fn post(
    h: &Herald,
    path: &str,
    key: Option<&str>,
    extra: Option<(&str, &str)>,
    body: Value,
) -> Answer {
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
        .map(|v| v.to_str().expect("ascii").parse().expect("seconds"));
    let body = resp.json().await.expect("JSON body");
    Answer {
        status,
        retry_after,
        body,
    }
}

/// Publishes `data` to `channel` with `key`.
async fn publish_as(h: &Herald, key: Option<&str>, channel: &str, data: Value) -> Answer {
    let body = json!({"channel": channel, "data": data});
    post(h, "/v1/publish", key, None, body).await
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
    let cookie = format!("herald_token={OPS}; api_key={OPS}");
    for (key, extra) in [
        (None, None),
        (Some("k-billing-wrong"), None),
        (None, Some(("cookie", cookie.as_str()))),
    ] {
        let body = json!({"channel": "orders.1", "data": 0});
        let a = post(&h, "/v1/publish", key, extra, body).await;
        assert_eq!(a.refusal(), (401, Some("unauthorized")), "{}", a.body);
        bodies.push(a.body);
    }

    // billing publishes to orders.* (1 of its 4 requests), not to users.1 (2 of 4).
    let a = publish_as(&h, Some(BILLING), "orders.1", json!(1)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(orders.next_message().await.json(), json!(1));
    let a = publish_as(&h, Some(BILLING), "users.1", json!(2)).await;
    assert_eq!(a.refusal(), (403, Some("forbidden")), "{}", a.body);
    bodies.push(a.body);
    // A broadcast is checked channel by channel (3 of 4): the allowed channel is published.
    let both = json!({"channels": ["orders.1", "users.1"], "data": 3});
    let a = post(&h, "/v1/broadcast", Some(BILLING), None, both).await;
    let v = &a.body;
    assert_eq!(a.status, 200, "{v}");
    assert_eq!(v["results"][0]["offset"], 2, "{v}");
    assert_eq!(v["results"][1]["error"]["code"], "forbidden", "{v}");
    assert_eq!(orders.next_message().await.json(), json!(3));
    bodies.push(a.body);
    // All channels forbidden: the status says so (4 of 4).
    let none = json!({"channels": ["users.2"], "data": 4});
    let a = post(&h, "/v1/broadcast", Some(BILLING), None, none).await;
    assert_eq!(a.status, 403, "{}", a.body);
    bodies.push(a.body);

    // billing is over its rate: 429 with Retry-After; ops and the listed key are served.
    let a = publish_as(&h, Some(BILLING), "orders.1", json!(5)).await;
    assert_eq!(a.refusal(), (429, Some("rate_limited")), "{}", a.body);
    assert!(a.retry_after.is_some_and(|s| s >= 1), "Retry-After");
    bodies.push(a.body);
    for key in [OPS, LIST] {
        assert_eq!(
            publish_as(&h, Some(key), "users.1", json!(6)).await.status,
            200
        );
    }
    assert_eq!(
        publish_as(&h, Some(OPS), "orders.1", json!(7)).await.status,
        200
    );
    assert_eq!(
        orders.next_message().await.json(),
        json!(7),
        "nothing of the refused publishes arrived"
    );

    for (filters, expected) in [
        (&["key=\"billing\"", "reason=\"forbidden\""][..], 3.0),
        (&["key=\"billing\"", "reason=\"rate_limited\""][..], 1.0),
        // Every key's series exists from the start.
        (&["key=\"ops\""][..], 0.0),
    ] {
        let got = h.metric("herald_api_key_rejections_total", filters).await;
        assert_eq!(got, expected, "{filters:?}");
    }
    let limit = ["limit=\"api_key_rate\""];
    assert_eq!(h.metric("herald_limit_rejections_total", &limit).await, 1.0);

    // No key appears in error bodies, metrics or the (debug-level) log.
    let (_, metrics) = h.get("/metrics").await;
    let log = h.log();
    assert!(
        log.contains("connection limits"),
        "the log was captured: {log}"
    );
    let bodies: String = bodies.iter().map(Value::to_string).collect();
    for secret in [BILLING, OPS, LIST] {
        for text in [&bodies, &metrics, &log] {
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
        let refused = publish_as(node, Some(BILLING), "users.1", json!(0)).await;
        assert_eq!(
            refused.refusal(),
            (403, Some("forbidden")),
            "{}",
            refused.body
        );
        let anonymous = publish_as(node, None, "orders.1", json!(0)).await;
        assert_eq!(anonymous.status, 401);
    }
    let a = publish_as(&a, Some(BILLING), "orders.1", json!("via a")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(on_b.next_message().await["data"], "via a");
    let _ = std::fs::remove_dir_all(dir);
}
