//! The first request head of a connection, looked at before hyper reads it.
//!
//! Two uses, one rule: hyper is the HTTP parser of record. The SSE fast path
//! ([`crate::transport::sse_direct`]) takes only requests whose meaning cannot differ between it
//! and hyper: a complete `GET /v1/sse` HTTP/1.1 head with no body framing, no `Expect` and no
//! `Upgrade`. Anything unusual (`Content-Length`, duplicated or not; `Transfer-Encoding`; a head
//! split over several packets; ...) is left in the socket for hyper, which accepts or refuses it
//! by its own rules.
//!
//! hyper answers a head it cannot parse with an empty `400` and no way to change it (hyper 1.x
//! writes that response itself, without calling the service). A head that fails the very same
//! checks here (httparse, the parser hyper uses with the same settings, then `http::Uri`) is
//! answered with the usual JSON error body instead. Only the first request of a connection is
//! seen here, and only the bytes that arrived with it: a malformed request later on a keep-alive
//! connection, or one whose first bytes were valid and the rest came later, still gets hyper's
//! empty 400 (docs/api.md, "Errors").

use bytes::{BufMut, Bytes, BytesMut};
use herald_core::{ErrorCode, error::error_body};

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// As many headers as hyper accepts (its `DEFAULT_MAX_HEADERS`).
const MAX_HEADERS: usize = 100;

/// What to do with a connection, from its first request head.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A plain `GET /v1/sse`: the fast path may serve it.
    Sse(SseRequest),
    /// hyper would refuse this head: answer `status` with a JSON error and close.
    Malformed { status: u16, message: String },
    /// The HTTP/2 connection preface: a client speaking h2 with prior knowledge (h2c).
    Http2,
    /// The first bytes of the HTTP/2 preface, not all of it yet: look again when more arrived.
    PartialHttp2,
    /// Anything else, including incomplete heads: hyper serves it.
    Other,
}

/// The parts of an SSE request head the SSE route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseRequest {
    pub head_len: usize,
    pub query: Option<String>,
    /// The `Last-Event-ID` header; `Err` when it is not UTF-8.
    pub last_event_id: Option<Result<String, ()>>,
    /// `Origin` and `Host`, for the origin check and CORS.
    pub origin: Option<Vec<u8>>,
    pub host: Option<Vec<u8>>,
    /// Every `X-Forwarded-For` and `Forwarded` value, for the client address behind a trusted
    /// proxy.
    pub forwarded_for: Vec<Vec<u8>>,
    pub forwarded: Vec<Vec<u8>>,
    /// The `Authorization` and `Cookie` headers (names as sent): where a subscriber token may be.
    pub credentials: Vec<(String, Vec<u8>)>,
}

/// Classifies the bytes of a connection that have arrived so far.
pub fn classify(buf: &[u8]) -> Head {
    // An HTTP/2 prior-knowledge preface goes to hyper's HTTP/2 server (or its HTTP/1 one, which
    // refuses it, when HTTP/2 is off).
    if buf.starts_with(H2_PREFACE) {
        return Head::Http2;
    }
    if !buf.is_empty() && H2_PREFACE.starts_with(buf) {
        return Head::PartialHttp2;
    }
    // Anything else that starts like the preface is hyper's HTTP/1 server's to answer (or refuse)
    // as it sees fit; it looks for the preface after any empty lines, as it skips them before a
    // request line.
    let start = buf
        .iter()
        .position(|b| !b"\r\n".contains(b))
        .unwrap_or(buf.len());
    if buf[start..].starts_with(b"PRI * HTTP/2.0") {
        return Head::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Head::Other,
        Err(httparse::Error::TooManyHeaders) => {
            return Head::Malformed {
                status: 431,
                message: format!("more than {MAX_HEADERS} header fields"),
            };
        }
        Err(e) => {
            return Head::Malformed {
                status: 400,
                message: format!("malformed HTTP request head: {e}"),
            };
        }
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Head::Other;
    };
    let Ok(uri) = http::Uri::try_from(target) else {
        return Head::Malformed {
            status: 400,
            message: "malformed HTTP request target".to_owned(),
        };
    };
    // The path and query hyper's route sees: without a `#fragment`, which would otherwise add
    // query parameters the route never reads.
    let (path, query) = (uri.path(), uri.query().map(str::to_owned));
    let unusual = |name: &str| {
        ["content-length", "transfer-encoding", "expect", "upgrade"]
            .iter()
            .any(|u| name.eq_ignore_ascii_case(u))
    };
    if method != "GET" || version != 1 || path != "/v1/sse" {
        return Head::Other;
    }
    let mut last_event_id = None;
    let (mut origin, mut host) = (None, None);
    let (mut forwarded_for, mut forwarded) = (Vec::new(), Vec::new());
    let mut credentials = Vec::new();
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("authorization") || h.name.eq_ignore_ascii_case("cookie") {
            credentials.push((h.name.to_owned(), h.value.to_vec()));
        }
        if unusual(h.name) {
            return Head::Other;
        }
        let is = |name: &str| h.name.eq_ignore_ascii_case(name);
        if is("origin") || is("host") {
            let slot = if is("origin") { &mut origin } else { &mut host };
            if slot.is_some() {
                // Two of them: hyper's route sees the same ambiguity and decides.
                return Head::Other;
            }
            *slot = Some(h.value.to_vec());
        } else if is("x-forwarded-for") {
            forwarded_for.push(h.value.to_vec());
        } else if is("forwarded") {
            forwarded.push(h.value.to_vec());
        }
        if h.name.eq_ignore_ascii_case("last-event-id") {
            if last_event_id.is_some() {
                // Which one wins is not obvious: let hyper's route decide.
                return Head::Other;
            }
            last_event_id = Some(String::from_utf8(h.value.to_vec()).map_err(|_| ()));
        }
    }
    Head::Sse(SseRequest {
        head_len,
        query,
        last_event_id,
        origin,
        host,
        forwarded_for,
        forwarded,
        credentials,
    })
}

/// A complete `HTTP/1.1` error response with the JSON error body, closing the connection.
pub fn malformed_response(status: u16, message: &str) -> Bytes {
    let body = error_body(ErrorCode::BadRequest, message);
    let reason = match status {
        431 => "Request Header Fields Too Large",
        _ => "Bad Request",
    };
    let mut out = BytesMut::with_capacity(body.len() + 128);
    out.put_slice(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.put_slice(body.as_bytes());
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sse(head: &str) -> Option<SseRequest> {
        match classify(head.as_bytes()) {
            Head::Sse(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn a_plain_sse_request_takes_the_fast_path() {
        let head = "GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\nLast-Event-ID: e,1,a\r\n\r\n";
        let r = sse(head).expect("fast path");
        assert_eq!(r.head_len, head.len());
        assert_eq!(r.query.as_deref(), Some("channel=a"));
        assert_eq!(r.last_event_id, Some(Ok("e,1,a".to_owned())));
    }

    #[test]
    fn the_query_is_the_one_hyper_sees() {
        // Found by the `sse_head` fuzz target (hyper as the oracle): the fast path took the
        // text after `#` as more query parameters.
        let r = sse("GET /v1/sse?channel=a#&channel=b HTTP/1.1\r\n\r\n").expect("fast path");
        assert_eq!(r.query.as_deref(), Some("channel=a"));
        let r = sse("GET /v1/sse#x HTTP/1.1\r\n\r\n").expect("fast path");
        assert_eq!(r.query, None);
    }

    #[test]
    fn anything_unusual_is_left_to_hyper() {
        for head in [
            "GET /v1/sse?channel=a HTTP/1.1\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "GET /v1/sse?channel=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.1\r\nLast-Event-ID: a\r\nLast-Event-ID: b\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.0\r\n\r\n",
            "POST /v1/sse?channel=a HTTP/1.1\r\n\r\n",
            "GET /v1/ssex HTTP/1.1\r\n\r\n",
            "GET /v1/sse?channel=a HTTP/1.1\r\nHost: x\r\n",
            // Found by the `sse_head` fuzz target: hyper closes without an answer, this was 400.
            "\r\n\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "",
        ] {
            assert_eq!(classify(head.as_bytes()), Head::Other, "{head:?}");
        }
    }

    #[test]
    fn the_http2_preface_is_recognised_whole_and_in_part() {
        let preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(classify(preface.as_bytes()), Head::Http2);
        assert_eq!(
            classify(format!("{preface}\0\0\x12\x04").as_bytes()),
            Head::Http2,
            "with the SETTINGS frame behind it"
        );
        for cut in [1, 3, 14, 23] {
            assert_eq!(
                classify(&preface.as_bytes()[..cut]),
                Head::PartialHttp2,
                "{cut}"
            );
        }
        // An HTTP/1 request with the PRI method is not the preface.
        assert!(!matches!(
            classify(b"PRI * HTTP/1.1\r\n\r\n"),
            Head::Http2 | Head::PartialHttp2
        ));
    }

    #[test]
    fn heads_hyper_refuses_get_a_json_answer() {
        for head in [
            "GARBAGE\r\n\r\n",
            "GET / HTTP/9.9\r\n\r\n",
            "GET /\x01 HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "\x16\x03\x01\x02\x00",
        ] {
            assert!(
                matches!(
                    classify(head.as_bytes()),
                    Head::Malformed { status: 400, .. }
                ),
                "{head:?}"
            );
        }
        let many: String = (0..=MAX_HEADERS).map(|i| format!("h{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            classify(head.as_bytes()),
            Head::Malformed { status: 431, .. }
        ));
        let resp = malformed_response(400, "malformed HTTP request head: invalid token");
        let text = std::str::from_utf8(&resp).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(v["error"]["code"], "bad_request");
    }
}
