//! SSE over HTTP/2: subscriber streams multiplexed on shared connections, to compare with one
//! HTTP/1.1 connection per stream (`--transport sse-h2`, `--h2-streams`).
//!
//! Subscriber `i` on a node uses that node's connection number `i / h2_streams`, opened by the
//! first subscriber that needs it (TLS with ALPN `h2` for `https://` targets, prior knowledge
//! otherwise) and forgotten when it ends, so the next subscriber opens a new one. Each stream's
//! body is parsed like an HTTP/1.1 SSE body ([`super::sse`]).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use h2::{RecvStream, client::SendRequest};
use parking_lot::Mutex;

use super::{
    End, Event,
    sse::{SseEvent, SseParser, dispatch},
};
use crate::{
    net::{Alpn, Dialer, Target, encode_query},
    token::TokenTracker,
};

/// Flow-control windows this client grants (like a browser's: Chrome uses 6 MiB and 15 MiB).
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;

/// One shared connection: a generation number (so a dead connection's driver forgets only
/// itself) and its request handle.
type Slot = Arc<tokio::sync::Mutex<Option<(u64, SendRequest<Bytes>)>>>;

/// The shared HTTP/2 connections of a fleet.
#[derive(Debug)]
pub struct H2Pool {
    per_conn: usize,
    slots: Mutex<HashMap<(usize, usize), Slot>>,
    generation: std::sync::atomic::AtomicU64,
}

impl H2Pool {
    pub fn new(per_conn: usize) -> Self {
        Self {
            per_conn: per_conn.max(1),
            slots: Mutex::new(HashMap::new()),
            generation: Default::default(),
        }
    }

    /// The connection subscriber `idx` uses on node `target_idx`, opened if needed.
    pub async fn sender(
        &self,
        dialer: &Dialer,
        target: &Target,
        target_idx: usize,
        idx: usize,
    ) -> Result<SendRequest<Bytes>, End> {
        let slot = self
            .slots
            .lock()
            .entry((target_idx, idx / self.per_conn))
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some((_, send)) = held.as_ref() {
            return Ok(send.clone());
        }
        let stream = dialer
            .connect(target, Alpn::H2)
            .await
            .map_err(End::connect)?;
        let (send, conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Bytes>(stream)
            .await
            .map_err(|e| End::Connect(format!("h2 handshake: {e}")))?;
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *held = Some((generation, send.clone()));
        drop(held);
        tokio::spawn(async move {
            let _ = conn.await;
            let mut held = slot.lock().await;
            if held.as_ref().is_some_and(|(g, _)| *g == generation) {
                *held = None;
            }
        });
        Ok(send)
    }
}

/// One SSE stream on a shared HTTP/2 connection.
#[derive(Debug)]
pub struct H2SseConn {
    body: RecvStream,
    parser: SseParser,
    tokens: TokenTracker,
}

impl H2SseConn {
    /// Opens `/v1/sse?channel=` on `send`'s connection; returns once the server answered 200.
    pub async fn open(
        send: SendRequest<Bytes>,
        target: &Target,
        channel: &str,
        last_event_id: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, End> {
        let io = |e: h2::Error| End::Io(e.to_string());
        let mut send = send.ready().await.map_err(io)?;
        let scheme = if target.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut uri = format!(
            "{scheme}://{}{}/v1/sse?channel=",
            target.host, target.prefix
        );
        encode_query(&mut uri, channel);
        let mut req = http::Request::get(uri).header("accept", "text/event-stream");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let req = req
            .body(())
            .map_err(|e| End::Protocol(format!("request: {e}")))?;
        let (resp, _) = send.send_request(req, true).map_err(io)?;
        let resp = resp.await.map_err(io)?;
        if resp.status() != 200 {
            return Err(End::Status(resp.status().as_u16()));
        }
        Ok(Self {
            body: resp.into_body(),
            parser: SseParser::new(1 << 20),
            tokens: TokenTracker::default(),
        })
    }

    /// Waits for the next DATA frame and dispatches every complete event.
    pub async fn next_batch<F: FnMut(Event<'_>)>(&mut self, f: &mut F) -> Result<(), End> {
        let chunk = match self.body.data().await {
            Some(chunk) => chunk.map_err(|e| End::Io(e.to_string()))?,
            None => return Err(End::Eof),
        };
        // Read: give the window back, as a browser does when it consumes the data.
        let _ = self.body.flow_control().release_capacity(chunk.len());
        let Self { parser, tokens, .. } = self;
        let mut failed: Option<End> = None;
        let mut on_event = |ev: SseEvent<'_>| {
            if failed.is_none()
                && let Err(e) = dispatch(tokens, ev, f)
            {
                failed = Some(e);
            }
        };
        parser
            .feed(&chunk, &mut on_event)
            .map_err(|_| End::Protocol("SSE line too long".into()))?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
