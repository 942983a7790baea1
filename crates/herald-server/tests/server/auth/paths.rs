//! Every read path is authorised channel by channel, including the ones that read history in
//! bounded pages: history responses paged with `before` and streamed over several pages, WebSocket
//! resumes replayed page by page at the client's pace, and SSE through hyper as well as through
//! the fast path.

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{secured, token};
use crate::support::{Herald, clients::Ws, within};

/// Publishes `n` messages `{prefix}-1`..`{prefix}-n` to `channel`; returns its epoch.
async fn publish_n(node: &Herald, channel: &str, prefix: &str, n: usize) -> String {
    let mut epoch = String::new();
    for i in 1..=n {
        let body = json!({"channel": channel, "data": format!("{prefix}-{i}")}).to_string();
        let (status, v) = node.post("/v1/publish", &body).await;
        assert_eq!(status, 200, "{v}");
        epoch = v["epoch"].as_str().expect("epoch").to_owned();
    }
    epoch
}

/// A history request with `authorization` (if any): its status and body.
async fn history(
    node: &Herald,
    path_and_query: &str,
    authorization: Option<&str>,
) -> (u16, String) {
    let mut req = node.http.get(node.url(path_and_query));
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = within("history", req.send()).await.expect("history");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn data(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON: {body}"));
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["data"].as_str().expect("data").to_owned())
        .collect()
}

#[tokio::test]
async fn paged_and_streamed_reads_are_authorised_channel_by_channel() {
    // Pages of one message: every read below takes several broker reads (and the history
    // responses are streamed, not sent whole).
    let node = secured(&["--history-page-bytes", "1"]).await;
    let news = publish_n(&node, "news.a", "news", 5).await;
    let secret = publish_n(&node, "secret.x", "secret", 5).await;
    let t = token(None, &["news.*"]);
    let bearer = format!("Bearer {t}");

    let (status, body) = history(&node, "/v1/channels/news.a/history?since=0", Some(&bearer)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        data(&body),
        ["news-1", "news-2", "news-3", "news-4", "news-5"]
    );
    let path = format!("/v1/channels/news.a/history?before=4&limit=2&token={t}");
    let (status, body) = history(&node, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(data(&body), ["news-2", "news-3"], "paging back with before");

    for query in [
        String::new(),
        "?since=0".to_owned(),
        "?before=4&limit=2".to_owned(),
        format!("?before=6&epoch={secret}"),
    ] {
        let path = format!("/v1/channels/secret.x/history{query}");
        for (authorization, expected) in [(Some(bearer.as_str()), 403), (None, 401)] {
            let (status, body) = history(&node, &path, authorization).await;
            assert_eq!(status, expected, "{path} {authorization:?}: {body}");
            assert!(!body.contains("secret-"), "{path}: {body}");
        }
    }

    // A WebSocket resume replayed page by page: all of the granted channel, none of the other.
    let mut ws = Ws::connect(&node.ws_url(&format!("/v1/ws?token={t}"))).await;
    ws.send(json!({"op": "subscribe", "id": 1, "channel": "secret.x", "since": {"offset": 0, "epoch": secret}}))
        .await;
    let refused = ws.next().await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_u64()),
        (Some("forbidden"), Some(1))
    );
    let sub = ws.subscribe("news.a", Some((0, &news))).await;
    assert_eq!(sub["recovered"], true);
    for i in 1..=5 {
        let m = ws.next_message().await;
        assert_eq!(
            (m["channel"].as_str(), m["data"].as_str()),
            (Some("news.a"), Some(format!("news-{i}").as_str()))
        );
    }
    node.publish("secret.x", json!("secret-live")).await;
    node.publish("news.a", json!("news-live")).await;
    assert_eq!(ws.next_message().await["data"], "news-live");
}

/// Sends an SSE request through hyper rather than the fast path: a `Content-Length: 0` head,
/// which the fast path leaves to hyper.
async fn sse_via_hyper(node: &Herald, channel: &str, headers: &[String]) -> TcpStream {
    let mut s = TcpStream::connect(node.addr()).await.expect("connect");
    let mut head = format!("GET /v1/sse?channel={channel} HTTP/1.1\r\nHost: x\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Content-Length: 0\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("write");
    s
}

/// Reads until `needle` has arrived (or the stream ends); returns everything read.
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut out = Vec::new();
    within("the expected bytes", async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&out).contains(needle) {
            match s.read(&mut buf).await.expect("read") {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn sse_through_hyper_is_authorised_like_the_fast_path() {
    let node = secured(&[]).await;
    let news = publish_n(&node, "news.a", "news", 2).await;
    let secret = publish_n(&node, "secret.x", "secret", 2).await;
    let bearer = format!("Authorization: Bearer {}", token(None, &["news.*"]));
    let resume = |epoch: &str, channel: &str| format!("Last-Event-ID: {epoch},0,{channel}");

    for (headers, status) in [
        (vec![bearer.clone(), resume(&secret, "secret.x")], "403"),
        (vec![resume(&secret, "secret.x")], "401"),
    ] {
        let mut s = sse_via_hyper(&node, "secret.x", &headers).await;
        let mut out = Vec::new();
        within("the refusal and close", s.read_to_end(&mut out))
            .await
            .expect("read");
        let resp = String::from_utf8_lossy(&out);
        assert!(
            resp.starts_with(&format!("HTTP/1.1 {status} ")),
            "{headers:?}: {resp}"
        );
        assert!(!resp.contains("secret-"), "{resp}");
        // hyper's response, not the fast path's (which sends no date header).
        assert!(resp.to_ascii_lowercase().contains("\r\ndate: "), "{resp}");
    }

    let mut s = sse_via_hyper(&node, "news.a", &[bearer, resume(&news, "news.a")]).await;
    let resp = read_until(&mut s, "news-2").await;
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    assert!(resp.to_ascii_lowercase().contains("\r\ndate: "), "{resp}");
    assert!(resp.contains("news-1"), "resumed from the start: {resp}");
}
