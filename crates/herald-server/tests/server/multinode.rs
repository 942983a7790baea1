//! Several herald nodes on one Redis (and on a Redis Cluster): delivery across nodes and resume
//! on a node other than the one that served the client before.

use std::sync::Arc;

use herald_testkit::{RedisCluster, RedisServer};
use serde_json::json;

use crate::support::{
    Herald,
    clients::{Sse, Ws},
};

async fn nodes(redis_url: &str, n: usize) -> Vec<Herald> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Herald::start(&["--redis-url", redis_url, "--redis-timeout", "500ms"]).await);
    }
    nodes
}

#[tokio::test]
async fn a_publish_to_any_node_reaches_subscribers_on_every_node_once_in_order() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis.url(), 3).await;
    let mut sse = Vec::new();
    let mut ws = Vec::new();
    for node in &nodes {
        sse.push(Sse::connect(&node.url("/v1/sse?channel=news"), None).await);
        let mut w = Ws::connect(&node.ws_url("/v1/ws")).await;
        w.subscribe("news", None).await;
        ws.push(w);
    }
    for i in 1..=30u64 {
        let offset = nodes[i as usize % 3].publish("news", json!(i)).await;
        assert_eq!(offset, i);
    }
    for s in &mut sse {
        for i in 1..=30u64 {
            assert_eq!(s.next_message().await.json(), json!(i));
        }
    }
    for w in &mut ws {
        for i in 1..=30u64 {
            let m = w.next_message().await;
            assert_eq!((m["offset"].as_u64(), &m["data"]), (Some(i), &json!(i)));
        }
    }
}

#[tokio::test]
async fn resume_works_on_a_different_node() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis.url(), 2).await;
    let (a, b) = (&nodes[0], &nodes[1]);

    // SSE: subscribed on A, resumed on B with Last-Event-ID.
    let mut sse = Sse::connect(&a.url("/v1/sse?channel=s"), None).await;
    a.publish("s", json!(1)).await;
    assert_eq!(sse.next_message().await.json(), json!(1));
    let token = sse.last_id.clone().expect("id");
    drop(sse);
    for i in 2..=5 {
        a.publish("s", json!(i)).await;
    }
    let mut sse = Sse::connect(&b.url("/v1/sse?channel=s"), Some(&token)).await;
    let sub = sse.next().await.expect("subscribed");
    assert_eq!(sub.json()["recovered"], true);
    for i in 2..=5 {
        assert_eq!(sse.next_message().await.json(), json!(i));
    }
    b.publish("s", json!(6)).await;
    assert_eq!(
        sse.next_message().await.json(),
        json!(6),
        "no duplicates, then live"
    );

    // WebSocket: subscribed on B, resumed on A with `since`.
    let mut ws = Ws::connect(&b.ws_url("/v1/ws")).await;
    ws.subscribe("w", None).await;
    b.publish("w", json!(1)).await;
    let m = ws.next_message().await;
    assert_eq!(m["offset"], 1);
    let epoch = m["epoch"].as_str().expect("epoch").to_owned();
    drop(ws);
    for i in 2..=4 {
        b.publish("w", json!(i)).await;
    }
    let mut ws = Ws::connect(&a.ws_url("/v1/ws")).await;
    assert_eq!(
        ws.subscribe("w", Some((1, &epoch))).await["recovered"],
        true
    );
    for i in 2..=4 {
        assert_eq!(ws.next_message().await["offset"], i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seam_holds_across_nodes_under_a_hammering_publisher() {
    let redis = RedisServer::start();
    let nodes: Vec<Arc<Herald>> = nodes(&redis.url(), 2)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let epoch = {
        let mut ws = Ws::connect(&nodes[1].ws_url("/v1/ws")).await;
        ws.subscribe("seam", None).await["epoch"]
            .as_str()
            .expect("epoch")
            .to_owned()
    };
    const N: u64 = 400;
    let publisher = {
        let a = nodes[0].clone();
        tokio::spawn(async move {
            for i in 1..=N {
                a.publish("seam", json!(i)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut ws = Ws::connect(&nodes[1].ws_url("/v1/ws")).await;
        ws.subscribe("seam", Some((0, &epoch))).await;
        clients.push(ws);
        tokio::task::yield_now().await;
    }
    publisher.await.expect("publisher");
    for mut ws in clients {
        for i in 1..=N {
            assert_eq!(
                ws.next_message().await["offset"],
                i,
                "exactly once, in order"
            );
        }
    }
}

#[tokio::test]
async fn idempotent_publish_holds_across_nodes() {
    let redis = RedisServer::start();
    let nodes = nodes(&redis.url(), 2).await;
    let mut ws = Ws::connect(&nodes[1].ws_url("/v1/ws?channel=i")).await;
    ws.next().await;
    let body = r#"{"channel":"i","data":"once","idempotency_key":"order-7"}"#;
    let (s1, first) = nodes[0].post("/v1/publish", body).await;
    let (s2, retry) = nodes[1].post("/v1/publish", body).await;
    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        first, retry,
        "the retry on another node returns the first result"
    );
    nodes[0].publish("i", json!("next")).await;
    assert_eq!(ws.next_message().await["data"], "once");
    assert_eq!(
        ws.next_message().await["data"],
        "next",
        "the retry delivered nothing"
    );
}

#[tokio::test]
async fn redis_cluster_relays_and_resumes_across_nodes_on_every_shard() {
    let cluster = RedisCluster::start();
    let nodes = nodes(&cluster.url(), 2).await;
    // Channels whose keys land on each of the three masters.
    let mut channels: Vec<String> = Vec::new();
    let mut owners = std::collections::HashSet::new();
    for i in 0..200 {
        let name = format!("room-{i}");
        if owners.insert(cluster.owner_of(&format!("{{{name}}}"))) {
            channels.push(name);
        }
        if owners.len() == 3 {
            break;
        }
    }
    assert_eq!(owners.len(), 3, "channels cover every shard");
    let mut ws = Ws::connect(&nodes[1].ws_url("/v1/ws")).await;
    for c in &channels {
        ws.subscribe(c, None).await;
    }
    for c in &channels {
        nodes[0].publish(c, json!(1)).await;
    }
    let mut got = std::collections::HashMap::new();
    for _ in &channels {
        let m = ws.next_message().await;
        let epoch = m["epoch"].as_str().expect("epoch").to_owned();
        got.insert(m["channel"].as_str().expect("channel").to_owned(), epoch);
    }
    let mut names: Vec<&String> = got.keys().collect();
    names.sort();
    let mut want: Vec<&String> = channels.iter().collect();
    want.sort();
    assert_eq!(names, want, "cross-node delivery on every shard");
    let epochs: Vec<String> = channels.iter().map(|c| got[c].clone()).collect();
    drop(ws);
    for c in &channels {
        nodes[0].publish(c, json!(2)).await;
        nodes[0].publish(c, json!(3)).await;
    }
    let mut ws = Ws::connect(&nodes[1].ws_url("/v1/ws")).await;
    for (c, e) in channels.iter().zip(&epochs) {
        assert_eq!(ws.subscribe(c, Some((1, e))).await["recovered"], true);
        assert_eq!(ws.next_message().await["data"], 2);
        assert_eq!(ws.next_message().await["data"], 3);
    }
}
