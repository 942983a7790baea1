//! Browsers: the `Origin` allow-list for WebSocket upgrades and CORS for SSE, history and
//! publish.

use serde_json::json;
use tokio::net::TcpStream;

use crate::support::{
    Herald,
    clients::Ws,
    raw::{RawResponse, exchange, head_only, upgrade_request},
};

const ALLOWED: &str = "https://app.example.com,https://*.example.org";

/// The response to an upgrade request from `origin`, and the socket (a WebSocket if upgraded).
async fn upgrade(h: &Herald, origin: Option<&str>) -> (RawResponse, TcpStream) {
    let mut s = TcpStream::connect(h.addr()).await.expect("connect");
    let extra = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let request = upgrade_request(&h.addr(), "/v1/ws?channel=c", &extra);
    let resp = exchange(&mut s, &request).await.expect("a response");
    (resp, s)
}

#[tokio::test]
async fn websocket_upgrades_from_other_origins_get_403_before_the_upgrade() {
    let h = Herald::start(&["--allowed-origins", ALLOWED]).await;
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=c")).await;
    subscriber.next().await;
    let own = format!("http://{}", h.addr());
    let mut sockets = Vec::new();
    for origin in [
        Some("https://app.example.com"),
        Some("https://a.b.example.org"),
        Some(own.as_str()), // a page served by the node itself
        None,               // not a browser
    ] {
        let (resp, socket) = upgrade(&h, origin).await;
        assert_eq!(resp.status, 101, "{origin:?}: {resp:?}");
        sockets.push(socket);
    }
    let mut refused = 0.0;
    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.io",
        "https://evilapp.example.com",
        "https://example.org",
        "http://app.example.com",
        "null",
    ] {
        let (resp, _) = upgrade(&h, Some(origin)).await;
        assert_eq!(resp.status, 403, "{origin}: {resp:?}");
        assert_eq!(resp.json()["error"]["code"], "forbidden", "{origin}");
        assert_eq!(resp.header("access-control-allow-origin"), None, "{origin}");
        refused += 1.0;
    }
    // The refused pages got no WebSocket (only the subscriber and the four allowed ones are
    // open), and the subscriber is unaffected.
    h.wait_metric("herald_connections", &["transport=\"ws\""], |v| v == 5.0)
        .await;
    assert_eq!(
        h.metric("herald_connections_accepted_total", &["transport=\"ws\""])
            .await,
        5.0
    );
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"allowed_origins\""]
        )
        .await,
        refused
    );
    h.publish("c", json!("hi")).await;
    assert_eq!(subscriber.next_message().await["data"], "hi");
}

async fn request(h: &Herald, request: &str) -> RawResponse {
    let mut s = TcpStream::connect(h.addr()).await.expect("connect");
    exchange(&mut s, request).await.expect("a response")
}

fn cors_of(resp: &RawResponse) -> (Option<&str>, Option<&str>) {
    (
        resp.header("access-control-allow-origin"),
        resp.header("access-control-allow-credentials"),
    )
}

#[tokio::test]
async fn cors_answers_preflights_and_only_allowed_origins() {
    let h = Herald::start(&["--allowed-origins", ALLOWED]).await;
    let addr = h.addr();
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /v1/publish HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\n\
             Access-Control-Request-Headers: authorization, content-type\r\n\r\n"
        )
    };
    let ok = request(&h, &preflight("https://app.example.com")).await;
    assert_eq!(ok.status, 204, "{ok:?}");
    assert_eq!(
        cors_of(&ok),
        (Some("https://app.example.com"), Some("true"))
    );
    assert_eq!(ok.header("access-control-allow-methods"), Some("POST"));
    let allowed_headers = ok.header("access-control-allow-headers").expect("headers");
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));
    assert_eq!(ok.header("vary"), Some("origin"));
    let evil = request(&h, &preflight("https://evil.example")).await;
    assert_eq!(evil.status, 403, "{evil:?}");
    assert_eq!(cors_of(&evil), (None, None));

    // The actual requests: publish, history and SSE (the fast path writes its own head).
    let publish = |origin: &str| {
        let body = r#"{"channel":"news","data":1}"#;
        format!(
            "POST /v1/publish HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let resp = request(&h, &publish("https://x.example.org")).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        cors_of(&resp),
        (Some("https://x.example.org"), Some("true"))
    );
    let resp = request(&h, &publish("https://evil.example")).await;
    assert_eq!(resp.status, 403, "{resp:?}");
    assert_eq!(cors_of(&resp), (None, None));

    let get = |path: &str, origin: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nconnection: close\r\n\r\n"
        )
    };
    let resp = request(
        &h,
        &get("/v1/channels/news/history", "https://app.example.com"),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["messages"][0]["data"], 1);
    assert_eq!(
        cors_of(&resp),
        (Some("https://app.example.com"), Some("true"))
    );
    let resp = request(
        &h,
        &get("/v1/channels/news/history", "https://evil.example"),
    )
    .await;
    assert_eq!((resp.status, cors_of(&resp)), (403, (None, None)));
    // Without Origin: no CORS headers, but caches learn that responses vary by origin.
    let resp = request(
        &h,
        &format!(
            "GET /v1/channels/news/history HTTP/1.1\r\nHost: {addr}\r\nconnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!((resp.status, cors_of(&resp)), (200, (None, None)));
    assert_eq!(resp.header("vary"), Some("origin"));

    let mut sse = TcpStream::connect(h.addr()).await.expect("connect");
    let resp = head_only(
        &mut sse,
        &get("/v1/sse?channel=news", "https://app.example.com"),
    )
    .await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(
        cors_of(&resp),
        (Some("https://app.example.com"), Some("true"))
    );
    assert_eq!(resp.header("vary"), Some("origin"));
    let mut evil = TcpStream::connect(h.addr()).await.expect("connect");
    let resp = head_only(
        &mut evil,
        &get("/v1/sse?channel=news", "https://evil.example"),
    )
    .await;
    assert_eq!((resp.status, cors_of(&resp)), (403, (None, None)));
}

#[tokio::test]
async fn an_open_node_lets_any_origin_in_without_credentials() {
    let h = Herald::start(&[]).await;
    let addr = h.addr();
    let (resp, _) = upgrade(&h, Some("https://anywhere.example")).await;
    assert_eq!(resp.status, 101);
    let mut s = TcpStream::connect(h.addr()).await.expect("connect");
    let resp = exchange(
        &mut s,
        &format!(
            "GET /v1/channels/x/history HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://anywhere.example\r\nconnection: close\r\n\r\n"
        ),
    )
    .await
    .expect("response");
    assert_eq!((resp.status, cors_of(&resp)), (200, (Some("*"), None)));
    let mut s = TcpStream::connect(h.addr()).await.expect("connect");
    let resp = head_only(
        &mut s,
        &format!(
            "GET /v1/sse?channel=x HTTP/1.1\r\nHost: {addr}\r\nOrigin: https://anywhere.example\r\n\r\n"
        ),
    )
    .await;
    assert_eq!((resp.status, cors_of(&resp)), (200, (Some("*"), None)));
}
