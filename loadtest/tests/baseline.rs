//! `herald-loadtest baseline` as a user runs it: the built binary on port 0, driven by the
//! loadtest's own scenarios and by raw sockets for the protocol corners (handshake, ping,
//! close, a subscriber whose kernel buffer is full).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

const BIN: &str = env!("CARGO_BIN_EXE_herald-loadtest");
/// Safety net for reads that wait for the server: a hang fails the test instead of CI.
const WAIT: Duration = Duration::from_secs(20);

/// A running baseline, killed on drop.
struct Baseline {
    child: Child,
    url: String,
    addr: String,
}

impl Baseline {
    fn start(threads: usize) -> Self {
        let mut child = Command::new(BIN)
            .args([
                "--threads",
                &threads.to_string(),
                "baseline",
                "--listen",
                "127.0.0.1:0",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the baseline");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        let addr = url.trim_start_matches("http://").to_owned();
        Self { child, url, addr }
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a loadtest scenario against `url` and returns its JSON report.
fn scenario(url: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(&args[..1])
        .args(["--url", url])
        .args(&args[1..])
        .stderr(Stdio::inherit())
        .output()
        .expect("run the loadtest");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no report: {out:?}"));
    let report: serde_json::Value = serde_json::from_str(line).expect("JSON report");
    assert!(out.status.success(), "{args:?} failed: {report}");
    report
}

#[test]
fn fanout_idle_and_publish_scenarios_run_unchanged_with_zero_loss() {
    let b = Baseline::start(2);
    for transport in ["ws", "sse"] {
        let r = scenario(
            &b.url,
            &[
                "fanout",
                "--transport",
                transport,
                "-c",
                "4",
                "-s",
                "5",
                "-r",
                "200",
                "-d",
                "1s",
                "-k",
                "4",
            ],
        );
        let d = &r["delivery"];
        assert_eq!(d["lost"], 0, "{transport}: {r}");
        assert_eq!(d["duplicated"], 0, "{transport}: {r}");
        assert_eq!(d["out_of_order"], 0, "{transport}: {r}");
        assert_eq!(d["unexpected"], 0, "{transport}: {r}");
        let expected = d["expected"].as_u64().expect("expected");
        // Every acknowledged publish went live after all 20 subscriptions: 20 deliveries each.
        let acked = r["publish"]["acked"].as_u64().expect("acked");
        assert!(acked > 0);
        assert_eq!(expected, acked * 5, "{transport}: {r}");
        assert_eq!(d["delivered"], expected, "{transport}: {r}");
        assert_eq!(r["connections"]["subscribed"], 20);
    }
    let pid = b.child.id().to_string();
    let r = scenario(
        &b.url,
        &[
            "idle",
            "--transport",
            "ws",
            "-n",
            "50",
            "--hold",
            "0s",
            "--pid",
            &pid,
        ],
    );
    assert_eq!(r["stayed_open"], 50, "{r}");
    let r = scenario(&b.url, &["publish", "-k", "2", "-d", "300ms", "-c", "3"]);
    assert_eq!(r["publish"]["failed"], 0, "{r}");
    assert!(r["publish"]["acked"].as_u64() > Some(0), "{r}");
}

async fn connect(addr: &str, rcvbuf: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(n) = rcvbuf {
        socket.set_recv_buffer_size(n).expect("rcvbuf");
    }
    socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect")
}

/// Reads until `buf` ends a response head; returns the head.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            buf.drain(..i + 4);
            return head;
        }
        read_more(s, buf).await;
    }
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 65536];
    let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
        .await
        .expect("server answered in time")
        .expect("read");
    assert!(n > 0, "server closed early; have {buf:?}");
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads one unmasked server frame: (opcode, payload).
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (u8, Vec<u8>) {
    loop {
        if buf.len() >= 2 {
            let (len, at) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
                127 if buf.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[2..10]);
                    (u64::from_be_bytes(b) as usize, 10)
                }
                n @ 0..126 => (usize::from(n), 2),
                _ => (usize::MAX, 0),
            };
            if at > 0 && buf.len() >= at + len {
                let op = buf[0] & 0x0f;
                assert_eq!(buf[1] & 0x80, 0, "server frames are not masked");
                let payload = buf[at..at + len].to_vec();
                buf.drain(..at + len);
                return (op, payload);
            }
        }
        read_more(s, buf).await;
    }
}

fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![first, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

async fn ws_subscribe(addr: &str, channel: &str, rcvbuf: Option<u32>) -> (TcpStream, Vec<u8>) {
    let mut s = connect(addr, rcvbuf).await;
    let req = format!(
        "GET /v1/ws?channel={channel} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    // RFC 6455 section 1.3's example key and accept value.
    assert!(
        head.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    let (op, sub) = read_frame(&mut s, &mut buf).await;
    assert_eq!(op, 1);
    let sub: serde_json::Value = serde_json::from_slice(&sub).expect("json");
    assert_eq!(sub["type"], "subscribed");
    assert_eq!(sub["channel"], channel);
    (s, buf)
}

async fn publish(addr: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s = connect(addr, None).await;
    let req = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await;
    let status = head[9..12].parse().expect("status");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    while buf.len() < len {
        read_more(&mut s, &mut buf).await;
    }
    (
        status,
        serde_json::from_slice(&buf[..len]).expect("json body"),
    )
}

#[tokio::test]
async fn websocket_handshake_ping_close_and_bad_input() {
    let b = Baseline::start(1);
    let (mut s, mut buf) = ws_subscribe(&b.addr, "raw-1", None).await;
    s.write_all(&masked(0x89, b"hello?")).await.expect("ping");
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        (0xA, b"hello?".to_vec())
    );
    // Text frames (ops) are read and ignored; the next publish still arrives.
    s.write_all(&masked(0x81, br#"{"op":"ping"}"#))
        .await
        .expect("text");
    let (status, ack) = publish(&b.addr, r#"{"channel":"raw-1","data":{"n":1}}"#).await;
    assert_eq!(status, 200);
    let (op, msg) = read_frame(&mut s, &mut buf).await;
    assert_eq!(op, 1);
    let msg: serde_json::Value = serde_json::from_slice(&msg).expect("json");
    assert_eq!(msg["type"], "message");
    assert_eq!(
        (&msg["offset"], &msg["epoch"]),
        (&ack["offset"], &ack["epoch"])
    );
    assert_eq!(msg["data"]["n"], 1);
    s.write_all(&masked(0x88, &1000u16.to_be_bytes()))
        .await
        .expect("close");
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        (0x8, 1000u16.to_be_bytes().to_vec())
    );

    // An unmasked client frame breaks RFC 6455: close 1002.
    let (mut s, mut buf) = ws_subscribe(&b.addr, "raw-1", None).await;
    s.write_all(&[0x81, 0x01, b'x']).await.expect("write");
    assert_eq!(
        read_frame(&mut s, &mut buf).await,
        (0x8, 1002u16.to_be_bytes().to_vec())
    );

    let (status, err) = publish(&b.addr, r#"{"channel":"a b","data":1}"#).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (400, &"invalid_channel".into())
    );
    let (status, err) = publish(&b.addr, r#"{"channel":"a"}"#).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (400, &"invalid_json".into())
    );
}

#[tokio::test]
async fn a_full_socket_backlogs_in_order_without_loss() {
    let b = Baseline::start(2);
    // A small receive buffer so the server's writes stop fitting after a few messages.
    let (mut s, mut buf) = ws_subscribe(&b.addr, "slow-1", Some(4096)).await;
    let pad = "x".repeat(16 * 1024);
    let mut last = 0;
    // Publish until the server reports a delivery it had to backlog (the kernel took only
    // part of it), then a few more that queue behind it: the backlog stays far below 1 MiB.
    let mut after = 0;
    while after < 4 {
        let (status, ack) = publish(
            &b.addr,
            &format!(r#"{{"channel":"slow-1","data":{{"pad":"{pad}"}}}}"#),
        )
        .await;
        assert_eq!(status, 200);
        last = ack["offset"].as_u64().expect("offset");
        let stats = stats(&b.addr).await;
        if stats["queued"].as_u64() > Some(0) {
            after += 1;
        }
        assert!(last < 1000, "nothing was ever backlogged: {stats}");
    }
    for want in 1..=last {
        let (op, msg) = read_frame(&mut s, &mut buf).await;
        assert_eq!(op, 1);
        let msg: serde_json::Value = serde_json::from_slice(&msg).expect("json");
        assert_eq!(msg["offset"], want);
    }
    assert_eq!(stats(&b.addr).await["slow_closed"], 0);
}

async fn stats(addr: &str) -> serde_json::Value {
    let mut s = connect(addr, None).await;
    s.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let head = read_head(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    while serde_json::from_slice::<serde_json::Value>(&buf).is_err() {
        read_more(&mut s, &mut buf).await;
    }
    serde_json::from_slice(&buf).expect("json")
}
