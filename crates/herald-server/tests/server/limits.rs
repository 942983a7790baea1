//! Connection limits and timeouts: each trips with its documented response and metric while a
//! normal subscriber on the same node keeps receiving.

use std::time::Duration;

use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{
    Herald, Launch,
    clients::Ws,
    raw::{RawResponse, connect_from, exchange, head_only, read_response, until_closed},
    within,
};

/// Sends `head` one byte every 50 ms (a slowloris) until the server closes the connection;
/// returns how many bytes got out. Panics if the whole head was sent.
async fn trickle(mut stream: TcpStream, head: String) -> usize {
    let (mut read, mut write) = stream.split();
    let closed = async {
        let mut buf = [0u8; 256];
        while let Ok(1..) = read.read(&mut buf).await {}
    };
    tokio::pin!(closed);
    for (sent, byte) in head.bytes().enumerate() {
        // The pace of the attack, not a wait for an event.
        tokio::select! {
            () = &mut closed => return sent,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if write.write_all(&[byte]).await.is_err() {
            return sent;
        }
    }
    panic!(
        "the server read a {}-byte head sent over 50 ms a byte",
        head.len()
    );
}

fn padded_head(request_line: &str) -> String {
    format!(
        "{request_line}\r\nHost: herald\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(200)
    )
}

#[tokio::test]
async fn silent_sockets_and_slowloris_heads_are_closed_at_the_header_read_timeout() {
    let h = Herald::start(&[
        "--header-read-timeout",
        "300ms",
        "--keep-alive-timeout",
        "300ms",
    ])
    .await;
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=t")).await;
    subscriber.next().await;
    h.publish("t", json!(1)).await;

    // A socket that never sends: the SSE fast path's peek gives up at the deadline.
    let mut silent = TcpStream::connect(h.addr()).await.expect("connect");
    // Heads sent a byte at a time: past the first byte hyper reads them, and only its timer
    // (which needs a timer on the connection builder) ends them.
    let slow_sse = tokio::spawn(trickle(
        TcpStream::connect(h.addr()).await.expect("connect"),
        padded_head("GET /v1/sse?channel=t HTTP/1.1"),
    ));
    let slow_publish = tokio::spawn(trickle(
        TcpStream::connect(h.addr()).await.expect("connect"),
        padded_head("POST /v1/publish HTTP/1.1"),
    ));
    assert_eq!(
        until_closed(&mut silent).await,
        b"",
        "closed without a response"
    );
    let sent = slow_sse.await.expect("task");
    assert!(sent > 0 && sent < 100, "closed mid-head after {sent} bytes");
    let sent = slow_publish.await.expect("task");
    assert!(sent > 0 && sent < 100, "closed mid-head after {sent} bytes");
    h.publish("t", json!(2)).await;

    // A keep-alive connection idle after its request is closed too.
    let mut idle = TcpStream::connect(h.addr()).await.expect("connect");
    let resp = exchange(
        &mut idle,
        &format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", h.addr()),
    )
    .await
    .expect("response");
    assert_eq!(resp.status, 200);
    assert_eq!(until_closed(&mut idle).await, b"");
    h.publish("t", json!(3)).await;

    for i in 1..=3 {
        assert_eq!(subscriber.next_message().await["data"], i);
    }
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"header_read_timeout\""]
        )
        .await,
        3.0
    );
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"keep_alive_timeout\""]
        )
        .await,
        1.0
    );
}

fn sse_request(addr: &str, channel: &str, extra: &str) -> String {
    format!("GET /v1/sse?channel={channel} HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n")
}

fn assert_refused(resp: &RawResponse, status: u16, code: &str) {
    assert_eq!(resp.status, status, "{resp:?}");
    assert_eq!(resp.json()["error"]["code"], code, "{resp:?}");
    let retry: u64 = resp
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!(retry >= 1);
}

#[tokio::test]
async fn a_full_node_refuses_new_streams_but_still_serves_requests() {
    // 3 connections, and a reserve of 8 for plain requests. (Connections close asynchronously
    // on the server, so at this scale a request may find the node full for a moment: scrapes and
    // publishes below are retried like a client would.)
    let h = Herald::start(&["--max-connections", "3"]).await;
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=full")).await;
    subscriber.next().await;
    let _idle: Vec<TcpStream> = vec![
        TcpStream::connect(h.addr()).await.expect("connect"),
        TcpStream::connect(h.addr()).await.expect("connect"),
    ];
    // The scrape's own connection is the fourth.
    h.wait_metric("herald_client_sockets", &[], |v| v == 4.0)
        .await;
    h.wait_metric("herald_max_connections", &[], |v| v == 3.0)
        .await;

    // Streams on the reserve connection: 503 over_capacity.
    let mut s = TcpStream::connect(h.addr()).await.expect("connect");
    let resp = exchange(&mut s, &sse_request(&h.addr(), "full", ""))
        .await
        .expect("response");
    assert_refused(&resp, 503, "over_capacity");
    drop(s);
    let mut ws = TcpStream::connect(h.addr()).await.expect("connect");
    let upgrade = crate::support::raw::upgrade_request(&h.addr(), "/v1/ws", "");
    let resp = exchange(&mut ws, &upgrade).await.expect("response");
    assert_refused(&resp, 503, "over_capacity");
    drop(ws);
    // A publish is served on the reserve.
    h.publish_retrying("full", json!("through the reserve"), "k1")
        .await;
    assert_eq!(
        subscriber.next_message().await["data"],
        "through the reserve"
    );

    // Once the reserve is taken too, a socket is answered at accept with the same 503.
    let health = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", h.addr());
    let mut kept = Vec::new();
    let refused = within("the reserve to fill", async {
        loop {
            let mut s = TcpStream::connect(h.addr()).await.expect("connect");
            let resp = exchange(&mut s, &health).await.expect("response");
            if resp.status != 200 {
                return resp;
            }
            kept.push(s); // kept alive, holding its place
        }
    })
    .await;
    assert_refused(&refused, 503, "over_capacity");
    assert!(kept.len() <= 8, "the reserve is 8: {} kept", kept.len());
    drop(kept);
    h.wait_metric(
        "herald_limit_rejections_total",
        &["limit=\"max_connections\""],
        |v| v >= 3.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_sockets_against_max_connections_500() {
    herald_server::limits::fds::raise_open_file_limit();
    let h = Herald::start(&[
        "--max-connections",
        "500",
        "--header-read-timeout",
        "3s",
        "--allow-client-publish",
        "true",
    ])
    .await;
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=f")).await;
    subscriber.next().await;
    let mut publisher = Ws::connect(&h.ws_url("/v1/ws")).await;

    // Each idle socket waits for what the server does with it: accepted (up to max_connections
    // and its reserve of 8), a silent close at the header read timeout; refused, an answer
    // `503 over_capacity`, or, while 100 refusals are already being answered, a silent close.
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(h.addr()).await.expect("connect");
        sockets.push(tokio::spawn(async move {
            let got = until_closed(&mut s).await;
            String::from_utf8(got).expect("text")
        }));
    }
    // Meanwhile the existing connections are served: publish over the WebSocket (no new
    // connection could get in) and receive everything.
    for i in 0..10 {
        publisher
            .send(json!({"op": "publish", "channel": "f", "data": i}))
            .await;
        assert_eq!(publisher.next().await["type"], "published");
    }
    for i in 0..10 {
        assert_eq!(subscriber.next_message().await["data"], i);
    }
    let (mut answered, mut silent) = (0, 0);
    for s in sockets {
        let got = within("an idle socket to end", s).await.expect("task");
        if got.is_empty() {
            silent += 1;
        } else {
            assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
            assert!(got.contains("\r\nretry-after: 5\r\n"), "{got}");
            assert!(got.contains(r#""code":"over_capacity""#), "{got}");
            answered += 1;
        }
    }
    assert!(
        answered >= 50,
        "{answered} answered 503, {silent} closed silently"
    );
    let refused = h
        .metric(
            "herald_limit_rejections_total",
            &["limit=\"max_connections\""],
        )
        .await;
    let timed_out = h
        .metric(
            "herald_limit_rejections_total",
            &["limit=\"header_read_timeout\""],
        )
        .await;
    // 2 WebSockets + 506 idle sockets fill 500 + 8; the other 494 are refused.
    assert_eq!((refused, timed_out), (494.0, 506.0));
    // Capacity is back: a new subscriber gets in and everyone receives.
    h.wait_metric("herald_client_sockets", &[], |v| v <= 3.0)
        .await;
    let mut late = Ws::connect(&h.ws_url("/v1/ws?channel=f")).await;
    late.next().await;
    h.publish("f", json!("after")).await;
    assert_eq!(subscriber.next_message().await["data"], "after");
    assert_eq!(late.next_message().await["data"], "after");
}

#[tokio::test]
async fn per_address_caps_count_the_client_behind_a_trusted_proxy() {
    let h = Herald::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.1",
    ])
    .await;
    let addr = h.addr();
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=p")).await;
    subscriber.next().await;
    // A direct client (not a proxy) holds one connection; its second is refused at accept, its
    // X-Forwarded-For ignored. Another address is unaffected.
    let mut first = connect_from("127.0.0.2", &addr).await;
    let resp = head_only(
        &mut first,
        &sse_request(&addr, "p", "X-Forwarded-For: 198.51.100.1\r\n"),
    )
    .await;
    assert_eq!(resp.status, 200);
    let mut second = connect_from("127.0.0.2", &addr).await;
    let resp = read_response(&mut second).await.expect("an answer");
    assert_refused(&resp, 429, "too_many_connections");
    let mut other = connect_from("127.0.0.3", &addr).await;
    assert_eq!(
        head_only(&mut other, &sse_request(&addr, "p", ""))
            .await
            .status,
        200
    );

    // Through the trusted proxy (127.0.0.1) each stream counts for the client it names.
    let via = |client: &str| {
        sse_request(
            &addr,
            "p",
            &format!("X-Forwarded-For: 6.6.6.6, {client}\r\n"),
        )
    };
    let mut a1 = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(head_only(&mut a1, &via("203.0.113.7")).await.status, 200);
    let mut a2 = TcpStream::connect(&addr).await.expect("connect");
    let resp = exchange(&mut a2, &via("203.0.113.7"))
        .await
        .expect("response");
    assert_refused(&resp, 429, "too_many_connections");
    let mut ws = TcpStream::connect(&addr).await.expect("connect");
    let upgrade =
        crate::support::raw::upgrade_request(&addr, "/v1/ws", "X-Forwarded-For: 203.0.113.7\r\n");
    let resp = exchange(&mut ws, &upgrade).await.expect("response");
    assert_refused(&resp, 429, "too_many_connections");
    let mut b = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(head_only(&mut b, &via("203.0.113.8")).await.status, 200);
    // The proxy's own requests are not limited per address; the subscriber got everything.
    for i in 0..3 {
        h.publish("p", json!(i)).await;
    }
    for i in 0..3 {
        assert_eq!(subscriber.next_message().await["data"], i);
    }
    // When the client's stream ends, it may open another.
    drop(a1);
    h.wait_metric("herald_connections", &["transport=\"sse\""], |v| v == 3.0)
        .await;
    let mut a3 = TcpStream::connect(&addr).await.expect("connect");
    assert_eq!(head_only(&mut a3, &via("203.0.113.7")).await.status, 200);
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"max_connections_per_ip\""]
        )
        .await,
        3.0
    );
}

#[tokio::test]
async fn new_connections_per_address_are_rate_limited() {
    let h = Herald::start(&[
        "--connection-rate-per-ip",
        "1/h",
        "--connection-burst-per-ip",
        "3",
    ])
    .await;
    let addr = h.addr();
    let mut subscriber = Ws::connect(&h.ws_url("/v1/ws?channel=r")).await;
    subscriber.next().await;
    let healthz = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nconnection: close\r\n\r\n");
    for _ in 0..3 {
        let mut s = connect_from("127.0.0.4", &addr).await;
        assert_eq!(
            exchange(&mut s, &healthz).await.expect("response").status,
            200
        );
    }
    let mut s = connect_from("127.0.0.4", &addr).await;
    let resp = read_response(&mut s).await.expect("an answer");
    assert_refused(&resp, 429, "rate_limited");
    let retry: u64 = resp
        .header("retry-after")
        .expect("retry")
        .parse()
        .expect("n");
    assert!(retry > 60, "a token comes back in about an hour: {retry}");
    let mut s = connect_from("127.0.0.5", &addr).await;
    assert_eq!(
        exchange(&mut s, &healthz).await.expect("response").status,
        200
    );
    h.publish("r", json!("served")).await;
    assert_eq!(subscriber.next_message().await["data"], "served");
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"connection_rate_per_ip\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn accept_backs_off_when_the_node_runs_out_of_file_descriptors() {
    // 64 files and a max_connections the limit cannot hold: accept itself fails.
    let h = Herald::launch(Launch {
        args: &["--max-connections", "1000"],
        capture_log: true,
        open_files: Some(64),
        ..Launch::default()
    })
    .await;
    h.wait_log("max_connections is above what the open-file limit")
        .await;
    let mut sockets = Vec::new();
    for _ in 0..100 {
        sockets.push(TcpStream::connect(h.addr()).await.expect("connect"));
    }
    h.wait_log("accept failed: backing off").await;
    drop(sockets);
    // The node recovers on its own once descriptors are free.
    assert_eq!(h.get("/healthz").await.0, 200);
    let errors = h.metric("herald_accept_errors_total", &[]).await;
    // Spinning on EMFILE would fail thousands of times a second; backing off, a handful.
    assert!((1.0..1000.0).contains(&errors), "{errors} failed accepts");
}
