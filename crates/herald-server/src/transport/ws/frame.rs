//! Reading client WebSocket frames (RFC 6455 section 5), cancel-safe by construction.
//!
//! fastwebsockets performs the handshake, but its read half allocates an 8 KiB buffer per
//! connection up front, which is most of what an idle connection would cost. Client frames are
//! simple (always masked, control frames tiny), so this reader buffers only the bytes of the
//! frame being read, on the heap and only while one is arriving: an idle connection's reader
//! holds no allocation.
//!
//! Every byte read is kept in the reader itself ([`FrameReader::poll_frame`] reads into its own
//! buffer and parses from there), so dropping a pending [`FrameReader::read`] loses nothing: the
//! next call carries on where the last one stopped. That is what lets the connection task wait
//! for a frame inside a `select!` beside its outbox and timers, with no reader task of its own.

use std::{
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read beyond the frame being read, at most (the next small frame often arrives with it).
/// The reader's buffer is never larger than the frame (header and payload) plus this.
pub const READ_AHEAD: usize = 256;

/// The longest frame header: 2 bytes, a 64-bit length, the mask.
pub const MAX_HEADER: usize = 14;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// One client frame, unmasked.
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the TCP connection or it broke.
    Gone,
    /// A frame longer than the limit (close 1009).
    TooBig,
    /// A frame that breaks RFC 6455 (close 1002).
    Protocol(&'static str),
}

/// Why a client's close frame is invalid.
#[derive(Debug, PartialEq, Eq)]
pub enum BadClose {
    /// A 1-byte payload or a status code no endpoint may send (close 1002).
    Protocol(&'static str),
    /// The reason is not UTF-8 (close 1007).
    Utf8,
}

/// Checks a client's close payload (RFC 6455 5.5.1 and 7.4): empty, or a status code an endpoint
/// may send (1000-1003, 1007-1014, 3000-4999; never 1004-1006, 1015 or anything below 1000 or
/// above 4999) followed by a UTF-8 reason.
pub fn check_close(payload: &[u8]) -> Result<(), BadClose> {
    let (code, reason) = match payload {
        [] => return Ok(()),
        [_] => return Err(BadClose::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => (u16::from_be_bytes([*hi, *lo]), reason),
    };
    if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
        return Err(BadClose::Protocol("invalid close code"));
    }
    std::str::from_utf8(reason).map_err(|_| BadClose::Utf8)?;
    Ok(())
}

pub struct FrameReader<R> {
    io: R,
    max_payload: usize,
    /// `buf[..filled]` is read and not yet returned as frames; the rest is zeroed room for the
    /// next read (so it is zeroed once, however the bytes trickle in). Empty, with no
    /// allocation, whenever no frame is partly read (also while waiting for one).
    buf: Vec<u8>,
    filled: usize,
}

/// What the buffered bytes hold.
enum Parsed {
    /// A whole frame, and how many bytes it took.
    Frame(Frame, usize),
    /// Not a whole frame yet: it needs this many bytes in all (header, then the whole frame).
    Need(usize),
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader of a stream with nothing read yet (the fuzz harness and tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn new(io: R, max_payload: usize) -> Self {
        Self::with_early(io, Vec::new(), max_payload)
    }

    /// A reader whose stream begins with `early`: bytes the client sent right after the
    /// handshake, already read from the socket by whoever did the handshake.
    pub fn with_early(io: R, early: Vec<u8>, max_payload: usize) -> Self {
        let filled = early.len();
        Self {
            io,
            max_payload,
            buf: early,
            filled,
        }
    }

    /// The next frame. Cancel-safe: see the module docs.
    pub async fn read(&mut self) -> Result<Frame, ReadError> {
        poll_fn(|cx| self.poll_frame(cx)).await
    }

    /// Polls for the next frame; everything read meanwhile stays in `self`.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ReadError>> {
        loop {
            let need = match parse(&self.buf[..self.filled], self.max_payload)? {
                Parsed::Frame(frame, used) => {
                    self.consume(used);
                    return Poll::Ready(Ok(frame));
                }
                Parsed::Need(need) => need,
            };
            if self.filled == 0 {
                // Waiting for a frame to begin, which is what an idle connection does: read on
                // the stack, and allocate only for bytes that came.
                let mut first = [0u8; READ_AHEAD];
                let mut read = ReadBuf::new(&mut first);
                if ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)).is_err() {
                    return Poll::Ready(Err(ReadError::Gone));
                }
                if read.filled().is_empty() {
                    return Poll::Ready(Err(ReadError::Gone));
                }
                self.buf = read.filled().to_vec();
                self.filled = self.buf.len();
                continue;
            }
            // At most the frame and `READ_AHEAD` more: exactly that (no doubling), so what a
            // header claims costs no more than the payload limit allows.
            let room = need.max(self.filled + READ_AHEAD);
            if self.buf.len() < room {
                self.buf.reserve_exact(room - self.buf.len());
                self.buf.resize(room, 0);
            }
            let mut read = ReadBuf::new(&mut self.buf[self.filled..room]);
            if ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)).is_err() {
                return Poll::Ready(Err(ReadError::Gone));
            }
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Err(ReadError::Gone));
            }
            self.filled += n;
        }
    }

    /// Drops the first `used` buffered bytes (a frame returned); frees the buffer once empty.
    fn consume(&mut self, used: usize) {
        if used == self.filled {
            self.buf = Vec::new();
            self.filled = 0;
        } else {
            self.buf.copy_within(used..self.filled, 0);
            self.filled -= used;
        }
    }

    /// Reads and drops everything until the peer closes (or the connection fails).
    pub async fn discard_until_eof(&mut self) {
        self.buf = Vec::new();
        self.filled = 0;
        // On the heap: this runs in the connection's task, whose size is that of its largest
        // state.
        let mut sink = vec![0u8; READ_AHEAD];
        poll_fn(|cx| {
            loop {
                let mut read = ReadBuf::new(&mut sink);
                match ready!(Pin::new(&mut self.io).poll_read(cx, &mut read)) {
                    Ok(()) if !read.filled().is_empty() => continue,
                    _ => return Poll::Ready(()),
                }
            }
        })
        .await
    }
}

/// Parses the frame at the start of `buf` (RFC 6455 5.2, client to server), reporting what
/// breaks the RFC as soon as the bytes that show it are there.
fn parse(buf: &[u8], max_payload: usize) -> Result<Parsed, ReadError> {
    let &[b0, b1, ref rest @ ..] = buf else {
        return Ok(Parsed::Need(2));
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    let opcode = b0 & 0x0f;
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(ReadError::Protocol("unknown opcode"));
    }
    if b1 & 0x80 == 0 {
        return Err(ReadError::Protocol("client frames must be masked"));
    }
    let (len, rest) = match b1 & 0x7f {
        126 => match rest.split_first_chunk::<2>() {
            Some((b, rest)) => (u64::from(u16::from_be_bytes(*b)), rest),
            None => return Ok(Parsed::Need(4)),
        },
        127 => match rest.split_first_chunk::<8>() {
            Some((b, rest)) => {
                // RFC 6455 5.2: "the most significant bit MUST be 0" (a broken or hostile
                // client, not merely a big frame).
                if b[0] & 0x80 != 0 {
                    return Err(ReadError::Protocol("64-bit length with the top bit set"));
                }
                (u64::from_be_bytes(*b), rest)
            }
            None => return Ok(Parsed::Need(10)),
        },
        n => (u64::from(n), rest),
    };
    if opcode >= CLOSE && (len > 125 || !fin) {
        return Err(ReadError::Protocol("invalid control frame"));
    }
    if len > max_payload as u64 {
        return Err(ReadError::TooBig);
    }
    // Within `max_payload`, so it fits in memory.
    let len = len as usize;
    let header = buf.len() - rest.len() + 4;
    debug_assert!(header <= MAX_HEADER);
    let Some(frame) = buf.get(header..header + len) else {
        return Ok(Parsed::Need(header + len));
    };
    let mask = &buf[header - 4..header];
    let payload = frame
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect();
    Ok(Parsed::Frame(
        Frame {
            fin,
            opcode,
            payload,
        },
        header + len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![first];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [9u8, 8, 7, 6];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Frame, ReadError>> {
        let mut r = FrameReader::new(&bytes[..], max);
        let mut out = Vec::new();
        loop {
            let f = r.read().await;
            let stop = f.is_err();
            out.push(f);
            if stop {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn reads_back_to_back_frames_of_every_length_encoding() {
        let mut bytes = masked(0x81, b"hello");
        bytes.extend(masked(0x01, &[b'a'; 300]));
        bytes.extend(masked(0x80, &[b'b'; 70_000]));
        bytes.extend(masked(0x89, b"p"));
        let frames = read_all(bytes, 100_000).await;
        let ok: Vec<(bool, u8, usize)> = frames
            .iter()
            .filter_map(|f| f.as_ref().ok())
            .map(|f| (f.fin, f.opcode, f.payload.len()))
            .collect();
        assert_eq!(
            ok,
            [
                (true, TEXT, 5),
                (false, TEXT, 300),
                (true, CONTINUATION, 70_000),
                (true, PING, 1)
            ]
        );
        assert_eq!(
            frames[0].as_ref().map(|f| f.payload.clone()).ok(),
            Some(b"hello".to_vec())
        );
        assert!(matches!(frames.last(), Some(Err(ReadError::Gone))));
    }

    #[tokio::test]
    async fn a_read_dropped_mid_frame_loses_nothing() {
        // What a `select!` does when another branch wins: the pending read is dropped. The
        // next read must return the frame whole, from the bytes the dropped one had read.
        let (mut client, server) = tokio::io::duplex(64);
        let mut r = FrameReader::new(server, 1000);
        let mut bytes = masked(0x81, b"hello, world");
        bytes.extend(masked(0x89, b"p"));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for chunk in bytes[..9].chunks(2) {
            tokio::io::AsyncWriteExt::write_all(&mut client, chunk)
                .await
                .expect("write");
            let read = std::pin::pin!(r.read());
            assert!(read.poll(&mut cx).is_pending());
        }
        assert!(!r.buf.is_empty(), "the partial frame is kept in the reader");
        tokio::io::AsyncWriteExt::write_all(&mut client, &bytes[9..])
            .await
            .expect("write");
        let f = r.read().await.map_err(|e| format!("{e:?}")).expect("frame");
        assert_eq!(
            (f.fin, f.opcode, &f.payload[..]),
            (true, TEXT, &b"hello, world"[..])
        );
        let f = r.read().await.map_err(|e| format!("{e:?}")).expect("frame");
        assert_eq!((f.opcode, &f.payload[..]), (PING, &b"p"[..]));
        assert_eq!(r.buf.capacity(), 0, "an idle reader holds no buffer");
        drop(client);
        assert!(matches!(r.read().await, Err(ReadError::Gone)));
    }

    #[test]
    fn close_payloads_are_checked_against_rfc_6455() {
        let close = |code: u16, reason: &[u8]| [&code.to_be_bytes()[..], reason].concat();
        assert_eq!(check_close(b""), Ok(()));
        for code in [1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4000, 4999] {
            assert_eq!(check_close(&close(code, b"bye")), Ok(()), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert!(
                matches!(check_close(&close(code, b"")), Err(BadClose::Protocol(_))),
                "{code}"
            );
        }
        assert!(matches!(check_close(&[0x03]), Err(BadClose::Protocol(_))));
        assert_eq!(
            check_close(&close(1000, &[0xff, 0xfe])),
            Err(BadClose::Utf8)
        );
        assert_eq!(check_close(&close(1000, "é".as_bytes())), Ok(()));
    }

    #[tokio::test]
    async fn rejects_what_the_rfc_forbids() {
        let unmasked = vec![0x81, 0x01, b'x'];
        assert!(matches!(
            read_all(unmasked, 10).await[0],
            Err(ReadError::Protocol(_))
        ));
        let rsv = masked(0xC1, b"x");
        assert!(matches!(
            read_all(rsv, 10).await[0],
            Err(ReadError::Protocol(_))
        ));
        let fragmented_ping = masked(0x09, b"x");
        assert!(matches!(
            read_all(fragmented_ping, 10).await[0],
            Err(ReadError::Protocol(_))
        ));
        let opcode = masked(0x83, b"x");
        assert!(matches!(
            read_all(opcode, 10).await[0],
            Err(ReadError::Protocol(_))
        ));
        let big = masked(0x81, &[0u8; 11]);
        assert!(matches!(read_all(big, 10).await[0], Err(ReadError::TooBig)));
    }

    #[tokio::test]
    async fn a_64_bit_length_with_the_top_bit_set_is_a_protocol_error() {
        // Found by the `ws_frame` fuzz harness's RFC reading: this was "too big" (1009).
        let mut f = vec![0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        f.extend_from_slice(&[1, 2, 3, 4]);
        assert!(matches!(
            read_all(f, usize::MAX).await[0],
            Err(ReadError::Protocol(_))
        ));
    }
}
