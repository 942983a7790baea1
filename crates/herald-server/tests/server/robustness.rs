//! Bad input, slow consumers and dead peers: each gets its documented answer and nobody else
//! notices.

use serde_json::json;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::{
    Herald,
    clients::{RawWs, Sse, Ws},
    within,
};

#[tokio::test]
async fn bad_http_input_gets_json_errors_and_the_server_stays_healthy() {
    let h = Herald::start(&[
        "--max-body-bytes",
        "1000",
        "--max-message-bytes",
        "500",
        "--api-keys",
        "secret",
    ])
    .await;
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=ok"), None).await;
    let auth = |r: reqwest::RequestBuilder| r.header("authorization", "Bearer secret");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            h.http
                .post(h.url("/v1/publish"))
                .body(r#"{"channel":"a","data":1}"#),
            401,
            "unauthorized",
        ),
        (
            h.http
                .post(h.url("/v1/publish"))
                .header("authorization", "Bearer wrong")
                .body(r#"{"channel":"a","data":1}"#),
            401,
            "unauthorized",
        ),
        (
            auth(h.http.post(h.url("/v1/publish"))).body("{not json"),
            400,
            "invalid_json",
        ),
        (
            auth(h.http.post(h.url("/v1/publish")))
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            auth(h.http.post(h.url("/v1/publish"))).body(format!(
                r#"{{"channel":"a","data":"{}"}}"#,
                "x".repeat(2000)
            )),
            413,
            "payload_too_large",
        ),
        (
            auth(h.http.post(h.url("/v1/publish")))
                .body(format!(r#"{{"channel":"a","data":"{}"}}"#, "x".repeat(600))),
            413,
            "payload_too_large",
        ),
        (
            auth(h.http.post(h.url("/v1/publish"))).body(r#"{"channel":"no spaces","data":1}"#),
            400,
            "invalid_channel",
        ),
        (
            auth(h.http.post(h.url("/v1/publish"))).body(r#"{"channel":"a"}"#),
            400,
            "invalid_json",
        ),
        (
            auth(h.http.post(h.url("/v1/broadcast"))).body(r#"{"channels":[],"data":1}"#),
            400,
            "limit_exceeded",
        ),
        (h.http.get(h.url("/v1/publish")), 405, "method_not_allowed"),
        (h.http.get(h.url("/nope")), 404, "not_found"),
        (h.http.get(h.url("/v1/sse")), 400, "bad_request"),
        (
            h.http.get(h.url("/v1/sse?channel=bad%20name")),
            400,
            "invalid_channel",
        ),
        (
            h.http
                .get(h.url("/v1/sse?channel=a"))
                .header("last-event-id", "garbage"),
            400,
            "invalid_position",
        ),
        (h.http.get(h.url("/v1/ws")), 400, "bad_request"),
        (
            h.http.get(h.url("/v1/channels/bad%20name/history")),
            400,
            "invalid_channel",
        ),
        (
            h.http.get(h.url("/v1/channels/a/history?since=-1")),
            400,
            "invalid_position",
        ),
    ];
    for (req, status, code) in cases {
        let resp = within("request", req.send()).await.expect("response");
        assert_eq!(resp.status().as_u16(), status);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let v: serde_json::Value = resp.json().await.expect("JSON error body");
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    let resp = auth(h.http.post(h.url("/v1/publish")))
        .body(r#"{"channel":"ok","data":"still fine"}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 200);
    assert_eq!(sse.next_message().await.json(), json!("still fine"));
    for limit in ["max_body_bytes", "max_message_bytes"] {
        let filter = format!("limit=\"{limit}\"");
        let tripped = h.metric("herald_limit_rejections_total", &[&filter]).await;
        assert_eq!(tripped, 1.0, "{limit}");
    }
}

#[tokio::test]
async fn bad_websocket_input_gets_error_frames_or_documented_closes() {
    let h = Herald::start(&[
        "--max-ws-frame-bytes",
        "2048",
        "--max-channels-per-connection",
        "2",
    ])
    .await;
    let mut watcher = Ws::connect(&h.ws_url("/v1/ws?channel=w")).await;
    watcher.next().await;

    let mut ws = Ws::connect(&h.ws_url("/v1/ws")).await;
    for (op, code) in [
        (json!({"op": "dance"}), "unknown_op"),
        (json!({"op": "subscribe"}), "invalid_json"),
        (
            json!({"op": "subscribe", "channel": "x y"}),
            "invalid_channel",
        ),
        (
            json!({"op": "subscribe", "channel": "x", "since": {"offset": 1, "epoch": "no-dashes"}}),
            "invalid_position",
        ),
        (
            json!({"op": "unsubscribe", "channel": "never"}),
            "bad_request",
        ),
    ] {
        ws.send(op).await;
        let v = ws.next().await;
        assert_eq!(
            (v["type"].as_str(), v["code"].as_str()),
            (Some("error"), Some(code)),
            "{v}"
        );
    }
    ws.send_raw(WsMessage::text("{not json")).await;
    assert_eq!(ws.next().await["code"], "invalid_json");
    ws.send_raw(WsMessage::binary(vec![1u8, 2, 3])).await;
    assert_eq!(ws.next().await["code"], "bad_request");
    ws.subscribe("one", None).await;
    ws.subscribe("two", None).await;
    ws.send(json!({"op": "subscribe", "channel": "three"}))
        .await;
    assert_eq!(ws.next().await["code"], "limit_exceeded");
    ws.send(json!({"op": "subscribe", "channel": "one"})).await;
    assert_eq!(ws.next().await["code"], "bad_request", "double subscribe");
    ws.send(json!({"op": "unsubscribe", "channel": "one", "id": 3}))
        .await;
    assert_eq!(
        ws.next().await,
        json!({"type": "unsubscribed", "channel": "one", "id": 3})
    );

    // Invalid UTF-8 in a text frame: close 1007.
    let mut raw = RawWs::connect(&h.addr(), "/v1/ws").await;
    raw.send_frame(0x1, true, &[0xff, 0xfe, 0xfd]).await;
    assert_eq!(raw.read_close_code().await, Some(1007));
    // Too big: close 1009, also when split over continuation frames.
    let mut raw = RawWs::connect(&h.addr(), "/v1/ws").await;
    raw.send_frame(0x1, true, &vec![b'a'; 4096]).await;
    assert_eq!(raw.read_close_code().await, Some(1009));
    let mut raw = RawWs::connect(&h.addr(), "/v1/ws").await;
    raw.send_frame(0x1, false, &vec![b' '; 1500]).await;
    raw.send_frame(0x0, true, &vec![b' '; 1500]).await;
    assert_eq!(raw.read_close_code().await, Some(1009));
    // A continuation with nothing to continue: protocol error.
    let mut raw = RawWs::connect(&h.addr(), "/v1/ws").await;
    raw.send_frame(0x0, true, b"x").await;
    assert_eq!(raw.read_close_code().await, Some(1002));
    // A fragmented message within limits works.
    let mut raw = RawWs::connect(&h.addr(), "/v1/ws").await;
    raw.send_frame(0x1, false, br#"{"op":"pi"#).await;
    raw.send_frame(0x0, true, br#"ng","id":5}"#).await;
    let (op, payload) = raw.read_frame().await.expect("pong");
    assert_eq!(
        (
            op,
            serde_json::from_slice::<serde_json::Value>(&payload).expect("json")
        ),
        (1, json!({"type":"pong","id":5}))
    );

    // Nobody else noticed.
    h.publish("w", json!("fine")).await;
    assert_eq!(watcher.next_message().await["data"], "fine");
    assert_eq!(h.get("/healthz").await.0, 200);
    for (limit, tripped) in [
        ("max_channels_per_connection", 1.0),
        ("max_ws_frame_bytes", 2.0),
    ] {
        let filter = format!("limit=\"{limit}\"");
        let got = h.metric("herald_limit_rejections_total", &[&filter]).await;
        assert_eq!(got, tripped, "{limit}");
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_others_get_everything() {
    let h = Herald::start(&[
        "--queue-max-bytes",
        "262144",
        "--queue-max-messages",
        "100000",
    ])
    .await;
    // A WebSocket and an SSE client that never read after connecting.
    let stuck_ws = RawWs::connect(&h.addr(), "/v1/ws?channel=flood").await;
    let mut stuck_sse = TcpStream::connect(h.addr()).await.expect("connect");
    stuck_sse
        .write_all(
            format!(
                "GET /v1/sse?channel=flood HTTP/1.1\r\nHost: {}\r\n\r\n",
                h.addr()
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut good = Ws::connect(&h.ws_url("/v1/ws?channel=flood")).await;
    good.next().await;
    h.wait_metric("herald_subscriptions", &[], |v| v == 3.0)
        .await;
    let rss_before = h.rss_kib();

    let payload = "x".repeat(16 * 1024);
    const N: u64 = 1500; // ~24 MiB per subscriber: far beyond socket buffers plus the queue bound
    let reader = tokio::spawn(async move {
        for i in 1..=N {
            let m = good.next_message().await;
            assert_eq!(m["offset"].as_u64(), Some(i));
        }
    });
    for _ in 0..N {
        h.publish("flood", json!(payload)).await;
    }
    reader
        .await
        .expect("the reading subscriber got every message in order");
    h.wait_metric(
        "herald_disconnects_total",
        &["reason=\"slow_consumer\""],
        |v| v >= 2.0,
    )
    .await;
    h.wait_metric("herald_subscriptions", &[], |v| v <= 1.0)
        .await;
    let grown_mib = h.rss_kib().saturating_sub(rss_before) / 1024;
    // Without the bound the two stuck clients would pin ~48 MiB; with it they cost their queues.
    assert!(grown_mib < 32, "server RSS grew by {grown_mib} MiB");
    drop(stuck_ws);
}

#[tokio::test]
/// A client that closes its socket is unsubscribed without any publish: the server notices the
/// hang-up (EOF) on its own; a peer that vanished without closing is found by the next heartbeat
/// write.
async fn vanished_sse_clients_are_reaped() {
    let h = Herald::start(&["--sse-heartbeat", "100ms"]).await;
    let mut s = TcpStream::connect(h.addr()).await.expect("connect");
    s.write_all(
        format!(
            "GET /v1/sse?channel=hb HTTP/1.1\r\nHost: {}\r\n\r\n",
            h.addr()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    h.wait_metric("herald_connections", &["transport=\"sse\""], |v| v == 1.0)
        .await;
    drop(s);
    // No publish happens: nothing but the server's own watch can find the dead socket.
    h.wait_metric("herald_connections", &["transport=\"sse\""], |v| v == 0.0)
        .await;
    h.wait_metric("herald_subscriptions", &[], |v| v == 0.0)
        .await;
}

#[tokio::test]
async fn websocket_peers_that_stop_answering_pings_are_closed() {
    let h = Herald::start(&["--ws-ping-interval", "100ms", "--ws-ping-timeout", "100ms"]).await;
    // A raw client that never answers pings.
    let mut zombie = RawWs::connect(&h.addr(), "/v1/ws?channel=z").await;
    let mut saw_ping = false;
    let code = loop {
        match zombie.read_frame().await {
            Some((0x9, _)) => saw_ping = true,
            Some((0x8, p)) => break p.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])),
            Some(_) => {}
            None => break None,
        }
    };
    assert!(saw_ping, "the server pinged before giving up");
    assert_eq!(code, Some(4001));
    h.wait_metric(
        "herald_disconnects_total",
        &["reason=\"ping_timeout\""],
        |v| v == 1.0,
    )
    .await;

    // A client that answers (tungstenite auto-pongs while reading) stays connected.
    let mut alive = Ws::connect(&h.ws_url("/v1/ws?channel=z")).await;
    alive.next().await;
    h.wait_metric("herald_connections", &["transport=\"ws\""], |v| v == 1.0)
        .await;
    for i in 0..5 {
        // Each round trip spans several ping intervals' worth of server pings.
        alive.send(json!({"op": "ping", "id": i})).await;
        assert_eq!(alive.next().await["type"], "pong");
        h.publish("z", json!(i)).await;
        assert_eq!(alive.next_message().await["data"], i);
    }
}

#[tokio::test]
async fn rfc6455_violations_and_ping_floods_are_closed_while_others_receive_everything() {
    let h = Herald::start(&["--ws-message-rate", "10", "--ws-message-burst", "20"]).await;
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=r")).await;
    subscriber.next().await;
    let mut published = 0u64;

    // Each violation on its own connection, each with its close code; a publish after each.
    let cases: [(&str, u16); 7] = [
        ("unmasked client frame", 1002),
        ("reserved bit set", 1002),
        ("fragmented ping", 1002),
        ("ping longer than 125 bytes", 1002),
        ("unknown opcode", 1002),
        ("new message inside a fragmented one", 1002),
        ("a frame header claiming 1 TiB", 1009),
    ];
    for (what, code) in cases {
        let mut raw = RawWs::connect(&h.addr(), "/v1/ws?channel=r").await;
        assert_eq!(raw.read_frame().await.map(|f| f.0), Some(0x1), "subscribed");
        match what {
            "unmasked client frame" => raw
                .stream
                .write_all(&[0x81, 0x02, b'{', b'}'])
                .await
                .expect("write"),
            "reserved bit set" => raw.send_frame(0x40 | 0x1, true, b"{}").await,
            "fragmented ping" => raw.send_frame(0x9, false, b"p").await,
            "ping longer than 125 bytes" => raw.send_frame(0x9, true, &[b'p'; 126]).await,
            "unknown opcode" => raw.send_frame(0x3, true, b"x").await,
            "new message inside a fragmented one" => {
                raw.send_frame(0x1, false, br#"{"op":"#).await;
                raw.send_frame(0x1, true, br#"{"op":"ping"}"#).await;
            }
            _ => {
                let mut header = vec![0x81, 0x80 | 127];
                header.extend_from_slice(&(1u64 << 40).to_be_bytes());
                raw.stream.write_all(&header).await.expect("write");
            }
        }
        assert_eq!(raw.read_close_code().await, Some(code), "{what}");
        h.publish("r", json!(published)).await;
        published += 1;
    }

    // A ping flood: pongs up to the burst, then no pongs, then close 4029.
    let mut flood = RawWs::connect(&h.addr(), "/v1/ws").await;
    let pings: Vec<u8> = (0..200)
        .flat_map(|_| RawWs::frame(0x9, true, b"flood"))
        .collect();
    // The server may close before it has read them all: a failed write is part of the test.
    let _ = flood.stream.write_all(&pings).await;
    let (mut pongs, mut close) = (0, None);
    while let Some((op, payload)) = flood.read_frame().await {
        match op {
            0xA => pongs += 1,
            0x8 => {
                close = payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(close, Some(4029));
    assert!((20..200).contains(&pongs), "{pongs} pongs");
    h.publish("r", json!(published)).await;
    published += 1;

    for i in 0..published {
        let m = subscriber.next_message().await;
        assert_eq!(
            (m["offset"].as_u64(), m["data"].as_u64()),
            (Some(i + 1), Some(i))
        );
    }
    h.wait_metric(
        "herald_disconnects_total",
        &["reason=\"protocol_error\""],
        |v| v >= 7.0,
    )
    .await;
    h.wait_metric(
        "herald_disconnects_total",
        &["reason=\"rate_limited\""],
        |v| v == 1.0,
    )
    .await;
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"max_ws_frame_bytes\""]
        )
        .await,
        1.0
    );
}
