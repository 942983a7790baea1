//! The same authorization on a Redis-backed pair of nodes: what one node refuses the other
//! refuses too, and a user's private channel reaches only that user, whatever node serves them.

use herald_testkit::RedisServer;
use serde_json::json;

use super::{SECRET, TempDir, sse_refused, token};
use crate::support::{
    Herald,
    clients::{Sse, Ws},
};

#[tokio::test]
async fn authorization_holds_on_a_redis_backed_pair_of_nodes() {
    let redis = RedisServer::start();
    let dir = TempDir::new("pair");
    let config = dir.file(
        "herald.toml",
        "[namespaces.user]\nuser_channels = true\nhistory_size = 3\n",
    );
    let args = [
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "500ms",
        "--jwt-secret",
        SECRET,
        "--config",
        config.to_str().expect("utf8"),
    ];
    let a = Herald::start(&args).await;
    let b = Herald::start(&args).await;

    // news.* on A, published on B.
    let reader = token(Some("7"), &["news.*"]);
    let mut sse = Sse::connect(
        &a.url(&format!("/v1/sse?channel=news.a&token={reader}")),
        None,
    )
    .await;
    assert_eq!(sse.status, 200);
    b.publish("news.a", json!(1)).await;
    assert_eq!(sse.next_message().await.json(), 1);
    let last_id = sse.last_id.clone().expect("id");
    drop(sse);

    // Refused the same way on both nodes.
    for node in [&a, &b] {
        let bearer = format!("Bearer {reader}");
        let auth = [("authorization", bearer.as_str())];
        let url = node.url("/v1/sse?channel=newsletter");
        assert_eq!(
            sse_refused(&url, None, &auth).await,
            (403, "forbidden".into())
        );
        let url = node.url("/v1/sse?channel=user:42");
        assert_eq!(
            sse_refused(&url, None, &auth).await,
            (403, "forbidden".into())
        );
        assert_eq!(
            sse_refused(&url, None, &[]).await,
            (401, "unauthorized".into())
        );
    }

    // user:42 belongs to sub 42, on whichever node.
    let owner = token(Some("42"), &[]);
    let mut on_b = Ws::connect(&b.ws_url(&format!("/v1/ws?token={owner}"))).await;
    on_b.subscribe("user:42", None).await;
    let mut on_a = Ws::connect(&a.ws_url(&format!("/v1/ws?token={owner}"))).await;
    on_a.subscribe("user:42", None).await;
    a.publish("user:42", json!("for 42")).await;
    assert_eq!(on_b.next_message().await["data"], "for 42");
    assert_eq!(on_a.next_message().await["data"], "for 42");

    // A resume on the other node is authorised again, channel by channel.
    b.publish("news.a", json!(2)).await;
    let bearer = format!("Bearer {reader}");
    let mut resumed = Sse::try_connect_with(
        &b.url("/v1/sse?channel=news.a"),
        Some(&last_id),
        &[("authorization", &bearer)],
    )
    .await
    .expect("request");
    assert_eq!(
        resumed.next().await.expect("subscribed").json()["recovered"],
        true
    );
    assert_eq!(resumed.next_message().await.json(), 2);
    let url = b.url("/v1/sse?channel=news.a&channel=user:42");
    assert_eq!(
        sse_refused(&url, Some(&last_id), &[("authorization", &bearer)]).await,
        (403, "forbidden".into())
    );

    // Per-namespace history size on Redis: user:* keeps 3.
    for i in 0..5 {
        b.publish("user:42", json!(i)).await;
    }
    let (_, body) = a
        .get(&format!("/v1/channels/user:42/history?token={owner}"))
        .await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["messages"].as_array().expect("messages").len(), 3);
}
