//! The WebSocket wire format the baseline needs (RFC 6455), by hand: the handshake's accept
//! key, server frame headers, and an incremental reader of client frames.
//!
//! The reader is a state machine fed with whatever bytes a non-blocking read returned, so the
//! connection task holds only a few dozen bytes of parser state between reads (no buffered
//! reader, no allocation unless a control frame arrives). Data frames are skipped unread:
//! nothing a subscriber sends matters to the baseline, but pings must be answered and a close
//! echoed, which needs the unmasked control payload.

use base64::Engine as _;

/// Largest server frame header: 2 bytes + 8-byte extended length.
pub const MAX_HEADER: usize = 10;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key);
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.digest().bytes())
}

/// Writes the header of an unmasked, final server frame of `len` payload bytes into the END of
/// `out` (`out.len()` must be at least the header size) and returns where it starts. Encoders
/// reserve [`MAX_HEADER`] bytes in front of the payload and call this once the length is known,
/// so a frame is built in one buffer without moving the payload.
pub fn header_before(out: &mut [u8; MAX_HEADER], opcode: u8, len: usize) -> usize {
    let first = 0x80 | opcode;
    if len < 126 {
        out[8] = first;
        out[9] = len as u8;
        8
    } else if len <= 0xffff {
        out[6] = first;
        out[7] = 126;
        out[8..10].copy_from_slice(&(len as u16).to_be_bytes());
        6
    } else {
        out[0] = first;
        out[1] = 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        0
    }
}

/// Appends a complete server frame with `payload` to `out`.
pub fn frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    let mut h = [0u8; MAX_HEADER];
    let at = header_before(&mut h, opcode, payload.len());
    out.extend_from_slice(&h[at..]);
    out.extend_from_slice(payload);
}

/// What a client sent that needs an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Answer with a pong carrying this payload.
    Ping(Vec<u8>),
    /// The client closes: echo its status code (RFC 6455 5.5.1) and stop.
    Close(Option<u16>),
}

/// A client frame that breaks RFC 6455: close with 1002.
#[derive(Debug, PartialEq, Eq)]
pub struct ProtocolError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting the header (`have` bytes of `need` so far).
    Header,
    /// Skipping or collecting `left` payload bytes.
    Payload,
}

/// Incremental client frame reader.
#[derive(Debug)]
pub struct ClientFrames {
    state: State,
    head: [u8; 14],
    have: u8,
    need: u8,
    opcode: u8,
    mask: [u8; 4],
    /// Payload bytes of the current frame not read yet.
    left: u64,
    /// Payload bytes read so far (the mask index).
    seen: u64,
    /// The unmasked payload of the control frame being read (allocated only then).
    control: Vec<u8>,
}

impl Default for ClientFrames {
    fn default() -> Self {
        Self {
            state: State::Header,
            head: [0; 14],
            have: 0,
            need: 2,
            opcode: 0,
            mask: [0; 4],
            left: 0,
            seen: 0,
            control: Vec::new(),
        }
    }
}

impl ClientFrames {
    /// Feeds bytes read from the socket; calls `on_control` for every complete ping or close.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut on_control: impl FnMut(Control),
    ) -> Result<(), ProtocolError> {
        while !input.is_empty() {
            match self.state {
                State::Header => {
                    let take = usize::from(self.need - self.have).min(input.len());
                    let at = usize::from(self.have);
                    self.head[at..at + take].copy_from_slice(&input[..take]);
                    self.have += take as u8;
                    input = &input[take..];
                    if self.have == self.need {
                        self.header_progress()?;
                        if self.state == State::Payload && self.left == 0 {
                            self.frame_done(&mut on_control);
                        }
                    }
                }
                State::Payload => {
                    let take = usize::try_from(self.left)
                        .unwrap_or(usize::MAX)
                        .min(input.len());
                    if self.opcode >= CLOSE {
                        for &b in &input[..take] {
                            let m = self.mask[(self.seen & 3) as usize];
                            self.control.push(b ^ m);
                            self.seen += 1;
                        }
                    } else {
                        // Data frames are discarded: no need to unmask what nobody reads.
                        self.seen += take as u64;
                    }
                    self.left -= take as u64;
                    input = &input[take..];
                    if self.left == 0 {
                        self.frame_done(&mut on_control);
                    }
                }
            }
        }
        Ok(())
    }

    /// Called when `need` header bytes are in: either asks for more (extended length, mask)
    /// or switches to the payload.
    fn header_progress(&mut self) -> Result<(), ProtocolError> {
        let (b0, b1) = (self.head[0], self.head[1]);
        if self.need == 2 {
            if b0 & 0x70 != 0 {
                return Err(ProtocolError("reserved bits set"));
            }
            let opcode = b0 & 0x0f;
            if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
                return Err(ProtocolError("unknown opcode"));
            }
            if b1 & 0x80 == 0 {
                return Err(ProtocolError("client frames must be masked"));
            }
            if opcode >= CLOSE && (b0 & 0x80 == 0 || b1 & 0x7f > 125) {
                return Err(ProtocolError("invalid control frame"));
            }
            self.opcode = opcode;
            self.need = match b1 & 0x7f {
                126 => 2 + 2 + 4,
                127 => 2 + 8 + 4,
                _ => 2 + 4,
            };
            return Ok(());
        }
        let n = usize::from(self.need);
        self.left = match b1 & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(b)
            }
            len => u64::from(len),
        };
        self.mask.copy_from_slice(&self.head[n - 4..n]);
        self.seen = 0;
        self.state = State::Payload;
        Ok(())
    }

    fn frame_done(&mut self, on_control: &mut impl FnMut(Control)) {
        match self.opcode {
            PING => on_control(Control::Ping(std::mem::take(&mut self.control))),
            CLOSE => {
                let code = match self.control[..] {
                    [a, b, ..] => Some(u16::from_be_bytes([a, b])),
                    _ => None,
                };
                self.control = Vec::new();
                on_control(Control::Close(code));
            }
            // Pongs answer nothing; their payload is dropped.
            _ => self.control = Vec::new(),
        }
        self.state = State::Header;
        self.have = 0;
        self.need = 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame, as a browser would send it.
    fn masked(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
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
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        f
    }

    fn feed_in_pieces(input: &[u8], piece: usize) -> Result<Vec<Control>, ProtocolError> {
        let mut r = ClientFrames::default();
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            r.feed(part, |c| out.push(c))?;
        }
        Ok(out)
    }

    #[test]
    fn accept_key_of_rfc_6455_example() {
        // RFC 6455 section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn server_frame_headers_for_every_length_class() {
        let mut f = Vec::new();
        frame(&mut f, TEXT, b"hi");
        assert_eq!(f, [0x81, 2, b'h', b'i']);
        let mut f = Vec::new();
        frame(&mut f, TEXT, &[b'x'; 200]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 200]);
        assert_eq!(f.len(), 204);
        let mut f = Vec::new();
        frame(&mut f, BINARY, &vec![0u8; 70_000]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        let mut f = Vec::new();
        frame(&mut f, PONG, b"");
        assert_eq!(f, [0x8A, 0]);
        // The boundaries: 125 fits the short form, 126 and 65,535 the 16-bit one.
        let mut h = [0u8; MAX_HEADER];
        assert_eq!(header_before(&mut h, TEXT, 125), 8);
        assert_eq!(header_before(&mut h, TEXT, 126), 6);
        assert_eq!(header_before(&mut h, TEXT, 0xffff), 6);
        assert_eq!(header_before(&mut h, TEXT, 0x10000), 0);
    }

    #[test]
    fn pings_and_close_are_unmasked_in_every_split() {
        let mut input = masked(0x81, br#"{"op":"ping"}"#, [1, 2, 3, 4]);
        input.extend(masked(0x89, b"are you there", [9, 8, 7, 6]));
        input.extend(masked(0x82, &[7u8; 300], [5, 5, 5, 5]));
        input.extend(masked(0x8A, b"pong", [1, 1, 1, 1]));
        input.extend(masked(0x89, b"", [0, 0, 0, 0]));
        input.extend(masked(
            0x88,
            &[0x03, 0xe8, b'b', b'y', b'e'],
            [0xaa, 0xbb, 0xcc, 0xdd],
        ));
        let want = vec![
            Control::Ping(b"are you there".to_vec()),
            Control::Ping(Vec::new()),
            Control::Close(Some(1000)),
        ];
        for piece in 1..=input.len() {
            assert_eq!(
                feed_in_pieces(&input, piece),
                Ok(want.clone()),
                "piece {piece}"
            );
        }
    }

    #[test]
    fn large_data_frames_are_skipped() {
        let mut input = masked(0x82, &vec![3u8; 70_000], [1, 2, 3, 4]);
        input.extend(masked(0x88, b"", [1, 2, 3, 4]));
        assert_eq!(feed_in_pieces(&input, 4096), Ok(vec![Control::Close(None)]));
    }

    #[test]
    fn protocol_errors() {
        let unmasked = [0x81, 0x01, b'x'];
        assert_eq!(
            feed_in_pieces(&unmasked, 1),
            Err(ProtocolError("client frames must be masked"))
        );
        assert!(feed_in_pieces(&masked(0xC1, b"x", [0; 4]), 3).is_err());
        assert!(feed_in_pieces(&masked(0x83, b"x", [0; 4]), 3).is_err());
        // A control frame may not be fragmented or longer than 125 bytes.
        assert!(feed_in_pieces(&masked(0x09, b"x", [0; 4]), 3).is_err());
        assert!(feed_in_pieces(&masked(0x89, &[0u8; 126], [0; 4]), 3).is_err());
    }
}
