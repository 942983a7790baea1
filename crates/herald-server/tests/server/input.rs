//! Valid input in any form a client library produces is accepted, and invalid input gets the
//! documented code and a message naming the input, whichever way it arrives.

use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::{
    Herald,
    clients::{RawWs, Sse, Ws},
    within,
};

/// Sends raw bytes and reads the response until the server closes.
async fn raw(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    within("a response and close", s.read_to_end(&mut out))
        .await
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON body of a raw response.
fn body(response: &str) -> Value {
    let (_, body) = response.split_once("\r\n\r\n").expect("head and body");
    serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON body: {response}"))
}

#[tokio::test]
async fn escaped_json_strings_and_null_data_are_accepted_everywhere() {
    // `--allow-client-publish` bare, as a boolean flag is written.
    let h = Herald::start(&["--allow-client-publish"]).await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=chat%2Froom"), None).await;

    // PHP's json_encode escapes `/`; other encoders escape letters as \u00XX.
    let (status, v) = h
        .post(
            "/v1/publish",
            r#"{"channel":"chat\/room","data":null,"event":"p\u0069ng","idempotency_key":"k\/1"}"#,
        )
        .await;
    assert_eq!((status, &v["channel"]), (200, &json!("chat/room")), "{v}");
    let epoch = v["epoch"].as_str().expect("epoch").to_owned();
    let ev = sse.next_message().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("ping", "null"));

    let (status, v) = h
        .post(
            "/v1/broadcast",
            r#"{"channels":["chat\/room","\u0061"],"data":{"k":"\/"}}"#,
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"][0]["channel"], "chat/room");
    assert_eq!(v["results"][1]["channel"], "a");
    assert_eq!(sse.next_message().await.json(), json!({"k": "/"}));

    // Every WebSocket op and field, escaped.
    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    let first = epoch.chars().next().expect("non-empty epoch");
    let escaped_epoch = format!("\\u{:04x}{}", first as u32, &epoch[1..]);
    ws.send_raw(WsMessage::text(format!(
        r#"{{"\u006fp":"s\u0075bscribe","channel":"chat\/room","since":{{"offset":0,"epoch":"{escaped_epoch}"}},"id":1}}"#
    )))
    .await;
    let v = ws.next().await;
    assert_eq!(
        (&v["type"], &v["channel"], &v["recovered"], &v["id"]),
        (
            &json!("subscribed"),
            &json!("chat/room"),
            &json!(true),
            &json!(1)
        ),
        "{v}"
    );
    assert_eq!(ws.next_message().await["data"], Value::Null, "replayed");
    assert_eq!(ws.next_message().await["data"], json!({"k": "/"}));
    ws.send_raw(WsMessage::text(r#"{"op":"p\u0069ng","id":2}"#))
        .await;
    assert_eq!(ws.next().await, json!({"type": "pong", "id": 2}));
    ws.send_raw(WsMessage::text(
        r#"{"op":"publ\u0069sh","channel":"chat\/room","data":null,"event":"\u0065","idempotency_key":"\u006b","id":3}"#,
    ))
    .await;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        let v = ws.next().await;
        match v["type"].as_str() {
            Some("published") => {
                assert_eq!((&v["id"], &v["offset"]), (&json!(3), &json!(3)), "{v}");
                acked = true;
            }
            Some("message") => {
                assert_eq!(
                    (&v["event"], &v["data"]),
                    (&json!("e"), &Value::Null),
                    "{v}"
                );
                delivered = true;
            }
            _ => panic!("unexpected {v}"),
        }
    }
    ws.send_raw(WsMessage::text(
        r#"{"op":"unsubscribe","channel":"chat\/room","id":4}"#,
    ))
    .await;
    assert_eq!(
        ws.next().await,
        json!({"type": "unsubscribed", "channel": "chat/room", "id": 4})
    );
}

#[tokio::test]
async fn each_bad_field_gets_its_own_code_names_its_input_and_keeps_the_op_id() {
    let h = Herald::start(&[]).await;
    let leak = |m: &str| m.contains("borrowed") || m.contains("struct") || m.contains("Raw");
    for (body, code) in [
        (
            r#"{"channel":"a","data":1,"event":"a\nb"}"#,
            "invalid_event",
        ),
        (r#"{"channel":5,"data":1}"#, "invalid_channel"),
        ("[1]", "invalid_json"),
    ] {
        let (status, v) = h.post("/v1/publish", body).await;
        assert_eq!((status, &v["error"]["code"]), (400, &json!(code)), "{body}");
        let message = v["error"]["message"].as_str().expect("message");
        assert!(!leak(message), "{body}: {message}");
    }

    // A history position is a position, like `epoch`; `limit` is a plain parameter.
    for (query, code) in [
        ("since=abc", "invalid_position"),
        ("since=-1", "invalid_position"),
        ("limit=x", "bad_request"),
    ] {
        let (status, text) = h.get(&format!("/v1/channels/a/history?{query}")).await;
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            (status, &v["error"]["code"]),
            (400, &json!(code)),
            "{query}"
        );
    }

    // The resume token's error names where the token came from.
    let (status, text) = h.get("/v1/sse?channel=a&last_event_id=garbage").await;
    assert_eq!(status, 400);
    assert!(text.contains("last_event_id query parameter"), "{text}");
    let resp = h
        .http
        .get(h.url("/v1/sse?channel=a"))
        .header("last-event-id", "garbage")
        .send()
        .await
        .expect("response");
    let text = resp.text().await.expect("body");
    assert!(text.contains("Last-Event-ID header"), "{text}");

    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    for (op, code) in [
        (
            json!({"op": "subscribe", "channel": "a", "since": "5", "id": 9}),
            "invalid_position",
        ),
        (
            json!({"op": "subscribe", "channel": "a", "since": {"offset": "1", "epoch": "ab"}, "id": 9}),
            "invalid_position",
        ),
        (
            json!({"op": "subscribe", "channel": 5, "id": 9}),
            "invalid_channel",
        ),
        (json!({"op": 5, "id": 9}), "unknown_op"),
    ] {
        ws.send(op.clone()).await;
        let v = ws.next().await;
        assert_eq!(
            (&v["type"], &v["code"], &v["id"]),
            (&json!("error"), &json!(code), &json!(9)),
            "{op}: {v}"
        );
        assert!(!leak(v["message"].as_str().expect("message")), "{v}");
    }
}

#[tokio::test]
async fn repeated_channels_are_deduplicated_before_limits_and_limits_answer_first() {
    let h = Herald::start(&["--max-channels-per-connection", "2"]).await;
    let broadcast = json!({"channels": vec!["same"; 101], "data": 1}).to_string();
    let (status, v) = h.post("/v1/broadcast", &broadcast).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(1), "{v}");

    // Thousands of repeats of two channels are two channels.
    let query = format!("{}channel=b", "channel=a&".repeat(4356));
    let mut sse = Sse::connect(&h.url(&format!("/v1/sse?{query}")), None).await;
    assert_eq!(sse.status, 200);
    for _ in 0..2 {
        assert_eq!(sse.next().await.expect("event").event, "herald.subscribed");
    }

    // One channel too many is refused before anything after it is even parsed.
    let (status, text) = h
        .get("/v1/sse?channel=a&channel=b&channel=c&channel=bad%20name")
        .await;
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        (status, &v["error"]["code"]),
        (400, &json!("limit_exceeded")),
        "{v}"
    );
    let resp = raw(
        &h.addr(),
        b"GET /v1/ws?channel=a&channel=b&channel=c&channel=bad%20name HTTP/1.1\r\nHost: x\r\n\
          Connection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(body(&resp)["error"]["code"], "limit_exceeded", "{resp}");
}

#[tokio::test]
async fn the_sse_fast_path_leaves_ambiguous_heads_to_hyper() {
    let h = Herald::start(&[]).await;
    // Conflicting lengths: hyper refuses them, so the fast path must not serve them either.
    let resp = raw(
        &h.addr(),
        b"GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(
        h.metric("herald_connections", &["transport=\"sse\""]).await,
        0.0
    );
}

#[tokio::test]
async fn a_malformed_request_head_gets_a_json_400_and_nothing_else_notices() {
    let h = Herald::start(&[]).await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=ok"), None).await;
    for request in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/7.0\r\n\r\n",
    ] {
        let resp = raw(&h.addr(), request).await;
        assert!(resp.starts_with("HTTP/1.1 400 "), "{resp}");
        assert!(resp.contains("content-type: application/json"), "{resp}");
        assert_eq!(body(&resp)["error"]["code"], "bad_request", "{resp}");
    }
    h.publish("ok", json!("still fine")).await;
    assert_eq!(sse.next_message().await.json(), json!("still fine"));
}

#[tokio::test]
async fn invalid_websocket_close_frames_get_1002_or_1007() {
    let h = Herald::start(&[]).await;
    let close = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
    let mut cases: Vec<(Vec<u8>, u16)> = [0u16, 999, 1004, 1005, 1006, 1015, 2000, 5000]
        .iter()
        .map(|&code| (close(code, b""), 1002))
        .collect();
    cases.push((vec![0x03], 1002));
    cases.push((close(1000, &[0xff, 0xfe]), 1007));
    cases.push((close(1000, b"bye"), 1000));
    cases.push((close(4000, b""), 1000));
    cases.push((Vec::new(), 1000));
    for (payload, expected) in cases {
        let mut ws = RawWs::connect(&h.addr(), "/v1/ws").await;
        ws.send_frame(0x8, true, &payload).await;
        assert_eq!(ws.read_close_code().await, Some(expected), "{payload:?}");
    }
}

#[tokio::test]
async fn the_authorization_scheme_is_case_insensitive() {
    let h = Herald::start(&["--api-keys", "secret"]).await;
    for (header, status) in [
        ("Bearer secret", 200),
        ("BEARER secret", 200),
        ("bearer  secret", 200),
        ("Basic secret", 401),
        ("Bearer wrong", 401),
    ] {
        let resp = h
            .http
            .post(h.url("/v1/publish"))
            .header("authorization", header)
            .body(r#"{"channel":"a","data":1}"#)
            .send()
            .await
            .expect("response");
        assert_eq!(resp.status().as_u16(), status, "{header}");
    }
}

#[tokio::test]
async fn head_works_wherever_get_serves_a_document() {
    let h = Herald::start(&[]).await;
    for (path, content_type) in [
        ("/", "text/html"),
        ("/herald.js", "text/javascript"),
        ("/metrics", "text/plain"),
    ] {
        let resp = h.http.head(h.url(path)).send().await.expect("response");
        assert_eq!(resp.status(), 200, "{path}");
        let ct = resp.headers()["content-type"].to_str().expect("text");
        assert!(ct.starts_with(content_type), "{path}: {ct}");
        assert!(resp.text().await.expect("body").is_empty(), "{path}");
    }
    let resp = h
        .http
        .post(h.url("/herald.js"))
        .send()
        .await
        .expect("response");
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
}
