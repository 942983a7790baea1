//! Fuzz target `ws_frame`: arbitrary bytes from a WebSocket client into [`FrameReader`].
//!
//! The bytes are decoded a second time by [`Rfc`], a plain reading of RFC 6455 section 5 that
//! keeps no buffer: the reader must return the same frames (flags, opcode, unmasked payload)
//! and stop with the same kind of error, never panic, never hold more than its limit, whatever
//! the limit and however the bytes are split across reads, and however often a pending read is
//! dropped (it is polled through a fresh call every time).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::io::{AsyncRead, ReadBuf};

use crate::transport::ws::frame::{BadClose, CLOSE, Frame, FrameReader, ReadError, check_close};

/// The payload limits tried: around the 7-bit and 16-bit length encodings, and none at all.
const LIMITS: [usize; 8] = [0, 1, 125, 126, 1000, 65_535, 65_536, 1 << 20];

/// How many bytes each read hands over (`usize::MAX`: all that fits).
const CHUNKS: [usize; 8] = [1, 2, 3, 5, 8, 64, 255, usize::MAX];

/// The payload limit the harness uses for `data` (its first byte picks it).
pub fn ws_frames_limit(data: &[u8]) -> usize {
    LIMITS[usize::from(data.first().copied().unwrap_or(0) & 7)]
}

/// The harness. The first byte chooses the payload limit, the read size and whether reads
/// stall (return `Pending` first); the rest is the byte stream from the client.
pub fn ws_frames(data: &[u8]) {
    let Some((&config, input)) = data.split_first() else {
        return;
    };
    let max = ws_frames_limit(data);
    let io = Trickle {
        data: input,
        chunk: CHUNKS[usize::from(config >> 3 & 7)],
        stall: config & 0x40 != 0,
        stalled: false,
    };
    let mut reader = FrameReader::new(io, max);
    let mut rfc = Rfc { input, pos: 0, max };
    loop {
        // Polled afresh each time, as a `select!` that another branch won would: a read
        // dropped while pending must lose nothing.
        let got = poll_fresh(&mut reader);
        let want = rfc.next();
        match (got, want) {
            (
                Ok(frame),
                Step::Frame {
                    fin,
                    opcode,
                    mask,
                    payload,
                },
            ) => {
                assert_eq!((frame.fin, frame.opcode), (fin, opcode));
                assert!(frame.payload.len() <= max && frame.payload.capacity() <= max);
                let unmasked = payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]);
                assert!(frame.payload.iter().copied().eq(unmasked), "payload");
                if opcode == CLOSE {
                    let kind = |r: Result<(), BadClose>| r.map_err(|e| matches!(e, BadClose::Utf8));
                    assert_eq!(
                        kind(check_close(&frame.payload)),
                        kind(rfc_close(&frame.payload))
                    );
                }
            }
            (Err(ReadError::Gone), Step::End(End::Gone))
            | (Err(ReadError::TooBig), Step::End(End::TooBig))
            | (Err(ReadError::Protocol(_)), Step::End(End::Protocol)) => return,
            (got, want) => panic!(
                "reader {:?}, RFC {want:?}",
                got.map(|f| (f.fin, f.opcode, f.payload.len()))
            ),
        }
    }
}

/// The next frame, each poll through a new [`FrameReader::read`] future, dropped when pending.
fn poll_fresh(reader: &mut FrameReader<Trickle<'_>>) -> Result<Frame, ReadError> {
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000_000 {
        if let Poll::Ready(out) = std::pin::pin!(reader.read()).poll(&mut cx) {
            return out;
        }
    }
    panic!("a read over in-memory IO never completed");
}

#[derive(Debug)]
enum End {
    Gone,
    TooBig,
    Protocol,
}

#[derive(Debug)]
enum Step<'a> {
    Frame {
        fin: bool,
        opcode: u8,
        mask: [u8; 4],
        payload: &'a [u8],
    },
    End(End),
}

/// RFC 6455 section 5.2, for frames from a client, with no extension negotiated.
struct Rfc<'a> {
    input: &'a [u8],
    pos: usize,
    max: usize,
}

impl<'a> Rfc<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], End> {
        let rest = &self.input[self.pos..];
        let n = usize::try_from(n).map_err(|_| End::Gone)?;
        let got = rest.get(..n).ok_or(End::Gone)?;
        self.pos += n;
        Ok(got)
    }

    fn next(&mut self) -> Step<'a> {
        match self.frame() {
            Ok(step) => step,
            Err(end) => Step::End(end),
        }
    }

    fn frame(&mut self) -> Result<Step<'a>, End> {
        let head = self.take(2)?;
        let fin = head[0] & 0x80 != 0;
        // RSV1-3 "MUST be 0 unless an extension is negotiated".
        if head[0] & 0x70 != 0 {
            return Err(End::Protocol);
        }
        // Opcodes 3-7 and 0xB-0xF are reserved.
        let opcode = head[0] & 0x0f;
        if matches!(opcode, 3..=7 | 0xb..=0xf) {
            return Err(End::Protocol);
        }
        // "All frames sent from client to server have this bit set to 1."
        if head[1] & 0x80 == 0 {
            return Err(End::Protocol);
        }
        let len = match head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.take(1)?[0], self.take(1)?[0]])),
            127 => {
                let b = self.take(8)?;
                let n = u64::from_be_bytes(b.try_into().map_err(|_| End::Gone)?);
                // "the most significant bit MUST be 0".
                if n >> 63 != 0 {
                    return Err(End::Protocol);
                }
                n
            }
            n => u64::from(n),
        };
        // "All control frames MUST have a payload length of 125 bytes or less and MUST NOT be
        // fragmented."
        if opcode >= 8 && (len > 125 || !fin) {
            return Err(End::Protocol);
        }
        if len > self.max as u64 {
            return Err(End::TooBig);
        }
        let mask = self.take(4)?.try_into().map_err(|_| End::Gone)?;
        let payload = self.take(len)?;
        Ok(Step::Frame {
            fin,
            opcode,
            mask,
            payload,
        })
    }
}

/// RFC 6455 5.5.1 and 7.4: a close body is empty, or a status code an endpoint may send (the
/// defined 1000-1003 and 1007-1011, the IANA-registered 1012-1014, and 3000-4999) and a UTF-8
/// reason. 1004 is reserved; 1005, 1006 and 1015 must never be sent.
fn rfc_close(payload: &[u8]) -> Result<(), BadClose> {
    let Some((code, reason)) = payload.split_first_chunk::<2>() else {
        return match payload.len() {
            0 => Ok(()),
            _ => Err(BadClose::Protocol("1 byte")),
        };
    };
    let code = u16::from_be_bytes(*code);
    let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 1012..=1014 | 3000..=4999);
    if !sendable {
        return Err(BadClose::Protocol("code"));
    }
    std::str::from_utf8(reason)
        .map(|_| ())
        .map_err(|_| BadClose::Utf8)
}

/// A client that sends `data` in reads of at most `chunk` bytes, each after a `Pending` when
/// `stall` is set, then closes.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
    stall: bool,
    stalled: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stall && !this.stalled {
            this.stalled = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        this.stalled = false;
        let n = this.chunk.min(buf.remaining()).min(this.data.len());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}
