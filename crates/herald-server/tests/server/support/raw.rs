//! Raw TCP and HTTP/1.1 for tests of what happens before and around a request: connections from
//! other loopback addresses, half-sent heads, responses read byte for byte.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use super::within;

/// Connects to `addr` from the loopback address `from` (127.0.0.0/8 is all local on Linux), so
/// one test can look like several clients.
pub async fn connect_from(from: &str, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("address");
    socket.bind(local).expect("bind a loopback address");
    let remote: SocketAddr = addr.parse().expect("address");
    within("connect", socket.connect(remote))
        .await
        .expect("connect")
}

/// A response as read from the socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Lowercased names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("non-JSON body: {self:?}"))
    }
}

/// Sends `request` (a complete head, and body if any) and reads one response.
pub async fn exchange(stream: &mut TcpStream, request: &str) -> Option<RawResponse> {
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(stream).await
}

/// Reads one response: the head, then `content-length` bytes (or up to EOF without one).
/// `None` if the connection closes before a complete head.
pub async fn read_response(stream: &mut TcpStream) -> Option<RawResponse> {
    within("an HTTP response", async {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = parse_headers(lines);
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut body = buf[head_end..].to_vec();
        match length {
            Some(n) => {
                while body.len() < n {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => body.extend_from_slice(&chunk[..k]),
                    }
                }
            }
            None if status >= 200 && status != 204 && status != 101 => {
                let _ = stream.read_to_end(&mut body).await;
            }
            None => {}
        }
        Some(RawResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    })
    .await
}

/// Sends `request` and reads only the response head (for streams, which do not end).
pub async fn head_only(stream: &mut TcpStream, request: &str) -> RawResponse {
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    within("a response head", async {
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if stream.read(&mut b).await.expect("read") == 0 {
                break;
            }
            head.push(b[0]);
        }
    })
    .await;
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    RawResponse {
        status,
        headers: parse_headers(lines),
        body: String::new(),
    }
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<(String, String)> {
    lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

/// Waits until the server closes the connection; returns what it sent before (usually nothing).
pub async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    within("the server to close the connection", async {
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
}

/// A WebSocket upgrade request for `path`, with extra header lines (each ending in `\r\n`).
pub fn upgrade_request(addr: &str, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}
