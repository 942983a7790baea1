//! HTTP/2 with prior knowledge (h2c) on a plain port: per-stream slow consumers, streams that
//! are never read, rapid-reset floods, oversized headers and idle connections. (ALPN over TLS is
//! in tls.rs; both reach the same HTTP/2 server.)

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::net::TcpStream;

use crate::support::{Herald, clients::Sse, within};

/// An h2c client: every request on one connection, `window` bytes of flow-control window per
/// stream (a stream whose body is not read stops at that).
fn h2c_client(window: u32) -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_initial_stream_window_size(window)
        .http2_initial_connection_window_size(16 << 20)
        .build()
        .expect("client")
}

/// An h2 (crate) connection to `addr`, its driver running in a task.
async fn h2_connect(
    addr: &str,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = within(
        "an h2 handshake",
        h2::client::Builder::new()
            .initial_window_size(window)
            .handshake::<_, Bytes>(tcp),
    )
    .await
    .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

fn get(addr: &str, path: &str) -> http::Request<()> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_stops_reading_is_ended_as_a_slow_consumer_while_the_others_keep_receiving() {
    let h = Herald::start(&[
        "--queue-max-messages",
        "8",
        "--max-message-bytes",
        "8192",
        "--queue-max-bytes",
        "65536",
    ])
    .await;
    let client = h2c_client(64 * 1024);
    let url = h.url("/v1/sse?channel=slow");
    let mut stuck = Sse::connect_on(&client, &url, None).await;
    assert_eq!(stuck.version, reqwest::Version::HTTP_2);
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut sse = Sse::connect_on(&client, &url, None).await;
        sse.next().await.expect("subscribed");
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let m = sse.next_message().await.json();
                if m == json!("end") {
                    return got;
                }
                got.push(m["n"].as_u64().expect("n"));
            }
        }));
    }
    assert_eq!(
        h.metric("herald_http_connections_total", &["protocol=\"h2\""])
            .await,
        1.0,
        "five streams, one connection"
    );

    // 4 KiB messages: the stuck stream's window (64 KiB), the server's send buffer and its
    // outbox (8 messages) fill up, and the stream is reset as a slow consumer.
    let pad = "x".repeat(4000);
    let mut n = 0;
    while h
        .metric("herald_disconnects_total", &["reason=\"slow_consumer\""])
        .await
        == 0.0
    {
        for _ in 0..10 {
            n += 1;
            h.publish("slow", json!({"n": n, "pad": pad})).await;
        }
        assert!(n < 2000, "the unread stream was never cut off");
    }
    // The connection and its other streams go on.
    for _ in 0..10 {
        n += 1;
        h.publish("slow", json!({"n": n, "pad": pad})).await;
    }
    h.publish("slow", json!("end")).await;
    for reader in readers {
        let got = within("a reader", reader).await.expect("reader task");
        assert_eq!(got, (1..=n).collect::<Vec<_>>(), "every message, in order");
    }
    // The stuck stream holds what fitted in its window, then ends (reset).
    let mut seen = 0;
    while let Some(ev) = stuck.next().await {
        if ev.event == "message" {
            seen += 1;
        }
    }
    assert!(
        seen < n,
        "the stuck stream was ended before the end ({seen} of {n})"
    );
    assert_eq!(h.metric("herald_h2_streams", &[]).await, 0.0);
    assert_eq!(
        h.metric("herald_disconnects_total", &["reason=\"slow_consumer\""])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_resets_unread_streams_and_oversized_headers_leave_the_node_healthy() {
    let h = Herald::start(&[
        "--h2-max-concurrent-streams",
        "20",
        "--queue-max-messages",
        "8",
    ])
    .await;
    let addr = h.addr();
    // A normal subscriber on its own (HTTP/1.1) connection, watched throughout.
    let mut sse = Sse::connect(&h.url("/v1/sse?channel=calm"), None).await;
    sse.next().await.expect("subscribed");

    // Rapid reset: open streams and cancel them at once, thousands of times.
    let (mut flood, flood_conn) = h2_connect(&addr, 65_535).await;
    let mut sent = 0;
    for _ in 0..5000 {
        let Ok(ready) = within("the flood connection", flood.clone().ready()).await else {
            break; // the server closed it (GOAWAY)
        };
        flood = ready;
        let Ok((_resp, mut body)) = flood.send_request(get(&addr, "/v1/sse?channel=flood"), false)
        else {
            break;
        };
        body.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    drop(flood);
    // h2 closes a connection whose client resets more than 20 streams before they are served
    // (GOAWAY ENHANCE_YOUR_CALM "too_many_resets"); here after some hundreds. Whether and when
    // depends on how the frames interleave with the server's reads, so only the kind of a
    // GOAWAY is checked.
    let ended = within("the flood connection to end", flood_conn)
        .await
        .expect("connection task");
    // (Or the socket reset under the client's writes after the GOAWAY.)
    if let Err(e) = ended
        && e.is_go_away()
    {
        assert_eq!(e.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{e}");
    }
    assert!(sent > 0);

    // Streams that are opened and never read (no flow-control window at all).
    let (mut unread, _unread_conn) = h2_connect(&addr, 0).await;
    let mut pending = Vec::new();
    for _ in 0..20 {
        unread = within("a stream slot", unread.ready())
            .await
            .expect("ready");
        let (resp, _body) = unread
            .send_request(get(&addr, "/v1/sse?channel=calm"), true)
            .expect("send");
        pending.push(resp);
    }
    for resp in pending.iter_mut() {
        assert_eq!(
            within("headers", resp).await.expect("response").status(),
            200
        );
    }

    // Headers larger than h2_max_header_bytes (16 KiB): 431 for that stream, the connection
    // goes on; far larger (over four times the limit): the connection is closed.
    let (mut big, big_conn) = h2_connect(&addr, 65_535).await;
    for (size, status) in [(20 * 1024, 431), (0, 200)] {
        let mut req = get(&addr, "/healthz");
        req.headers_mut()
            .insert("x-big", "a".repeat(size).parse().expect("value"));
        big = within("ready", big.ready()).await.expect("ready");
        let (resp, _) = big.send_request(req, true).expect("send");
        assert_eq!(
            within("a response", resp).await.expect("response").status(),
            status
        );
    }
    let mut req = get(&addr, "/healthz");
    req.headers_mut()
        .insert("x-big", "a".repeat(100 * 1024).parse().expect("value"));
    big = within("ready", big.ready()).await.expect("ready");
    let (resp, _) = big.send_request(req, true).expect("send");
    let err = within("GOAWAY", resp).await.expect_err("connection closed");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    let _ = within("the connection to end", big_conn).await;

    // Meanwhile the node serves everyone else: every message reaches the normal subscriber,
    // while the unread streams overflow and are reset one by one.
    for n in 1..=30 {
        h.publish("calm", json!({"n": n})).await;
    }
    for n in 1..=30 {
        assert_eq!(sse.next_message().await.json(), json!({"n": n}));
    }
    h.wait_metric(
        "herald_disconnects_total",
        &["reason=\"slow_consumer\""],
        |v| v >= 20.0,
    )
    .await;
    // Nothing of the flood or the unread streams is left behind.
    h.wait_metric("herald_subscriptions", &[], |v| v == 1.0)
        .await;
    h.wait_metric("herald_h2_streams", &[], |v| v <= 1.0).await;
    assert_eq!(h.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_connections_without_a_stream_or_left_idle_are_closed() {
    let h = Herald::start(&[
        "--header-read-timeout",
        "500ms",
        "--keep-alive-timeout",
        "500ms",
    ])
    .await;
    let addr = h.addr();
    // The preface and settings, then no request: closed at the header read timeout.
    let (silent, conn) = h2_connect(&addr, 65_535).await;
    let _ = within("the silent h2 connection to be closed", conn).await;
    drop(silent);
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"header_read_timeout\""]
        )
        .await,
        1.0
    );

    // One request, then idle: closed after the keep-alive timeout.
    let (mut idle, conn) = h2_connect(&addr, 65_535).await;
    idle = within("ready", idle.ready()).await.expect("ready");
    let (resp, _) = idle
        .send_request(get(&addr, "/healthz"), true)
        .expect("send");
    assert_eq!(within("200", resp).await.expect("response").status(), 200);
    let _ = within("the idle h2 connection to be closed", conn).await;
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"keep_alive_timeout\""]
        )
        .await,
        1.0
    );

    // WebSocket stays HTTP/1.1: over h2 the upgrade route says what it needs.
    let client = h2c_client(65_535);
    let resp = client.get(h.url("/v1/ws")).send().await.expect("GET");
    assert_eq!(
        (resp.version(), resp.status().as_u16()),
        (reqwest::Version::HTTP_2, 400)
    );
    let v: Value = resp.json().await.expect("JSON");
    assert_eq!(v["error"]["code"], "bad_request");

    // An SSE stream is not idle, however quiet.
    let mut sse = Sse::connect_on(&client, &h.url("/v1/sse?channel=quiet"), None).await;
    sse.next().await.expect("subscribed");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    h.publish("quiet", json!("still open")).await;
    assert_eq!(sse.next_message().await.json(), json!("still open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_every_http2_stream_to_reconnect_and_ends_it() {
    let h = Herald::start(&["--drain-window", "300ms"]).await;
    let client = h2c_client(65_535);
    let mut streams = Vec::new();
    for channel in ["d1", "d2"] {
        let url = h.url(&format!("/v1/sse?channel={channel}"));
        let mut sse = Sse::connect_on(&client, &url, None).await;
        sse.next().await.expect("subscribed");
        streams.push(sse);
    }
    h.terminate();
    // Each stream is told to reconnect (at its own moment in the window), then ends.
    for sse in &mut streams {
        let ev = sse.next().await.expect("the closing event");
        assert_eq!(ev.event, "herald.reconnect");
        assert_eq!(ev.json()["code"], "draining");
        assert!(sse.next().await.is_none(), "the stream ends");
    }
}
