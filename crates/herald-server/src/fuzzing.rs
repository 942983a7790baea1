//! Fuzz harnesses for the server's byte-level readers: the WebSocket frame reader and the SSE
//! fast path's request head. The cargo-fuzz targets `ws_frame` and `sse_head` (in `fuzz/`) call
//! these functions, and the tests below replay the committed corpus through them (see
//! `herald_core::fuzzing` for the targets of the pure encodings). Compiled for tests and with
//! the `fuzzing` feature only.

mod ws_frames;

pub use ws_frames::{ws_frames, ws_frames_limit};

use crate::{http::query, transport::sse_direct};

/// The harness of target `sse_head`: `data` as the first bytes a client sends on a fresh
/// connection. What the fast path takes must be a complete `GET /v1/sse` head and nothing
/// after it, decided by the head alone; its query and `Last-Event-ID` then go through the same
/// checks as on the hyper route.
pub fn sse_head(data: &[u8]) {
    let Some(req) = sse_direct::parse_head(data) else {
        return;
    };
    let head = &data[..req.head_len];
    // Empty lines before the request line are skipped (RFC 9112 2.2), as hyper does.
    let line = &head[head.iter().position(|b| !b"\r\n".contains(b)).unwrap_or(0)..];
    assert!(line.starts_with(b"GET /v1/sse"), "{head:?}");
    assert!(head.ends_with(b"\n"), "{head:?}");
    // The decision depends on the head only: the same without what follows it, and nothing for
    // a head cut short (a peek may see any prefix).
    assert_eq!(sse_direct::parse_head(head).as_ref(), Some(&req));
    assert_eq!(sse_direct::parse_head(&head[..head.len() - 1]), None);

    for name in query::values(req.query.as_deref(), "channel") {
        let _ = herald_core::ChannelName::parse(&name);
    }
    if let Some(Ok(token)) = &req.last_event_id {
        herald_core::fuzzing::resume::resume_token(token.as_bytes());
    }
    if let Some(token) = query::first(req.query.as_deref(), "last_event_id") {
        herald_core::fuzzing::resume::resume_token(token.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use herald_core::fuzzing::replay;

    #[test]
    fn ws_frame_corpus_holds() {
        replay("ws_frame", super::ws_frames);
    }

    #[test]
    fn sse_head_corpus_holds() {
        replay("sse_head", super::sse_head);
    }
}
