//! Fuzz harnesses for the server's byte-level readers: the WebSocket frame reader and the SSE
//! fast path's request head. The cargo-fuzz targets `ws_frame` and `sse_head` (in `fuzz/`) call
//! these functions, and the tests below replay the committed corpus through them (see
//! `herald_core::fuzzing` for the targets of the pure encodings). Compiled for tests and with
//! the `fuzzing` feature only.

mod sse_head;
mod ws_frames;

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

pub use sse_head::sse_head;
pub use ws_frames::{ws_frames, ws_frames_limit};

/// Polls `f` to completion on this thread. The harnesses' IO is never pending for long (it is
/// a byte slice), so no runtime is needed; a future still pending after many polls is a hang.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
    panic!("a future over in-memory IO never completed");
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
