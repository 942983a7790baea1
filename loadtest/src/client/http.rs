//! A minimal HTTP/1.1 client: response heads, chunked bodies and a keep-alive connection for
//! JSON POSTs.
//!
//! Hand-rolled instead of hyper's client so every socket can be bound to a chosen source
//! address, buffers are reused across requests (no allocation per publish), and the SSE and
//! WebSocket clients can share the same head parser on a raw connection.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::net::{Alpn, Dialer, Stream, Target};

/// Largest response head we accept; a server sending more is broken or not Herald.
const MAX_HEAD: usize = 16 * 1024;
/// Largest non-streaming response body (publish acks are ~100 bytes, broadcast acks grow with
/// the number of channels).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// The parts of a response head the clients care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes of the head including the blank line.
    pub len: usize,
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `connection: close`: the server will not reuse the connection.
    pub close: bool,
}

/// Parses a response head from the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(invalid("response head too large"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("bad response head: {e}"))),
    };
    let mut head = Head {
        status: resp.code.unwrap_or(0),
        len,
        content_length: None,
        chunked: false,
        close: resp.version == Some(0),
    };
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            head.content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = h
                .value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = h
                .value
                .split(|b| *b == b',')
                .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    Ok(Some(head))
}

pub fn invalid(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// Reads from `stream` into `buf` until a whole response head is there.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> io::Result<Head> {
    loop {
        if let Some(head) = parse_head(buf)? {
            return Ok(head);
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size { value: u64, digits: u8, ext: bool },
    SizeLf { value: u64 },
    Data(u64),
    DataCr,
    DataLf,
    Trailer { line_start: bool },
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoder that hands out slices of its input, so a
/// streaming SSE body is de-chunked without copying.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: Chunk::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Feeds `input`, calling `out` with each run of body bytes. Returns how many input bytes
    /// were consumed (all of them unless the terminating chunk ended earlier).
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
        mut out: impl FnMut(&'a [u8]),
    ) -> io::Result<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                Chunk::Size { value, digits, ext } => {
                    i += 1;
                    match b {
                        b'\r' => Chunk::SizeLf { value },
                        b'\n' => Self::after_size(value),
                        _ if ext => Chunk::Size { value, digits, ext },
                        b';' | b' ' | b'\t' if digits > 0 => Chunk::Size {
                            value,
                            digits,
                            ext: true,
                        },
                        _ => {
                            let d = (b as char)
                                .to_digit(16)
                                .ok_or_else(|| invalid("bad chunk size"))?;
                            if digits >= 15 {
                                return Err(invalid("chunk size too large"));
                            }
                            Chunk::Size {
                                value: value * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                            }
                        }
                    }
                }
                Chunk::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(invalid("bad chunk size line"));
                    }
                    i += 1;
                    Self::after_size(value)
                }
                Chunk::Data(left) => {
                    let n = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    out(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    }
                }
                Chunk::DataCr => {
                    i += 1;
                    match b {
                        b'\r' => Chunk::DataLf,
                        b'\n' => Self::default().state,
                        _ => return Err(invalid("missing CRLF after chunk")),
                    }
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(invalid("missing LF after chunk"));
                    }
                    i += 1;
                    Self::default().state
                }
                Chunk::Trailer { line_start } => {
                    i += 1;
                    match b {
                        b'\n' if line_start => Chunk::Done,
                        b'\n' => Chunk::Trailer { line_start: true },
                        b'\r' => Chunk::Trailer { line_start },
                        _ => Chunk::Trailer { line_start: false },
                    }
                }
                Chunk::Done => return Ok(i),
            };
        }
        Ok(i)
    }

    fn after_size(value: u64) -> Chunk {
        if value == 0 {
            Chunk::Trailer { line_start: true }
        } else {
            Chunk::Data(value)
        }
    }
}

/// A stream that first yields bytes read past a response head, then the socket: the WebSocket
/// handshake may read the server's first frames together with the `101` head.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    inner: Stream,
}

impl Prefixed {
    pub fn new(prefix: Bytes, inner: Stream) -> Self {
        Self { prefix, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = buf.remaining().min(this.prefix.len());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One keep-alive HTTP/1.1 connection issuing JSON POSTs one at a time; reconnects lazily.
#[derive(Debug)]
pub struct HttpConn {
    stream: Option<Stream>,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    body: Vec<u8>,
    head_prefix: String,
    /// Connections (re)opened, for the report.
    pub connects: u64,
}

impl HttpConn {
    pub fn new(target: &Target, api_key: Option<&str>) -> Self {
        let mut head_prefix = format!(
            "Host: {}\r\nContent-Type: application/json\r\n",
            target.host
        );
        if let Some(key) = api_key {
            head_prefix.push_str("Authorization: Bearer ");
            head_prefix.push_str(key);
            head_prefix.push_str("\r\n");
        }
        Self {
            stream: None,
            rbuf: BytesMut::with_capacity(4096),
            wbuf: Vec::with_capacity(1024),
            body: Vec::new(),
            head_prefix,
            connects: 0,
        }
    }

    /// POSTs `body` to `path` and returns the status and the response body (valid until the
    /// next call). Any IO or protocol error drops the connection.
    pub async fn post(
        &mut self,
        dialer: &Dialer,
        target: &Target,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, &[u8])> {
        self.request(dialer, target, "POST", path, body).await
    }

    /// GETs `path`; like [`HttpConn::post`].
    pub async fn get(
        &mut self,
        dialer: &Dialer,
        target: &Target,
        path: &str,
    ) -> io::Result<(u16, &[u8])> {
        self.request(dialer, target, "GET", path, b"").await
    }

    async fn request(
        &mut self,
        dialer: &Dialer,
        target: &Target,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, &[u8])> {
        match self.request_inner(dialer, target, method, path, body).await {
            Ok((status, close)) => {
                if close {
                    self.stream = None;
                }
                Ok((status, &self.body))
            }
            Err(e) => {
                self.stream = None;
                Err(e)
            }
        }
    }

    async fn request_inner(
        &mut self,
        dialer: &Dialer,
        target: &Target,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> io::Result<(u16, bool)> {
        use std::io::Write as _;
        if self.stream.is_none() {
            self.stream = Some(dialer.connect(target, Alpn::Http1).await?);
            self.connects += 1;
            self.rbuf.clear();
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(invalid("no connection"));
        };
        self.wbuf.clear();
        write!(
            self.wbuf,
            "{method} {}{} HTTP/1.1\r\n{}Content-Length: {}\r\n\r\n",
            target.prefix,
            path,
            self.head_prefix,
            body.len()
        )?;
        self.wbuf.extend_from_slice(body);
        stream.write_all(&self.wbuf).await?;

        let head = read_head(stream, &mut self.rbuf).await?;
        self.rbuf.advance(head.len);
        self.body.clear();
        if head.chunked {
            let mut dec = ChunkedDecoder::default();
            loop {
                let used = dec.decode(&self.rbuf, |b| self.body.extend_from_slice(b))?;
                self.rbuf.advance(used);
                if dec.is_done() {
                    break;
                }
                if self.body.len() > MAX_BODY {
                    return Err(invalid("response body too large"));
                }
                if stream.read_buf(&mut self.rbuf).await? == 0 {
                    return Err(invalid("connection closed inside a chunked body"));
                }
            }
        } else if let Some(len) = head.content_length {
            let len = usize::try_from(len).unwrap_or(usize::MAX);
            if len > MAX_BODY {
                return Err(invalid("response body too large"));
            }
            while self.rbuf.len() < len {
                if stream.read_buf(&mut self.rbuf).await? == 0 {
                    return Err(invalid("connection closed inside the body"));
                }
            }
            self.body.extend_from_slice(&self.rbuf[..len]);
            self.rbuf.advance(len);
        } else {
            // No framing: the body runs to EOF and the connection cannot be reused.
            loop {
                if self.rbuf.len() > MAX_BODY {
                    return Err(invalid("response body too large"));
                }
                if stream.read_buf(&mut self.rbuf).await? == 0 {
                    break;
                }
            }
            self.body.extend_from_slice(&self.rbuf);
            self.rbuf.clear();
            return Ok((head.status, true));
        }
        Ok((head.status, head.close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_parsing() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\nrest";
        let h = parse_head(raw).expect("ok").expect("complete");
        assert_eq!(h.status, 200);
        assert!(h.chunked && !h.close);
        assert_eq!(&raw[h.len..], b"rest");
        assert_eq!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").expect("ok"),
            None
        );
        let h = parse_head(b"HTTP/1.1 503 x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n")
            .expect("ok")
            .expect("complete");
        assert_eq!((h.status, h.content_length, h.close), (503, Some(12), true));
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
    }

    fn dechunk_in_pieces(input: &[u8], piece: usize) -> (Vec<u8>, bool) {
        let mut dec = ChunkedDecoder::default();
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            let used = dec
                .decode(part, |b| out.extend_from_slice(b))
                .expect("valid");
            if dec.is_done() {
                assert!(used <= part.len());
                break;
            }
            assert_eq!(used, part.len());
        }
        (out, dec.is_done())
    }

    #[test]
    fn chunked_any_split() {
        let input = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
        for piece in 1..input.len() {
            let (out, done) = dechunk_in_pieces(input, piece);
            assert_eq!(out, b"hello, world", "piece {piece}");
            assert!(done);
        }
    }

    #[test]
    fn chunked_streaming_not_done() {
        let (out, done) = dechunk_in_pieces(b"a\r\nretry: 10\n\r\n3\r\nab", 4);
        assert_eq!(out, b"retry: 10\nab");
        assert!(!done);
    }

    #[test]
    fn chunked_rejects_garbage() {
        let mut dec = ChunkedDecoder::default();
        assert!(dec.decode(b"zz\r\n", |_| {}).is_err());
        let mut dec = ChunkedDecoder::default();
        assert!(dec.decode(b"1\r\nab", |_| {}).is_err());
        let mut dec = ChunkedDecoder::default();
        assert!(dec.decode(b"fffffffffffffffff\r\n", |_| {}).is_err());
    }
}
