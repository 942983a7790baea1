//! HTTP/1.1 request heads, parsed by hand with `httparse`, and the routes the baseline serves.
//!
//! Only what the loadtest sends is understood: `GET /v1/ws?channel=X` (WebSocket upgrade),
//! `GET /v1/sse?channel=X`, `POST /v1/publish` with a `Content-Length` body, plus `GET /stats`
//! and `GET /healthz`. Anything else gets a JSON error in Herald's format and the connection is
//! closed.

use std::{io, time::Duration};

use tokio::{io::AsyncReadExt, net::TcpStream};

/// Largest request head accepted (431 beyond).
const MAX_HEAD: usize = 16 * 1024;
/// Largest publish body, Herald's default `max_body_bytes` (413 beyond).
pub const MAX_BODY: usize = 256 * 1024;
/// A client must send its request head within this long (no slowloris holding a task forever).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest channel name, Herald's default `max_channel_len`.
const MAX_CHANNEL: usize = 128;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Ws { channel: String, key: String },
    Sse { channel: String },
    Publish { body_len: usize },
    Stats,
    Health,
    Reject(Rejection),
}

/// An error answer: status, Herald error code and message; the connection is closed after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

fn reject(status: u16, code: &'static str, message: impl Into<String>) -> Route {
    Route::Reject(Rejection {
        status,
        code,
        message: message.into(),
    })
}

impl Rejection {
    /// The full response: JSON error body, `connection: close`.
    pub fn response(&self) -> Vec<u8> {
        let reason = match self.status {
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            413 => "Payload Too Large",
            431 => "Request Header Fields Too Large",
            _ => "Error",
        };
        let message = self.message.replace(['"', '\\'], "'");
        let body = format!(
            r#"{{"error":{{"code":"{}","message":"{message}"}}}}"#,
            self.code
        );
        format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            self.status,
            body.len()
        )
        .into_bytes()
    }
}

/// Reads until `buf` holds a complete request head; returns its length and route. `Ok(None)`:
/// the client closed the connection cleanly between requests.
pub async fn read(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<(usize, Route)>> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) if buf.len() >= MAX_HEAD => {
                    return Ok(Some((
                        buf.len(),
                        reject(431, "bad_request", "request head too large"),
                    )));
                }
                Ok(None) => {}
                Err(route) => return Ok(Some((buf.len(), route))),
            }
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(2048);
        }
        let n = tokio::time::timeout_at(deadline, stream.read_buf(buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request head timed out"))??;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

/// Reads until `buf` holds `total` bytes (the head and a `Content-Length` body).
pub async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, total: usize) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    if buf.capacity() < total {
        buf.reserve(total - buf.len());
    }
    while buf.len() < total {
        let n = tokio::time::timeout_at(deadline, stream.read_buf(buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request body timed out"))??;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(())
}

/// Parses a request head from the start of `buf`: `Ok(None)` means more bytes are needed,
/// `Err` a malformed head (answered, then the connection closes).
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Route)>, Route> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(reject(400, "bad_request", format!("bad request head: {e}"))),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let (path, query) = match req.path.unwrap_or("").split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.path.unwrap_or(""), ""),
    };
    let method = req.method.unwrap_or("");
    let route = match (method, path) {
        ("GET", "/v1/ws") => {
            let upgrade = header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case(b"websocket"));
            match (upgrade, header("sec-websocket-key")) {
                (true, Some(key)) => match (one_channel(query), std::str::from_utf8(key)) {
                    (Ok(channel), Ok(key)) => Route::Ws {
                        channel,
                        key: key.trim().to_owned(),
                    },
                    (Err(r), _) => r,
                    (_, Err(_)) => reject(400, "bad_request", "bad sec-websocket-key"),
                },
                _ => reject(400, "bad_request", "not a WebSocket upgrade"),
            }
        }
        ("GET", "/v1/sse") => {
            if header("last-event-id").is_some() || query.contains("last_event_id=") {
                reject(
                    400,
                    "invalid_position",
                    "the baseline keeps no history: resume is not supported",
                )
            } else {
                match one_channel(query) {
                    Ok(channel) => Route::Sse { channel },
                    Err(r) => r,
                }
            }
        }
        ("POST", "/v1/publish") => {
            let len = header("content-length")
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<usize>().ok());
            match len {
                Some(n) if n > MAX_BODY => reject(413, "payload_too_large", "body too large"),
                Some(n) => Route::Publish { body_len: n },
                None if header("transfer-encoding").is_some() => {
                    reject(400, "bad_request", "chunked bodies are not supported")
                }
                None => reject(400, "bad_request", "content-length required"),
            }
        }
        ("GET", "/stats") => Route::Stats,
        ("GET", "/healthz") => Route::Health,
        (_, "/v1/ws" | "/v1/sse" | "/v1/publish" | "/stats" | "/healthz") => {
            reject(405, "method_not_allowed", "method not allowed")
        }
        _ => reject(404, "not_found", "no such route"),
    };
    Ok(Some((head_len, route)))
}

/// The single `channel` of a subscribe query (the baseline serves one channel per
/// connection), percent-decoded and checked against Herald's channel charset.
fn one_channel(query: &str) -> Result<String, Route> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "channel" {
            continue;
        }
        if found.is_some() {
            return Err(reject(
                400,
                "limit_exceeded",
                "the baseline serves one channel per connection",
            ));
        }
        found =
            Some(percent_decode(v).ok_or_else(|| {
                reject(400, "invalid_channel", "bad percent-encoding in channel")
            })?);
    }
    let channel = found.ok_or_else(|| reject(400, "bad_request", "?channel= required"))?;
    check_channel(&channel).map_err(|m| reject(400, "invalid_channel", m))?;
    Ok(channel)
}

/// Herald's channel rule: 1-128 bytes of `A-Z a-z 0-9 _ - . : @ / = +`.
pub fn check_channel(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CHANNEL {
        return Err(format!("channel names are 1-{MAX_CHANNEL} bytes"));
    }
    match name.bytes().find(|b| {
        !(b.is_ascii_alphanumeric()
            || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=' | b'+'))
    }) {
        Some(b) => Err(format!("channel name contains {:?}", char::from(b))),
        None => Ok(()),
    }
}

/// Decodes `%XX` escapes and `+` (a space in a query string); `None` on a bad escape or
/// non-UTF-8 result.
fn percent_decode(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                let s = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(s, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(raw: &str) -> Route {
        parse(raw.as_bytes())
            .unwrap_or_else(|r| Some((0, r)))
            .expect("complete")
            .1
    }

    #[test]
    fn subscribe_routes() {
        assert_eq!(
            route(
                "GET /v1/ws?channel=lt-1%3Aa HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc==\r\n\r\n"
            ),
            Route::Ws {
                channel: "lt-1:a".into(),
                key: "abc==".into()
            }
        );
        assert_eq!(
            route("GET /v1/sse?channel=news HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n"),
            Route::Sse {
                channel: "news".into()
            }
        );
        let code = |raw: &str| match route(raw) {
            Route::Reject(r) => (r.status, r.code),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code("GET /v1/ws?channel=a HTTP/1.1\r\n\r\n"),
            (400, "bad_request")
        );
        assert_eq!(
            code("GET /v1/sse?channel=a&channel=b HTTP/1.1\r\n\r\n"),
            (400, "limit_exceeded")
        );
        assert_eq!(
            code("GET /v1/sse?channel=a+b HTTP/1.1\r\n\r\n"),
            (400, "invalid_channel")
        );
        assert_eq!(code("GET /v1/sse HTTP/1.1\r\n\r\n"), (400, "bad_request"));
        assert_eq!(
            code("GET /v1/sse?channel=a HTTP/1.1\r\nLast-Event-ID: e,1,a\r\n\r\n"),
            (400, "invalid_position")
        );
        assert_eq!(code("GET /nope HTTP/1.1\r\n\r\n"), (404, "not_found"));
        assert_eq!(
            code("PUT /v1/publish HTTP/1.1\r\n\r\n"),
            (405, "method_not_allowed")
        );
    }

    #[test]
    fn publish_route_needs_a_bounded_length() {
        assert_eq!(
            route("POST /v1/publish HTTP/1.1\r\nContent-Length: 12\r\n\r\n"),
            Route::Publish { body_len: 12 }
        );
        assert!(matches!(
            route("POST /v1/publish HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"),
            Route::Reject(Rejection { status: 413, .. })
        ));
        assert!(matches!(
            route("POST /v1/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Route::Reject(Rejection { status: 400, .. })
        ));
        assert_eq!(parse(b"POST /v1/publish HTTP/1.1\r\nContent-Le"), Ok(None));
        assert!(parse(b"\x01\x02 garbage\r\n\r\n").is_err());
    }

    #[test]
    fn error_responses_are_herald_json() {
        let r = Rejection {
            status: 404,
            code: "not_found",
            message: "no \"such\" route".into(),
        };
        let text = String::from_utf8(r.response()).expect("utf8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head");
        assert!(head.starts_with("HTTP/1.1 404 ") && head.contains("connection: close"));
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v["error"]["code"], "not_found");
    }

    #[test]
    fn channel_rules() {
        assert!(check_channel("a-Z_0.9:@/=+").is_ok());
        assert!(check_channel("").is_err());
        assert!(check_channel(&"x".repeat(129)).is_err());
        assert!(check_channel("a\"b").is_err());
        assert_eq!(percent_decode("a%2Fb"), Some("a/b".into()));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
    }
}
