//! Subscriber clients for both transports, behind one event type so scenarios do not care
//! which wire format delivered a message.

pub mod h2sse;
pub mod http;
pub mod sse;
pub mod ws;

use std::fmt;

use crate::net::{Dialer, Target};

/// Which subscriber transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Sse,
    /// SSE over HTTP/2: `--h2-streams` streams share each connection (TLS with ALPN h2 for
    /// `https://` targets, prior knowledge otherwise).
    #[value(name = "sse-h2")]
    #[serde(rename = "sse-h2")]
    SseH2,
}

/// What a subscriber connection delivered, borrowed from the connection's buffers.
#[derive(Debug)]
pub enum Event<'a> {
    Subscribed {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        recovered: bool,
        /// The SSE resume token after this event (SSE only).
        sse_id: Option<&'a str>,
    },
    Message {
        channel: &'a str,
        offset: u64,
        epoch: &'a str,
        data: &'a [u8],
        sse_id: Option<&'a str>,
    },
    /// A server error frame or `herald.error` event.
    Error { code: &'a str },
    /// The node is draining (`herald.reconnect`): reconnect elsewhere with resume.
    Reconnect,
    /// An SSE message whose id moved no channel: cannot be accounted.
    Unattributed,
    /// Frames the loadtest does not use (`pong`, `published`, ...).
    Other,
}

/// Why a connection attempt failed or an open connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Connect(String),
    Status(u16),
    Io(String),
    Protocol(String),
    /// WebSocket close frame with this code.
    Close(u16),
    Eof,
}

impl End {
    pub fn connect(e: std::io::Error) -> Self {
        End::Connect(e.to_string())
    }

    /// A short, low-cardinality label for grouping failures in the report.
    pub fn kind(&self) -> String {
        match self {
            End::Connect(e) => format!("connect: {e}"),
            End::Status(s) => format!("http {s}"),
            End::Io(e) => format!("io: {e}"),
            End::Protocol(_) => "protocol".to_owned(),
            End::Close(c) => format!("ws close {c}"),
            End::Eof => "eof".to_owned(),
        }
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Protocol(p) => write!(f, "protocol: {p}"),
            other => f.write_str(&other.kind()),
        }
    }
}

/// Where to resume from on (re)connect.
#[derive(Debug, Clone, Default)]
pub struct Resume {
    /// WebSocket `since`: last offset and epoch seen on the channel.
    pub position: Option<(u64, String)>,
    /// SSE `Last-Event-ID`.
    pub last_event_id: Option<String>,
}

/// An open subscriber connection of either transport, subscribed to one channel.
#[derive(Debug)]
pub enum Conn {
    Ws(Box<ws::WsConn>),
    Sse(Box<sse::SseConn>),
    SseH2(Box<h2sse::H2SseConn>),
}

impl Conn {
    /// Connects and requests the subscription; the `Subscribed` event arrives via
    /// [`Conn::next_batch`].
    /// `target` is the node and its index; `h2` the shared HTTP/2 connections and this
    /// subscriber's index (`sse-h2` only).
    pub async fn open(
        transport: Transport,
        dialer: &Dialer,
        (target, target_idx): (&Target, usize),
        channel: &str,
        resume: &Resume,
        token: Option<&str>,
        h2: Option<(&h2sse::H2Pool, usize)>,
    ) -> Result<Self, End> {
        match transport {
            Transport::Ws => {
                let since = resume.position.as_ref().map(|(o, e)| (*o, e.as_str()));
                ws::WsConn::open(dialer, target, channel, since, token)
                    .await
                    .map(|c| Conn::Ws(Box::new(c)))
            }
            Transport::Sse => sse::SseConn::open(
                dialer,
                target,
                &[channel],
                resume.last_event_id.as_deref(),
                token,
            )
            .await
            .map(|c| Conn::Sse(Box::new(c))),
            Transport::SseH2 => {
                let (pool, idx) = h2.ok_or_else(|| End::Protocol("no HTTP/2 pool".into()))?;
                let conn = pool.sender(dialer, target, target_idx, idx).await?;
                h2sse::H2SseConn::open(
                    conn,
                    target,
                    channel,
                    resume.last_event_id.as_deref(),
                    token,
                )
                .await
                .map(|c| Conn::SseH2(Box::new(c)))
            }
        }
    }

    /// Reads until the server confirms the subscription (`Ok`) or refuses it with an error
    /// (`End::Protocol` with its code); other events before that are skipped.
    pub async fn await_subscribed(&mut self) -> Result<(), End> {
        let mut outcome: Option<Result<(), End>> = None;
        while outcome.is_none() {
            self.next_batch(&mut |ev| match ev {
                Event::Subscribed { .. } => outcome = Some(Ok(())),
                Event::Error { code } => outcome = Some(Err(End::Protocol(code.to_owned()))),
                _ => {}
            })
            .await?;
        }
        outcome.unwrap_or(Ok(()))
    }

    /// Waits for data and dispatches every complete event it holds.
    pub async fn next_batch<F: FnMut(Event<'_>)>(&mut self, f: &mut F) -> Result<(), End> {
        match self {
            Conn::Ws(c) => c.next_batch(f).await,
            Conn::Sse(c) => c.next_batch(f).await,
            Conn::SseH2(c) => c.next_batch(f).await,
        }
    }
}
