//! Through Debian's nginx running deploy/nginx/nginx.conf (only the listen address, resolver and
//! upstream NAME:PORT substituted) in front of three herald nodes sharing one redis-server.
//!
//! The nodes listen on 127.0.0.1, 127.0.0.2 and 127.0.0.3 with the same port, and a small DNS
//! server answers nginx's `resolver` with those three addresses: exactly how Docker's DNS answers
//! the compose service name `herald` with one A record per replica.
//!
//! These need the Redis broker wiring in the server (`--redis-url`).

use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::support::{
    Herald,
    clients::{Sse, Ws},
    poll,
    procs::{Dns, Nginx, Redis, free_port_on},
    within,
};

/// redis-server, `n` herald nodes on one port (one loopback address each), DNS and nginx.
pub struct Fleet {
    pub nodes: Vec<Herald>,
    pub nginx: Nginx,
    pub http: reqwest::Client,
    _dns: Dns,
    _redis: Redis,
}

impl Fleet {
    pub async fn start(n: u8, extra: &[&str]) -> Self {
        let redis = Redis::start();
        let ips: Vec<Ipv4Addr> = (1..=n).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect();
        let port = free_port_on(&ips);
        let url = redis.url();
        let mut args = vec!["--redis-url", url.as_str(), "--redis-timeout", "1s"];
        args.extend_from_slice(extra);
        let mut nodes = Vec::new();
        for ip in &ips {
            nodes.push(Herald::start_at(&format!("{ip}:{port}"), &args).await);
        }
        for node in &nodes {
            node.wait_for_ready(true).await;
        }
        let dns = Dns::start(ips).await;
        let nginx = Nginx::start(dns.port, port);
        Self {
            nodes,
            nginx,
            http: reqwest::Client::new(),
            _dns: dns,
            _redis: redis,
        }
    }

    /// Publishes through nginx, asserting success; returns (offset, epoch).
    pub async fn publish(&self, channel: &str, data: Value) -> (u64, String) {
        let resp = within(
            "a publish through nginx",
            self.http
                .post(self.nginx.url("/v1/publish"))
                .json(&json!({"channel": channel, "data": data}))
                .send(),
        )
        .await
        .expect("POST through nginx");
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.expect("JSON");
        (
            v["offset"].as_u64().expect("offset"),
            v["epoch"].as_str().expect("epoch").to_owned(),
        )
    }

    /// Which node holds the only open `transport` connection (polls each node's gauge).
    pub async fn node_serving(&self, transport: &str) -> usize {
        let filter = format!("transport=\"{transport}\"");
        poll(
            &format!("the node serving the {transport} client"),
            || async {
                let mut counts = Vec::new();
                for node in &self.nodes {
                    counts.push(node.metric("herald_connections", &[&filter]).await);
                }
                (counts.iter().sum::<f64>() == 1.0).then(|| {
                    counts
                        .iter()
                        .position(|c| *c == 1.0)
                        .expect("one node has it")
                })
            },
        )
        .await
    }

    /// Waits until no node has a `transport` connection open.
    pub async fn wait_no_connections(&self, transport: &str) {
        let filter = format!("transport=\"{transport}\"");
        for node in &self.nodes {
            node.wait_metric("herald_connections", &[&filter], |v| v == 0.0)
                .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_websocket_through_nginx_receive_publishes_made_through_nginx() {
    // No heartbeat during the test: only an unbuffered proxy delivers the first event at once.
    let fleet = Fleet::start(3, &["--sse-heartbeat", "1h"]).await;
    let mut sse = Sse::connect(&fleet.nginx.url("/v1/sse?channel=e2e"), None).await;
    assert_eq!(sse.status, 200);
    let first = sse.next().await.expect("the first event");
    assert_eq!(
        first.event, "herald.subscribed",
        "arrives before any publish"
    );
    assert_eq!(first.json()["channel"], "e2e");
    let mut ws = Ws::connect(&fleet.nginx.ws_url("/v1/ws")).await;
    ws.subscribe("e2e", None).await;

    for i in 1..=10u64 {
        assert_eq!(fleet.publish("e2e", json!({"i": i})).await.0, i);
    }
    for i in 1..=10u64 {
        assert_eq!(sse.next_message().await.json(), json!({"i": i}));
        let m = ws.next_message().await;
        assert_eq!(
            (m["offset"].as_u64(), &m["data"]),
            (Some(i), &json!({"i": i}))
        );
    }

    // No stickiness: requests from one client spread over every node.
    poll("requests through nginx reaching every node", || async {
        let resp = fleet
            .http
            .get(fleet.nginx.url("/healthz"))
            .send()
            .await
            .ok()?;
        assert_eq!(resp.status(), 200);
        for node in &fleet.nodes {
            let served = node
                .metric("herald_http_requests_total", &["route=\"healthz\""])
                .await;
            if served == 0.0 {
                return None;
            }
        }
        Some(())
    })
    .await;

    // Metrics are not exposed through the load balancer; errors stay JSON.
    let resp = fleet
        .http
        .get(fleet.nginx.url("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.expect("a JSON error");
    assert_eq!(v["error"]["code"], "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reconnecting_through_nginx_lands_on_another_node_and_resumes() {
    let fleet = Fleet::start(3, &[]).await;

    // WebSocket: resume with `since` on whichever other node nginx picks.
    let mut ws = Ws::connect(&fleet.nginx.ws_url("/v1/ws")).await;
    ws.subscribe("rw", None).await;
    let first_node = fleet.node_serving("ws").await;
    let mut epoch = String::new();
    for i in 1..=3 {
        epoch = fleet.publish("rw", json!(i)).await.1;
        assert_eq!(ws.next_message().await["data"], i);
    }
    drop(ws);
    fleet.wait_no_connections("ws").await;
    for i in 4..=6 {
        fleet.publish("rw", json!(i)).await;
    }
    let mut attempts = 0;
    let mut ws = loop {
        attempts += 1;
        assert!(attempts <= 50, "nginx kept sending the client to one node");
        let ws = Ws::connect(&fleet.nginx.ws_url("/v1/ws")).await;
        if fleet.node_serving("ws").await != first_node {
            break ws;
        }
        drop(ws);
        fleet.wait_no_connections("ws").await;
    };
    let sub = ws.subscribe("rw", Some((3, &epoch))).await;
    assert_eq!(sub["recovered"], true, "{sub}");
    for i in 4..=6 {
        let m = ws.next_message().await;
        assert_eq!((m["offset"].as_u64(), &m["data"]), (Some(i), &json!(i)));
    }
    fleet.publish("rw", json!(7)).await;
    assert_eq!(
        ws.next_message().await["offset"],
        7,
        "nothing lost, nothing twice"
    );

    // SSE: resume with Last-Event-ID (what EventSource sends) on another node.
    let mut sse = Sse::connect(&fleet.nginx.url("/v1/sse?channel=rs"), None).await;
    let first_node = fleet.node_serving("sse").await;
    for i in 1..=3 {
        fleet.publish("rs", json!(i)).await;
        assert_eq!(sse.next_message().await.json(), json!(i));
    }
    let token = sse.last_id.clone().expect("an event id");
    drop(sse);
    fleet.wait_no_connections("sse").await;
    for i in 4..=6 {
        fleet.publish("rs", json!(i)).await;
    }
    let mut attempts = 0;
    let mut sse = loop {
        attempts += 1;
        assert!(attempts <= 50, "nginx kept sending the client to one node");
        let sse = Sse::connect(&fleet.nginx.url("/v1/sse?channel=rs"), Some(&token)).await;
        if fleet.node_serving("sse").await != first_node {
            break sse;
        }
        drop(sse);
        fleet.wait_no_connections("sse").await;
    };
    let sub = sse.next().await.expect("subscribed");
    assert_eq!(sub.event, "herald.subscribed");
    assert_eq!(sub.json()["recovered"], true, "{sub:?}");
    for i in 4..=6 {
        assert_eq!(sse.next_message().await.json(), json!(i));
    }
    fleet.publish("rs", json!(7)).await;
    assert_eq!(sse.next_message().await.json(), json!(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_http2_through_nginx_multiplexes_streams_and_publishes() {
    let fleet = Fleet::start(2, &["--sse-heartbeat", "1h"]).await;
    let ca = reqwest::Certificate::from_pem(&fleet.nginx.certificate()).expect("PEM");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    // Two streams on one HTTP/2 connection to nginx (ALPN), each on whichever node nginx picks.
    let mut streams = Vec::new();
    for channel in ["tls-a", "tls-b"] {
        let url = fleet.nginx.https_url(&format!("/v1/sse?channel={channel}"));
        let mut sse = Sse::connect_on(&client, &url, None).await;
        assert_eq!((sse.status, sse.version), (200, reqwest::Version::HTTP_2));
        assert_eq!(
            sse.next().await.expect("subscribed").event,
            "herald.subscribed"
        );
        streams.push(sse);
    }
    for (i, channel) in ["tls-a", "tls-b"].iter().enumerate() {
        let resp = within(
            "a publish over HTTPS",
            client
                .post(fleet.nginx.https_url("/v1/publish"))
                .json(&json!({"channel": channel, "data": {"i": i}}))
                .send(),
        )
        .await
        .expect("POST");
        assert_eq!(
            (resp.status().as_u16(), resp.version()),
            (200, reqwest::Version::HTTP_2)
        );
    }
    for (i, sse) in streams.iter_mut().enumerate() {
        assert_eq!(sse.next_message().await.json(), json!({"i": i}));
    }
    // Plain HTTP keeps working next to it.
    fleet.publish("tls-a", json!("plain")).await;
    assert_eq!(streams[0].next_message().await.json(), json!("plain"));
}
