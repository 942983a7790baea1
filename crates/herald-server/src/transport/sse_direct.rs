//! SSE without hyper on a fresh connection: the idle-memory fast path.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB header write buffer for as long as an HTTP/1
//! connection lives, which would be most of what an idle SSE subscriber costs. An SSE stream never
//! serves another request on its connection, so when the first request on a connection is a
//! plain `GET /v1/sse` head ([`crate::http::head`] says which heads qualify: none that hyper
//! could read differently), it is validated and subscribed exactly like the hyper route
//! ([`super::sse::open`]); then the head is consumed and the same [`SseBody`] is written straight
//! to the socket, delimited by closing the connection. Anything else, including every error, is
//! left untouched in the socket for hyper to serve, except a head hyper would refuse outright,
//! which is answered here with a JSON error (hyper's own answer has no body).

use std::{pin::pin, sync::Arc, time::Duration};

use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::sse::{self, SseBody};
use crate::{
    app::App,
    http::{
        cors::Verdict,
        head::{self, Head},
    },
    hub::CloseReason,
    limits::{Limit, Peer, refuse},
};

/// Largest request head looked at; a longer one goes to hyper.
const PEEK: usize = 4096;

/// The least time a connection accepted just before a drain has to send its first request.
const DRAIN_GRACE_FOR_NEW: Duration = Duration::from_secs(1);

/// The response head without its end: CORS lines follow.
const RESPONSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
cache-control: no-cache\r\nx-accel-buffering: no\r\nconnection: close\r\n";

/// Serves `stream` if its first request is an SSE subscription, answers it if hyper would refuse
/// its head (with a JSON error instead of hyper's empty 400); otherwise hands it back. Also
/// `None` when no byte arrived before `head_deadline` (`header_read_timeout`): the socket is
/// closed.
pub async fn try_serve(
    app: &Arc<App>,
    stream: TcpStream,
    peer: Peer,
    head_deadline: Instant,
) -> Option<TcpStream> {
    let head = tokio::select! {
        head = tokio::time::timeout_at(head_deadline, peek_head(&stream)) => match head {
            Ok(head) => head,
            Err(_) => {
                // Not a byte before the deadline: a silent socket.
                app.metrics.limits.hit(Limit::HeaderReadTimeout);
                return None;
            }
        },
        // A connection with no request yet does not hold up a drain, but it may be one a client
        // opened just before the drain began and is about to use: it gets the same chance as an
        // idle keep-alive connection, its own moment in the drain window (at least a second).
        () = idle_until_drained(app) => return None,
    };
    let req = match head {
        Head::Sse(req) => req,
        Head::Malformed { status, message } => {
            app.metrics
                .http_requests
                .with_label_values(&["other", &status.to_string()])
                .inc();
            // Boxed: rare, and inline its buffers would size every connection's task.
            let response = head::malformed_response(status, &message);
            Box::pin(refuse::write_and_close(stream, &response)).await;
            return None;
        }
        Head::Other => return Some(stream),
    };
    // A refused origin and every error are left to hyper, which reads the same request again
    // and answers it.
    let listing = !app.config.allowed_origins.is_any();
    let cors = app
        .config
        .allowed_origins
        .check(req.origin.as_deref(), req.host.as_deref());
    if matches!(cors, Verdict::Refused) {
        return Some(stream);
    }
    let permit = match app.connections.admit_stream(
        peer,
        req.forwarded_for.iter().map(Vec::as_slice),
        req.forwarded.iter().map(Vec::as_slice),
        false,
    ) {
        Ok(permit) => permit,
        // Answered here like a socket refused at accept: asking hyper to refuse it again would
        // count the refusal twice.
        Err(refusal) => {
            let response = refuse::response(refusal);
            Box::pin(refuse::write_and_close(stream, &response)).await;
            return None;
        }
    };
    let signal = CancellationToken::new();
    let mut body =
        match sse::open(app, req.query.as_deref(), req.last_event_id, signal.clone()).await {
            Ok(body) => body,
            // hyper reads the same request again and answers with the error.
            Err(_) => return Some(stream),
        };
    body.hold(permit);
    app.metrics
        .http_requests
        .with_label_values(&["sse", "200"])
        .inc();
    let head = format!("{RESPONSE_HEAD}{}\r\n", cors.head_lines(listing));
    stream_to(stream, req.head_len, head.into_bytes(), body, signal).await;
    None
}

async fn idle_until_drained(app: &Arc<App>) {
    let drained = app.drained();
    app.shutdown.cancelled().await;
    tokio::join!(drained, tokio::time::sleep(DRAIN_GRACE_FOR_NEW));
}

async fn peek_head(stream: &TcpStream) -> Head {
    // On the heap and dropped before anything else is awaited: the connection task keeps none of it.
    let mut buf = vec![0u8; PEEK];
    match stream.peek(&mut buf).await {
        Ok(n) => head::classify(&buf[..n]),
        Err(_) => Head::Other,
    }
}

async fn stream_to(
    mut stream: TcpStream,
    head_len: usize,
    response_head: Vec<u8>,
    body: SseBody,
    signal: CancellationToken,
) {
    let mut head = vec![0u8; head_len];
    if stream.read_exact(&mut head).await.is_err()
        || stream.write_all(&response_head).await.is_err()
    {
        return;
    }
    drop(head);
    drop(response_head);
    let outbox = body.outbox().clone();
    let (mut read, mut write) = stream.split();
    // The client sends nothing more; EOF means it hung up (as hyper would notice by reading),
    // found at once instead of at the next heartbeat.
    let gone = client_gone(&mut read);
    tokio::pin!(gone);
    let mut body = pin!(body);
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            () = &mut gone => return,
        };
        let Some(Ok(frame)) = frame else { break };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let pending = write.write_all(&data);
        tokio::pin!(pending);
        tokio::select! {
            res = &mut pending => if res.is_err() { return },
            () = &mut gone => return,
            () = signal.cancelled() => {
                // A peer that stopped reading blocks the write: cut it off once it overflowed.
                if outbox.reason() == Some(CloseReason::SlowConsumer) {
                    return;
                }
                // Shutdown: finish this write (bounded) so the client sees whole events.
                if !matches!(tokio::time::timeout(Duration::from_secs(1), pending).await, Ok(Ok(()))) {
                    return;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), write.shutdown()).await;
}

/// Resolves when the peer closes its side (or the socket fails); ignores anything it sends.
async fn client_gone(read: &mut tokio::net::tcp::ReadHalf<'_>) {
    let mut byte = [0u8; 1];
    while let Ok(1..) = read.read(&mut byte).await {}
}
