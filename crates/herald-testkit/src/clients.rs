//! Test clients: an SSE reader like EventSource, a WebSocket client, and a raw WebSocket for
//! misbehaving peers (never answers pings by itself, can send invalid frames).

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message as WsMessage};

use crate::within;

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl Event {
    fn blank() -> Self {
        Self {
            id: None,
            event: "message".into(),
            data: String::new(),
        }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("non-JSON data: {}", self.data))
    }
}

/// An SSE stream read like EventSource reads it.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pending: Event,
    has_data: bool,
    pub last_id: Option<String>,
    pub status: u16,
    /// The HTTP version the response came over.
    pub version: reqwest::Version,
}

impl Sse {
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> Self {
        within("SSE connect", Self::try_connect(url, last_event_id))
            .await
            .expect("SSE request")
    }

    /// Connects; a transport error is `Err`, any HTTP status is `Ok` (see `status`).
    pub async fn try_connect(url: &str, last_event_id: Option<&str>) -> reqwest::Result<Self> {
        Self::try_connect_with(url, last_event_id, &[]).await
    }

    /// [`Sse::try_connect`] with extra request headers (`authorization`, `cookie`, ...).
    pub async fn try_connect_with(
        url: &str,
        last_event_id: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<Self> {
        Self::try_connect_on(&reqwest::Client::new(), url, last_event_id, headers).await
    }

    /// Connects with `client` (HTTPS, HTTP/2, a shared connection), asserting the request went
    /// through.
    pub async fn connect_on(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> Self {
        within(
            "SSE connect",
            Self::try_connect_on(client, url, last_event_id, &[]),
        )
        .await
        .expect("SSE request")
    }

    /// [`Sse::try_connect_with`] with `client`.
    pub async fn try_connect_on(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<Self> {
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let version = resp.version();
        Ok(Self {
            version,
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            pending: Event::blank(),
            has_data: false,
            last_id: None,
            status,
        })
    }

    /// The next event (comments skipped); `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        within("an SSE event", self.next_inner()).await
    }

    /// Cancel-safe: the event being parsed lives in `self`, so a `select!` that drops this
    /// future between chunks loses nothing.
    async fn next_inner(&mut self) -> Option<Event> {
        loop {
            while let Some(nl) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=nl).collect();
                let line = line.trim_end_matches('\n');
                if line.is_empty() {
                    let ev = std::mem::replace(&mut self.pending, Event::blank());
                    if let Some(id) = &ev.id {
                        self.last_id = Some(id.clone());
                    }
                    if std::mem::take(&mut self.has_data) {
                        return Some(ev);
                    }
                    continue;
                }
                if line.starts_with(':') {
                    continue;
                }
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                let ev = &mut self.pending;
                match field {
                    "id" => ev.id = Some(value.to_owned()),
                    "event" => ev.event = value.to_owned(),
                    "data" => {
                        if self.has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(value);
                        self.has_data = true;
                    }
                    _ => {}
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self
                    .buf
                    .push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream")),
                _ => return None,
            }
        }
    }

    /// The rest of the body as text (e.g. the JSON error of a refused request).
    pub async fn rest(mut self) -> String {
        within("the rest of an SSE body", async {
            let mut text = std::mem::take(&mut self.buf);
            while let Some(Ok(chunk)) = self.body.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk));
            }
            text
        })
        .await
    }

    /// Skips `herald.*` control events and returns the next message event.
    pub async fn next_message(&mut self) -> Event {
        loop {
            let ev = self
                .next()
                .await
                .expect("stream ended while waiting for a message");
            if !ev.event.starts_with("herald.") {
                return ev;
            }
        }
    }
}

/// A well-behaved WebSocket client.
pub struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    pub async fn connect(url: &str) -> Self {
        within("WS connect", Self::try_connect(url))
            .await
            .expect("WS handshake")
    }

    /// Connects; a refused handshake (e.g. a 503) or a transport error is `Err`.
    pub async fn try_connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        Self::try_connect_with(url, &[]).await
    }

    /// [`Ws::try_connect`] with extra handshake headers (`authorization`, `cookie`, ...).
    pub async fn try_connect_with(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::{
            Error,
            client::IntoClientRequest,
            http::{HeaderName, HeaderValue},
        };
        let mut req = url.into_client_request()?;
        for (name, value) in headers {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| Error::HttpFormat(e.into()))?;
            let value = HeaderValue::from_str(value).map_err(|e| Error::HttpFormat(e.into()))?;
            req.headers_mut().append(name, value);
        }
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Self(ws))
    }

    pub async fn send(&mut self, v: Value) {
        self.0
            .send(WsMessage::text(v.to_string()))
            .await
            .expect("WS send");
    }

    /// Sends any frame, e.g. invalid JSON or a binary frame.
    pub async fn send_raw(&mut self, m: WsMessage) {
        self.0.send(m).await.expect("WS send");
    }

    /// The next JSON frame; panics if the connection closes.
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err(close) => panic!("connection closed: {close:?}"),
        }
    }

    /// The next JSON frame, or the close code when the server closes.
    pub async fn next_or_close(&mut self) -> Result<Value, Option<u16>> {
        within("a WS frame", async {
            loop {
                match self.0.next().await {
                    Some(Ok(WsMessage::Text(t))) => {
                        return Ok(serde_json::from_str(&t).expect("JSON frame"));
                    }
                    Some(Ok(WsMessage::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Err(None),
                }
            }
        })
        .await
    }

    /// Subscribes and returns the `subscribed` frame.
    pub async fn subscribe(&mut self, channel: &str, since: Option<(u64, &str)>) -> Value {
        let mut op = serde_json::json!({"op": "subscribe", "channel": channel});
        if let Some((offset, epoch)) = since {
            op["since"] = serde_json::json!({"offset": offset, "epoch": epoch});
        }
        self.send(op).await;
        let v = self.next().await;
        assert_eq!(v["type"], "subscribed", "unexpected {v}");
        v
    }

    /// The next `message` frame.
    pub async fn next_message(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == "message" {
                return v;
            }
        }
    }
}

/// A hand-driven WebSocket: never answers pings by itself and can send invalid frames.
pub struct RawWs {
    pub stream: TcpStream,
}

impl RawWs {
    pub async fn connect(addr: &str, path: &str) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        Self::handshake(stream, addr, path).await
    }

    /// Performs the upgrade on a stream the caller connected (e.g. with a small receive buffer).
    pub async fn handshake(mut stream: TcpStream, addr: &str, path: &str) -> Self {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            within("handshake", stream.read_exact(&mut b))
                .await
                .expect("read");
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Self { stream }
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) {
        let f = Self::frame(opcode, fin, payload);
        self.stream.write_all(&f).await.expect("write frame");
    }

    /// The bytes of one masked client frame (`opcode` may carry reserved bits).
    pub fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len <= 65535 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Reads one server frame: (opcode, payload). `None` on EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        within("a raw frame", async {
            let mut h = [0u8; 2];
            self.stream.read_exact(&mut h).await.ok()?;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut b = [0u8; 2];
                    self.stream.read_exact(&mut b).await.ok()?;
                    u16::from_be_bytes(b) as usize
                }
                127 => {
                    let mut b = [0u8; 8];
                    self.stream.read_exact(&mut b).await.ok()?;
                    u64::from_be_bytes(b) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            Some((h[0] & 0x0f, payload))
        })
        .await
    }

    /// Reads frames until a close frame; returns its code.
    pub async fn read_close_code(&mut self) -> Option<u16> {
        while let Some((op, payload)) = self.read_frame().await {
            if op == 0x8 {
                return payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
            }
        }
        None
    }
}
