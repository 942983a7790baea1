//! The read side of a WebSocket: client frames in, ops executed, replies queued to the writer.
//!
//! Ops run one at a time in arrival order, so a client sees replies in the order it sent ops.
//! Any frame at all counts as a sign of life for the ping timeout.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use herald_core::{
    ErrorCode,
    protocol::{self, ClientOp, Opcode},
};
use tokio::io::AsyncRead;

use super::{
    close, elapsed_ms,
    frame::{self, BadClose, FrameReader, ReadError},
    send_error, send_text, subscribe,
};
use crate::{
    app::App,
    http::publish::publish_one,
    hub::{CloseReason, Item},
    transport::Connection,
};

pub async fn run<R: AsyncRead + Unpin>(
    app: Arc<App>,
    conn: Arc<Connection>,
    mut frames: FrameReader<R>,
    last_heard: Arc<AtomicU64>,
    clock: tokio::time::Instant,
) {
    // A message split over continuation frames, bounded by the same limit as whole ones.
    let mut partial: Option<Vec<u8>> = None;
    let limit = app.config.max_ws_frame_bytes;
    let end = |code, reason| conn.outbox.close(CloseReason::Closed { code, reason });
    loop {
        let frame = match frames.read().await {
            Ok(f) => f,
            Err(ReadError::TooBig) => return end(close::TOO_BIG, "message too big"),
            Err(ReadError::Gone) => return end(close::NORMAL, "connection lost"),
            Err(ReadError::Protocol(why)) => {
                tracing::debug!(why, "WebSocket protocol error");
                return end(close::PROTOCOL, why);
            }
        };
        last_heard.store(elapsed_ms(clock), Ordering::Relaxed);
        let message = match frame.opcode {
            frame::TEXT if frame.fin && partial.is_none() => frame.payload,
            frame::TEXT => {
                if partial.is_some() {
                    return end(close::PROTOCOL, "new message before the last one finished");
                }
                partial = Some(frame.payload);
                continue;
            }
            frame::CONTINUATION => {
                let Some(buf) = partial.as_mut() else {
                    return end(close::PROTOCOL, "continuation without a message");
                };
                if buf.len() + frame.payload.len() > limit {
                    return end(close::TOO_BIG, "message too big");
                }
                buf.extend_from_slice(&frame.payload);
                if !frame.fin {
                    continue;
                }
                partial.take().unwrap_or_default()
            }
            frame::BINARY => {
                send_error(
                    &conn,
                    None,
                    ErrorCode::BadRequest,
                    "binary frames are not supported; send JSON text",
                );
                continue;
            }
            frame::PING => {
                conn.outbox
                    .push(Item::raw(protocol::frame(Opcode::Pong, &frame.payload)));
                continue;
            }
            frame::CLOSE => {
                return match frame::check_close(&frame.payload) {
                    Ok(()) => end(close::NORMAL, ""),
                    Err(BadClose::Protocol(why)) => end(close::PROTOCOL, why),
                    Err(BadClose::Utf8) => end(close::INVALID_DATA, "close reason is not UTF-8"),
                };
            }
            _ => continue, // pong: only a sign of life
        };
        if std::str::from_utf8(&message).is_err() {
            return end(close::INVALID_DATA, "invalid UTF-8");
        }
        // Boxed: ops are rare, and inlined their futures would size every idle reader task.
        Box::pin(handle_op(&app, &conn, &message)).await;
    }
}

async fn handle_op(app: &App, conn: &Connection, text: &[u8]) {
    let op = match protocol::parse_client_op(text, &app.limits) {
        Ok(op) => op,
        Err(e) => return send_error(conn, e.id, e.rejection.code, &e.rejection.message),
    };
    match op {
        ClientOp::Subscribe { id, channel, since } => {
            subscribe(app, conn, channel, since, id).await
        }
        ClientOp::Unsubscribe { id, channel } => {
            if conn.remove(&channel) {
                send_text(conn, &protocol::unsubscribed_frame(id, &channel));
            } else {
                send_error(
                    conn,
                    id,
                    ErrorCode::BadRequest,
                    &format!("not subscribed to {channel}"),
                );
            }
        }
        ClientOp::Publish { id, publish } => {
            if !app.config.allow_client_publish {
                return send_error(
                    conn,
                    id,
                    ErrorCode::Forbidden,
                    "publishing over WebSocket is not enabled",
                );
            }
            let channel = publish.channel.clone();
            match publish_one(app, publish).await {
                Ok(v) => {
                    let offset = v["offset"].as_u64().unwrap_or(0);
                    let epoch = v["epoch"].as_str().and_then(herald_core::Epoch::parse);
                    match epoch {
                        Some(epoch) => send_text(
                            conn,
                            &protocol::published_frame(
                                id,
                                &channel,
                                &herald_core::StreamPosition { epoch, offset },
                            ),
                        ),
                        None => send_error(
                            conn,
                            id,
                            ErrorCode::Internal,
                            "publish result without epoch",
                        ),
                    }
                }
                Err((code, message)) => send_error(conn, id, code, &message),
            }
        }
        ClientOp::Ping { id } => send_text(conn, &protocol::pong_frame(id)),
    }
}
