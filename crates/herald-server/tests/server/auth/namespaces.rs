//! Namespaces: anonymous reading where allowed, user channels for their user only, client
//! publish per namespace (and the older `--allow-client-publish`), history size per namespace.

use serde_json::json;

use super::{SECRET, TempDir, sse_refused, token};
use crate::support::{
    Herald,
    clients::{Sse, Ws},
};

const CONFIG: &str = r#"
[namespaces.public]
anonymous_read = true
history_size = 2

[namespaces.user]
user_channels = true

[namespaces.chat]
client_publish = "token"

[namespaces.open]
anonymous_read = true
client_publish = "anonymous"
"#;

async fn node(dir: &TempDir, extra: &[&str]) -> Herald {
    let path = dir.file("herald.toml", CONFIG);
    let mut args = vec![
        "--config",
        path.to_str().expect("utf8"),
        "--jwt-secret",
        SECRET,
    ];
    args.extend_from_slice(extra);
    Herald::start(&args).await
}

#[tokio::test]
async fn anonymous_reading_only_where_the_namespace_allows_it() {
    let dir = TempDir::new("ns-anon");
    let node = node(&dir, &["--auth-timeout", "1s"]).await;
    let mut sse = Sse::connect(&node.url("/v1/sse?channel=public:lobby"), None).await;
    assert_eq!(sse.status, 200);
    let mut ws = Ws::connect(&node.ws_url("/v1/ws?channel=public:lobby")).await;
    assert_eq!(ws.next().await["type"], "subscribed");
    for private in ["news", "chat:1", "other:1"] {
        let url = node.url(&format!("/v1/sse?channel={private}"));
        assert_eq!(
            sse_refused(&url, None, &[]).await,
            (401, "unauthorized".into()),
            "{private}"
        );
        ws.send(json!({"op": "subscribe", "channel": private}))
            .await;
        assert_eq!(ws.next().await["code"], "unauthorized", "{private}");
        node.publish(private, json!("private")).await;
    }
    node.publish("public:lobby", json!("hello")).await;
    assert_eq!(sse.next_message().await.json(), "hello");
    assert_eq!(
        ws.next_message().await["data"],
        "hello",
        "nothing private before it"
    );
    assert_eq!(node.get("/v1/channels/public:lobby/history").await.0, 200);
    assert_eq!(node.get("/v1/channels/news/history").await.0, 401);
    // A connection that neither authenticates nor subscribes is closed after auth_timeout; an
    // anonymous reader of an anonymous channel (opened earlier) is not.
    let mut idle = Ws::connect(&node.ws_url("/v1/ws")).await;
    assert_eq!(idle.next().await["code"], "unauthorized");
    assert_eq!(idle.next_or_close().await, Err(Some(4401)));
    node.publish("public:lobby", json!("still")).await;
    assert_eq!(ws.next_message().await["data"], "still");
}

#[tokio::test]
async fn user_channels_are_readable_only_by_their_user() {
    let dir = TempDir::new("ns-user");
    let node = node(&dir, &[]).await;
    let url = node.url("/v1/sse?channel=user:42");
    for (who, t, expected) in [
        (
            "sub 7 holding *",
            Some(token(Some("7"), &["*"])),
            (403, "forbidden"),
        ),
        (
            "no sub, holding user:42",
            Some(token(None, &["user:42"])),
            (403, "forbidden"),
        ),
        (
            "sub 420",
            Some(token(Some("420"), &["user:*"])),
            (403, "forbidden"),
        ),
        ("anonymous", None, (401, "unauthorized")),
    ] {
        let bearer = t.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .iter()
            .map(|b| ("authorization", b.as_str()))
            .collect();
        let (status, code) = sse_refused(&url, None, &headers).await;
        assert_eq!((status, code.as_str()), expected, "{who}");
    }
    // sub 42 needs no `channels` claim for its own channel.
    let owner = token(Some("42"), &[]);
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={owner}"))).await;
    ws.subscribe("user:42", None).await;
    ws.send(json!({"op": "subscribe", "channel": "user:7"}))
        .await;
    assert_eq!(ws.next().await["code"], "forbidden");
    node.publish("user:7", json!("not yours")).await;
    node.publish("user:42", json!("private message")).await;
    assert_eq!(ws.next_message().await["data"], "private message");
}

#[tokio::test]
async fn client_publish_follows_the_namespace_and_the_publish_claim() {
    let dir = TempDir::new("ns-publish");
    let node = node(&dir, &[]).await;
    let publisher = token(Some("alice"), &["chat:*"]);
    let mut with_claim = Ws::connect(&node.ws_url(&format!(
        "/v1/ws?token={}",
        super::hs256(&{
            let mut c = super::claims(Some("alice"), &["chat:*"], 60);
            c["publish"] = json!(["chat:*"]);
            c
        })
    )))
    .await;
    let mut reader_only = Ws::connect(&node.ws_url(&format!("/v1/ws?token={publisher}"))).await;
    let mut anonymous = Ws::connect(&node.ws_url("/v1/ws")).await;
    let op =
        |channel: &str, id: u64| json!({"op": "publish", "channel": channel, "data": id, "id": id});

    with_claim.send(op("chat:1", 1)).await;
    assert_eq!(with_claim.next().await["type"], "published");
    reader_only.send(op("chat:1", 2)).await;
    assert_eq!(
        reader_only.next().await["code"],
        "forbidden",
        "no publish claim"
    );
    anonymous.send(op("chat:1", 3)).await;
    assert_eq!(anonymous.next().await["code"], "unauthorized", "no token");
    anonymous.send(op("open:1", 4)).await;
    assert_eq!(
        anonymous.next().await["type"],
        "published",
        "client_publish = anonymous"
    );
    with_claim.send(op("news", 5)).await;
    assert_eq!(
        with_claim.next().await["code"],
        "forbidden",
        "the default namespace: no client publish"
    );
}

#[tokio::test]
async fn allow_client_publish_means_with_a_publish_claim_once_a_key_is_configured() {
    let open = Herald::start(&["--allow-client-publish", "true"]).await;
    let mut ws = Ws::connect(&open.ws_url("/v1/ws")).await;
    ws.send(json!({"op": "publish", "channel": "news", "data": 1}))
        .await;
    assert_eq!(
        ws.next().await["type"],
        "published",
        "open server: anyone, as before"
    );

    let secured = super::secured(&["--allow-client-publish", "true"]).await;
    let mut anonymous = Ws::connect(&secured.ws_url("/v1/ws")).await;
    anonymous
        .send(json!({"op": "publish", "channel": "news", "data": 1}))
        .await;
    assert_eq!(anonymous.next().await["code"], "unauthorized");
    let mut c = super::claims(None, &[], 60);
    c["publish"] = json!("news");
    let mut ws = Ws::connect(&secured.ws_url(&format!("/v1/ws?token={}", super::hs256(&c)))).await;
    ws.send(json!({"op": "publish", "channel": "news", "data": 1}))
        .await;
    assert_eq!(ws.next().await["type"], "published");
}

#[tokio::test]
async fn history_size_is_per_namespace() {
    let dir = TempDir::new("ns-history");
    let node = node(&dir, &[]).await;
    for i in 1..=5 {
        node.publish("public:a", json!(i)).await;
        node.publish("news", json!(i)).await;
    }
    let t = token(None, &["*"]);
    let count = |body: String| {
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["messages"].as_array().expect("messages").len()
    };
    let (_, short) = node.get("/v1/channels/public:a/history").await;
    assert_eq!(count(short), 2, "[namespaces.public] history_size = 2");
    let (_, long) = node
        .get(&format!("/v1/channels/news/history?token={t}"))
        .await;
    assert_eq!(count(long), 5, "the global history_size elsewhere");
}
