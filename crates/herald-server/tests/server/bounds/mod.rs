//! Issue 10 (hardening): history reads that stall Redis, resumes that never finish, memory
//! pinned by clients that do not read, lost idempotency, state created by reads. One regression
//! test per finding, each against real processes (and real Redis where Redis is involved).

mod broker;
mod history;
mod replay;

use serde_json::{Value, json};
use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::support::{Herald, within};

/// About 60 KB of message data: `"xxx..."`.
pub fn fat(size: usize) -> Value {
    json!("x".repeat(size))
}

/// Publishes `n` messages of `data` to `channel` with a few concurrent publishers; returns the
/// epoch.
pub async fn publish_many(h: &Herald, channel: &str, n: usize, data: Value) -> String {
    let body = json!({"channel": channel, "data": data}).to_string();
    let url = h.url("/v1/publish");
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (http, url, body) = (h.http.clone(), url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut epoch = String::new();
            for _ in (t..n).step_by(8) {
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("publish");
                assert_eq!(resp.status(), 200);
                let v: Value = resp.json().await.expect("json");
                epoch = v["epoch"].as_str().expect("epoch").to_owned();
            }
            epoch
        }));
    }
    let mut epoch = String::new();
    for t in tasks {
        let e = within("publishers", t).await.expect("publisher");
        if !e.is_empty() {
            epoch = e;
        }
    }
    epoch
}

/// A TCP connection with a 4 KiB receive buffer: a client that stops reading fills it fast.
pub async fn tiny_socket(addr: &str) -> TcpStream {
    let addr: std::net::SocketAddr = addr.parse().expect("addr");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(addr).await.expect("connect")
}

/// Sends a GET on a tiny-buffered connection and returns it unread.
pub async fn get_unread(addr: &str, path_and_headers: &str) -> TcpStream {
    let mut s = tiny_socket(addr).await;
    let req = format!("GET {path_and_headers}\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s
}
