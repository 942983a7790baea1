//! Long-polling (`GET /v1/poll`): history after a position at once, holding until a message,
//! positions that cannot be served, and a chain of polls across two Redis-backed nodes.

use std::sync::Arc;

use herald_testkit::RedisServer;
use serde_json::{Value, json};

use crate::support::{Herald, within};

/// `GET /v1/poll?<query>`: the status and JSON body.
async fn poll(h: &Herald, query: &str) -> (u16, Value) {
    let (status, body) = h.get(&format!("/v1/poll?{query}")).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|_| panic!("non-JSON body: {body}"));
    (status, v)
}

/// `last_event_id` percent-encoded for a query string.
fn token_param(token: &str) -> String {
    form_urlencoded::byte_serialize(token.as_bytes()).collect()
}

/// The (channel, offset, data) of each message of a poll answer.
fn messages(v: &Value) -> Vec<(String, u64, Value)> {
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().expect("channel").to_owned(),
                m["offset"].as_u64().expect("offset"),
                m["data"].clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_poll_returns_the_history_after_its_position_at_once() {
    let h = Herald::start(&[]).await;
    let mut epoch = String::new();
    for n in 1..=5 {
        let body = json!({"channel": "pa", "data": {"n": n}}).to_string();
        let (_, ack) = h.post("/v1/publish", &body).await;
        epoch = ack["epoch"].as_str().expect("epoch").to_owned();
    }
    h.post(
        "/v1/publish",
        &json!({"channel": "pb", "data": "b1", "event": "note"}).to_string(),
    )
    .await;

    // Positions in both channels; the longest wait allowed: only history can answer this at once
    // (a poll that waited would trip the test's hang guard long before the 60 s).
    let (_, top) = poll(&h, "channel=pb&timeout=1ms").await;
    let pb = top["last_event_id"].as_str().expect("token").to_owned();
    let pb_epoch = pb.split(',').next().expect("epoch").to_owned();
    let token = format!("{epoch},2,pa;{pb_epoch},0,pb");
    let (status, v) = poll(
        &h,
        &format!(
            "channel=pa&channel=pb&timeout=60s&last_event_id={}",
            token_param(&token)
        ),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        messages(&v),
        vec![
            ("pa".to_owned(), 3, json!({"n": 3})),
            ("pa".to_owned(), 4, json!({"n": 4})),
            ("pa".to_owned(), 5, json!({"n": 5})),
            ("pb".to_owned(), 1, json!("b1")),
        ]
    );
    assert_eq!(v["messages"][0]["event"], "message");
    assert_eq!(v["messages"][3]["event"], "note");
    assert_eq!(v["messages"][0]["epoch"], epoch.as_str());
    assert_eq!(v["recovered"], true);
    assert_eq!(
        v["last_event_id"],
        format!("{epoch},5,pa;{pb_epoch},1,pb").as_str()
    );

    // The same position from the Last-Event-ID header.
    let resp = h
        .http
        .get(h.url("/v1/poll?channel=pa&timeout=60s"))
        .header("last-event-id", format!("{epoch},4,pa"))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(messages(&v), vec![("pa".to_owned(), 5, json!({"n": 5}))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_poll_holds_until_a_message_is_published() {
    let h = Arc::new(Herald::start(&[]).await);
    // No position: the poll starts from now, and its timeout passes with nothing.
    let (status, first) = poll(&h, "channel=hold&timeout=100ms").await;
    assert_eq!(status, 200);
    assert_eq!(first["messages"], json!([]));
    assert_eq!(
        first["recovered"], true,
        "nothing was asked to be recovered"
    );
    let token = first["last_event_id"].as_str().expect("token").to_owned();

    let waiting = {
        let h = h.clone();
        let query = format!(
            "channel=hold&timeout=60s&last_event_id={}",
            token_param(&token)
        );
        tokio::spawn(async move { poll(&h, &query).await })
    };
    h.wait_metric("herald_connections", &["transport=\"poll\""], |v| v == 1.0)
        .await;
    h.publish("hold", json!("now")).await;
    let (status, v) = within("the held poll", waiting).await.expect("task");
    assert_eq!(status, 200);
    assert_eq!(messages(&v), vec![("hold".to_owned(), 1, json!("now"))]);
    assert_eq!(v["recovered"], true);
    h.wait_metric("herald_connections", &["transport=\"poll\""], |v| v == 0.0)
        .await;
    assert_eq!(
        h.metric(
            "herald_disconnects_total",
            &["transport=\"poll\"", "reason=\"answered\""]
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_position_that_cannot_be_served_gets_recovered_false() {
    let h = Herald::start(&["--history-size", "3"]).await;
    let mut epoch = String::new();
    for n in 1..=10 {
        let body = json!({"channel": "old", "data": n}).to_string();
        epoch = h.post("/v1/publish", &body).await.1["epoch"]
            .as_str()
            .expect("epoch")
            .to_owned();
    }
    // Offsets 2..7 are no longer retained: what is left comes, flagged as incomplete.
    let token = token_param(&format!("{epoch},1,old"));
    let (_, v) = poll(&h, &format!("channel=old&last_event_id={token}")).await;
    assert_eq!(v["recovered"], false, "{v}");
    let offsets: Vec<u64> = messages(&v).iter().map(|m| m.1).collect();
    assert_eq!(offsets, vec![8, 9, 10]);
    assert_eq!(v["last_event_id"], format!("{epoch},10,old").as_str());

    // An epoch the channel no longer has: a reset to the current stream.
    let token = token_param("deadbeef,4,old");
    let (_, v) = poll(
        &h,
        &format!("channel=old&timeout=100ms&last_event_id={token}"),
    )
    .await;
    assert_eq!(v["recovered"], false, "{v}");
    assert!(
        v["last_event_id"]
            .as_str()
            .expect("token")
            .starts_with(&format!("{epoch},")),
        "{v}"
    );
}

#[tokio::test]
async fn bad_polls_get_json_errors() {
    let h = Herald::start(&[]).await;
    for (query, status, code) in [
        ("", 400, "bad_request"),
        ("channel=a&timeout=soon", 400, "bad_request"),
        ("channel=a&last_event_id=garbage", 400, "invalid_position"),
        ("channel=bad%20name", 400, "invalid_channel"),
    ] {
        let (got, v) = poll(&h, query).await;
        assert_eq!(
            (got, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{query}: {v}"
        );
    }
    let (status, v) = h.post("/v1/poll?channel=a", "{}").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_polls_alternating_between_two_nodes_receives_every_message_exactly_once() {
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..2 {
        nodes.push(Herald::start(&["--redis-url", &redis.url(), "--redis-timeout", "1s"]).await);
    }
    let nodes = Arc::new(nodes);
    const N: u64 = 200;
    // The first poll fixes the starting position (nothing yet), then the publisher starts.
    let (_, first) = poll(&nodes[0], "channel=chain&channel=side&timeout=1ms").await;
    let mut token = first["last_event_id"].as_str().expect("token").to_owned();
    let publisher = {
        let nodes = nodes.clone();
        tokio::spawn(async move {
            for n in 1..=N {
                // Both channels, through both nodes.
                nodes[(n % 2) as usize].publish("chain", json!(n)).await;
                if n % 10 == 0 {
                    nodes[0].publish("side", json!(n)).await;
                }
            }
        })
    };
    let (mut chain, mut side) = (Vec::new(), Vec::new());
    let mut polls = 0;
    while chain.len() < N as usize || side.len() < (N / 10) as usize {
        let node = &nodes[polls % 2];
        polls += 1;
        let query = format!(
            "channel=chain&channel=side&timeout=5s&last_event_id={}",
            token_param(&token)
        );
        let (status, v) = poll(node, &query).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["recovered"], true, "{v}");
        for (channel, offset, data) in messages(&v) {
            match channel.as_str() {
                "chain" => chain.push((offset, data)),
                _ => side.push((offset, data)),
            }
        }
        token = v["last_event_id"].as_str().expect("token").to_owned();
        assert!(polls < 10 * N as usize, "the chain stopped advancing");
    }
    within("the publisher", publisher).await.expect("publisher");
    let expected: Vec<(u64, Value)> = (1..=N).map(|n| (n, json!(n))).collect();
    assert_eq!(chain, expected, "every message once, in order");
    let expected: Vec<(u64, Value)> = (1..=N / 10).map(|k| (k, json!(k * 10))).collect();
    assert_eq!(side, expected);
    assert!(polls >= 2, "both nodes were polled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_are_authorised_like_sse_and_never_outlast_their_token() {
    use crate::auth::{claims, hs256, secured, token};
    let h = secured(&["--jwt-leeway", "0s"]).await;
    h.publish("news.a", json!("secret")).await;
    let get = async |query: &str, bearer: Option<&str>| {
        let mut req = h.http.get(h.url(&format!("/v1/poll?{query}")));
        if let Some(t) = bearer {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = within("a poll", req.send()).await.expect("GET");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.expect("JSON"))
    };
    let from_start = token_param(",0,news.a");
    let q = format!("channel=news.a&timeout=0&last_event_id={from_start}");
    // No token, or one for other channels: refused, and nothing of the channel comes back.
    let (status, v) = get(&q, None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let (status, v) = get(&q, Some(&token(None, &["other.*"]))).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{v}"
    );
    // A token that grants it: the history, as for SSE (also as ?token=).
    let good = token(None, &["news.*"]);
    let (status, v) = get(&q, Some(&good)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(messages(&v)[0].2, json!("secret"));
    let (status, _) = get(&format!("{q}&token={good}"), None).await;
    assert_eq!(status, 200);
    // A poll that would wait past the token's expiry answers at the expiry instead (well before
    // the test's hang guard), and the next one is refused.
    let short = hs256(&claims(None, &["news.*"], 2));
    let live = format!(
        "channel=news.a&timeout=60s&last_event_id={}",
        token_param(v["last_event_id"].as_str().expect("token"))
    );
    let (status, v) = get(&live, Some(&short)).await;
    assert_eq!((status, v["messages"].clone()), (200, json!([])), "{v}");
    // Expiry is checked in whole seconds: within the last one a poll is still accepted, and
    // answered at once.
    within("token_expired", async {
        loop {
            let (status, v) = get(&live, Some(&short)).await;
            if status == 401 {
                assert_eq!(v["error"]["code"], "token_expired", "{v}");
                return;
            }
            assert_eq!((status, v["messages"].clone()), (200, json!([])), "{v}");
        }
    })
    .await;
}
