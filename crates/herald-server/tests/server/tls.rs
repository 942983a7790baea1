//! Native TLS: HTTPS and WSS with a certificate the test made, HTTP/2 negotiated by ALPN,
//! certificate rotation without a restart, and handshakes that go wrong.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::support::{
    Herald,
    clients::Sse,
    tls::{self, CertFiles, TestCa, peer_certificate},
    within,
};

/// A TLS node (with `args`) whose certificate a test CA signed, and a pooling client trusting it.
async fn tls_node(args: &[&str]) -> (TestCa, CertFiles, Herald, reqwest::Client) {
    let ca = TestCa::new();
    let files = CertFiles::new(&ca.leaf("node"));
    let h = tls::start(&ca, &files, args).await;
    let client = ca.client(true);
    (ca, files, h, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_publish_history_and_sse_over_http2_negotiated_by_alpn() {
    let (ca, _files, h, client) = tls_node(&[]).await;

    let mut sse = Sse::connect_on(&client, &h.url("/v1/sse?channel=tls"), None).await;
    assert_eq!((sse.status, sse.version), (200, reqwest::Version::HTTP_2));
    assert_eq!(
        sse.next().await.expect("subscribed").event,
        "herald.subscribed"
    );

    let resp = client
        .post(h.url("/v1/publish"))
        .json(&json!({"channel": "tls", "data": {"n": 1}}))
        .send()
        .await
        .expect("HTTPS publish");
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let ack: Value = resp.json().await.expect("JSON");
    assert_eq!(ack["offset"], 1);
    assert_eq!(sse.next_message().await.json(), json!({"n": 1}));

    let resp = client
        .get(h.url("/v1/channels/tls/history"))
        .send()
        .await
        .expect("history");
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, reqwest::Version::HTTP_2)
    );
    let history: Value = resp.json().await.expect("JSON");
    assert_eq!(history["messages"][0]["data"], json!({"n": 1}));

    // HTTP/1.1 over TLS (a client that does not offer h2) is served too, SSE included.
    let h1 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA"))
        .http1_only()
        .build()
        .expect("client");
    let mut sse1 = Sse::connect_on(&h1, &h.url("/v1/sse?channel=tls"), None).await;
    assert_eq!(
        (sse1.status, sse1.version),
        (200, reqwest::Version::HTTP_11)
    );
    h.publish("tls", json!({"n": 2})).await;
    assert_eq!(sse.next_message().await.json(), json!({"n": 2}));
    assert_eq!(sse1.next_message().await.json(), json!({"n": 2}));
    assert!(
        h.metric(
            "herald_http_connections_total",
            &["protocol=\"h2\"", "tls=\"true\""]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sse_streams_on_one_http2_connection_all_receive_every_message() {
    let (_ca, _files, h, client) = tls_node(&[]).await;
    let mut streams = Vec::new();
    for i in 0..20 {
        // Two channels, so streams differ in what they subscribe to.
        let url = h.url(&format!("/v1/sse?channel=many&channel=many{}", i % 2));
        let mut sse = Sse::connect_on(&client, &url, None).await;
        assert_eq!(sse.version, reqwest::Version::HTTP_2);
        for _ in 0..2 {
            assert_eq!(
                sse.next().await.expect("subscribed").event,
                "herald.subscribed"
            );
        }
        streams.push(sse);
    }
    // One connection carries them all (the test's own requests use HTTP/1.1).
    assert_eq!(h.metric("herald_h2_streams", &[]).await, 20.0);
    assert_eq!(
        h.metric("herald_http_connections_total", &["protocol=\"h2\""])
            .await,
        1.0
    );
    for n in 1..=10 {
        h.publish("many", json!({"n": n})).await;
        h.publish(&format!("many{}", n % 2), json!({"odd_even": n}))
            .await;
    }
    for (i, sse) in streams.iter_mut().enumerate() {
        let mut got = Vec::new();
        while got.len() < 15 {
            got.push(sse.next_message().await.json());
        }
        let shared: Vec<&Value> = got.iter().filter(|v| v.get("n").is_some()).collect();
        assert_eq!(shared.len(), 10, "stream {i}: {got:?}");
        assert!(shared.iter().enumerate().all(|(k, v)| v["n"] == k + 1));
        assert!(got.iter().all(|v| v.get("n").is_some()
            || v["odd_even"].as_u64().map(|n| n % 2) == Some((i % 2) as u64)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_subscribe_receives_messages() {
    let (ca, _files, h, _client) = tls_node(&[]).await;
    // A browser opens WebSockets on a connection of their own, offering only HTTP/1.1.
    let stream = ca.connect(&h.addr(), &[b"http/1.1"]).await;
    let url = format!(
        "wss://localhost:{}/v1/ws",
        h.addr().rsplit(':').next().expect("port")
    );
    let (mut ws, resp) = within(
        "WSS handshake",
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("WebSocket over TLS");
    assert_eq!(resp.status(), 101);
    ws.send(WsMessage::text(
        json!({"op": "subscribe", "channel": "wss", "id": 1}).to_string(),
    ))
    .await
    .expect("send");
    let mut next = async || loop {
        let msg = within("a frame", ws.next())
            .await
            .expect("open")
            .expect("frame");
        if let WsMessage::Text(t) = msg {
            return serde_json::from_str::<Value>(&t).expect("JSON");
        }
    };
    assert_eq!(next().await["type"], "subscribed");
    for n in 1..=3 {
        h.publish("wss", json!({"n": n})).await;
    }
    for n in 1..=3 {
        let m = next().await;
        assert_eq!(
            (m["type"].as_str(), m["offset"].as_u64()),
            (Some("message"), Some(n))
        );
    }
}

/// The certificate a fresh connection is served.
async fn served_certificate(h: &Herald, ca: &TestCa) -> Vec<u8> {
    let resp = ca
        .client(false)
        .get(h.url("/healthz"))
        .send()
        .await
        .expect("GET");
    peer_certificate(&resp)
}

/// Waits until a fresh connection is served `der`.
async fn wait_for_certificate(h: &Herald, ca: &TestCa, der: &[u8]) {
    within("the new certificate on new connections", async {
        loop {
            if served_certificate(h, ca).await == der {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Rotation: new connections get the new certificate, the open stream goes on with the old one.
async fn rotate(h: &Herald, ca: &TestCa, files: &CertFiles, signal: bool) {
    let (a, b) = (ca.leaf("a"), ca.leaf("b"));
    files.install(&a);
    if signal {
        sighup(h);
    }
    wait_for_certificate(h, ca, &a.der).await;
    let client = ca.client(true);
    let mut sse = Sse::connect_on(&client, &h.url("/v1/sse?channel=rot"), None).await;
    sse.next().await.expect("subscribed");

    files.install(&b);
    if signal {
        sighup(h);
    }
    wait_for_certificate(h, ca, &b.der).await;
    h.publish("rot", json!("after the rotation")).await;
    assert_eq!(sse.next_message().await.json(), json!("after the rotation"));

    // A key that does not match is refused; the node keeps serving the last good pair.
    let before = h
        .metric(
            "herald_tls_certificate_reloads_total",
            &["outcome=\"error\""],
        )
        .await;
    files.install_key(&ca.leaf("c").key_pem);
    if signal {
        sighup(h);
    }
    h.wait_metric(
        "herald_tls_certificate_reloads_total",
        &["outcome=\"error\""],
        |v| v > before,
    )
    .await;
    assert_eq!(served_certificate(h, ca).await, b.der);
}

fn sighup(h: &Herald) {
    let pid = h.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_served_to_new_connections_and_open_ones_continue() {
    let ca = TestCa::new();
    let files = CertFiles::new(&ca.leaf("first"));
    let h = tls::start(&ca, &files, &["--tls-reload-interval", "100ms"]).await;
    rotate(&h, &ca, &files, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let ca = TestCa::new();
    let files = CertFiles::new(&ca.leaf("first"));
    // No periodic check: only the signal reloads.
    let h = tls::start(&ca, &files, &["--tls-reload-interval", "0s"]).await;
    rotate(&h, &ca, &files, true).await;
    assert!(h.child.id().is_some(), "SIGHUP does not stop the node");
    assert_eq!(h.get("/healthz").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_plain_text_and_stalled_handshakes_end_only_their_connection() {
    let (_ca, _files, h, client) = tls_node(&["--header-read-timeout", "1s"]).await;
    let mut sse = Sse::connect_on(&client, &h.url("/v1/sse?channel=calm"), None).await;
    sse.next().await.expect("subscribed");

    // A TLS record header followed by garbage: the handshake fails and the socket is closed.
    for garbage in [
        &b"\x16\x03\x01\x00\x10garbage-garbage!"[..],
        &b"\x16\x03\x03\xff\xff"[..],
        &[0x80, 0x01, 0x02, 0xff][..],
    ] {
        let mut tcp = tokio::net::TcpStream::connect(h.addr())
            .await
            .expect("connect");
        let _ = tcp.write_all(garbage).await;
        let mut buf = Vec::new();
        let _ = within("the server to close", tcp.read_to_end(&mut buf)).await;
    }
    h.wait_metric(
        "herald_tls_handshake_failures_total",
        &["reason=\"error\""],
        |v| v >= 3.0,
    )
    .await;

    // A plain HTTP request on the TLS port is told so, in JSON.
    let mut tcp = tokio::net::TcpStream::connect(h.addr())
        .await
        .expect("connect");
    let resp = crate::support::raw::exchange(&mut tcp, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(resp.status, 400);
    assert!(
        resp.json()["error"]["message"]
            .as_str()
            .expect("message")
            .contains("https://")
    );

    // Half a ClientHello, then silence: closed at the header read timeout.
    let mut tcp = tokio::net::TcpStream::connect(h.addr())
        .await
        .expect("connect");
    tcp.write_all(b"\x16\x03\x01\x02\x00\x01")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let _ = within(
        "the stalled handshake to be closed",
        tcp.read_to_end(&mut buf),
    )
    .await;
    assert_eq!(
        h.metric(
            "herald_tls_handshake_failures_total",
            &["reason=\"timeout\""]
        )
        .await,
        1.0
    );

    // The subscriber on the same node never noticed.
    h.publish("calm", json!("still here")).await;
    assert_eq!(sse.next_message().await.json(), json!("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_stop_the_start_with_a_clear_message() {
    let ca = TestCa::new();
    let files = CertFiles::new(&ca.leaf("node"));
    files.install_key(&ca.leaf("other").key_pem);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert-file",
            &files.cert(),
            "--tls-key-file",
            &files.key(),
        ])
        .output()
        .await
        .expect("run herald");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not belong to the certificate"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "nothing announced: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert-file", &files.cert()])
        .output()
        .await
        .expect("run herald");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_key_file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits_apply_to_tls_connections() {
    let (ca, _files, h, _client) = tls_node(&["--max-connections-per-ip", "2"]).await;
    // Two connections from 127.0.0.7: an SSE stream over h2 and a bare TLS connection.
    let name = || tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let handshake = async |alpn: &[&[u8]]| {
        let tcp = crate::support::raw::connect_from("127.0.0.7", &h.addr()).await;
        within(
            "a handshake",
            tokio_rustls::TlsConnector::from(ca.rustls(alpn)).connect(name(), tcp),
        )
        .await
    };
    let first = handshake(&[b"http/1.1"]).await.expect("first connection");
    let _second = handshake(&[b"h2"]).await.expect("second connection");
    // A third is closed before any handshake (a plain-text refusal would mean nothing to it).
    assert!(
        handshake(&[b"h2"]).await.is_err(),
        "the third connection is refused"
    );
    assert_eq!(
        h.metric(
            "herald_limit_rejections_total",
            &["limit=\"max_connections_per_ip\""]
        )
        .await,
        1.0
    );
    // Other addresses are served; a closed connection gives its place back.
    assert_eq!(h.get("/healthz").await.0, 200);
    drop(first);
    within("a place for 127.0.0.7 again", async {
        while handshake(&[b"h2"]).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
