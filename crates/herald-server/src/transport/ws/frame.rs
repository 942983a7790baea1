//! Reading client WebSocket frames (RFC 6455 section 5) with a small, fixed buffer.
//!
//! fastwebsockets performs the handshake, but its read half allocates an 8 KiB buffer per
//! connection up front, which is most of what an idle connection would cost. Client frames are
//! simple (always masked, control frames tiny), so this reader keeps only a few hundred bytes
//! buffered and allocates a payload only when a frame arrives.

use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// Read buffer per connection: enough for the header and a typical small op in one read.
const BUFFER: usize = 256;

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
    io: BufReader<R>,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R, max_payload: usize) -> Self {
        Self {
            io: BufReader::with_capacity(BUFFER, io),
            max_payload,
        }
    }

    pub async fn read(&mut self) -> Result<Frame, ReadError> {
        let mut head = [0u8; 2];
        self.fill(&mut head).await?;
        let fin = head[0] & 0x80 != 0;
        if head[0] & 0x70 != 0 {
            return Err(ReadError::Protocol("reserved bits set"));
        }
        let opcode = head[0] & 0x0f;
        if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
            return Err(ReadError::Protocol("unknown opcode"));
        }
        if head[1] & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let len = match head[1] & 0x7f {
            126 => {
                let mut b = [0u8; 2];
                self.fill(&mut b).await?;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                self.fill(&mut b).await?;
                // RFC 6455 5.2: "the most significant bit MUST be 0" (a broken or hostile
                // client, not merely a big frame).
                if b[0] & 0x80 != 0 {
                    return Err(ReadError::Protocol("64-bit length with the top bit set"));
                }
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        if opcode >= CLOSE && (len > 125 || !fin) {
            return Err(ReadError::Protocol("invalid control frame"));
        }
        if len > self.max_payload as u64 {
            return Err(ReadError::TooBig);
        }
        let mut mask = [0u8; 4];
        self.fill(&mut mask).await?;
        let mut payload = vec![0u8; len as usize];
        self.fill(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
        Ok(Frame {
            fin,
            opcode,
            payload,
        })
    }

    /// Reads and drops everything until the peer closes (or the connection fails).
    pub async fn discard_until_eof(&mut self) {
        let mut sink = [0u8; BUFFER];
        while let Ok(1..) = self.io.read(&mut sink).await {}
    }

    async fn fill(&mut self, buf: &mut [u8]) -> Result<(), ReadError> {
        self.io
            .read_exact(buf)
            .await
            .map(|_| ())
            .map_err(|_| ReadError::Gone)
    }
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
