//! Fuzz target `sse_head`: the first bytes of a connection, as the SSE fast path classifies them
//! ([`head::classify`]), checked against hyper reading the same bytes.
//!
//! The fast path promises to agree with hyper, the HTTP parser of record: a head it serves
//! itself is one hyper would serve as the same request (method, target, `Last-Event-ID`,
//! `Origin`, `Host`, forwarding headers), and a head it answers as malformed is one hyper
//! refuses with the same status. The decision depends on the head alone, so a peek that sees
//! more bytes, or only the head, decides the same way.

use std::{
    cell::RefCell,
    convert::Infallible,
    io,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, Response, body::Incoming, service::service_fn};

use super::block_on;
use crate::http::{
    head::{self, Head, SseRequest},
    query,
};

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 3.4), spelled out here
/// rather than taken from `head`, so the harness reads the RFC, not the code under test.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The harness.
pub fn sse_head(data: &[u8]) {
    let hyper = Hyper::read(data);
    match head::classify(data) {
        Head::Sse(req) => {
            check_sse(data, &req, &hyper);
            let query = req.query.as_deref();
            for name in query::values(query, "channel") {
                let _ = herald_core::ChannelName::parse(&name);
            }
            if let Some(Ok(token)) = &req.last_event_id {
                herald_core::fuzzing::resume::resume_token(token.as_bytes());
            }
            if let Some(token) = query::first(query, "last_event_id") {
                herald_core::fuzzing::resume::resume_token(token.as_bytes());
            }
        }
        Head::Malformed { status, .. } => {
            assert!(
                hyper.request.is_none(),
                "hyper serves a head called malformed"
            );
            // hyper's one exception: after a head it cannot use, if what follows is an HTTP/2
            // preface, it closes without answering (it takes the client for an HTTP/2 one).
            let h2_after = data.windows(H2_PREFACE.len()).any(|w| w == H2_PREFACE);
            if !(hyper.status.is_none() && h2_after) {
                assert_eq!(
                    hyper.status,
                    Some(status),
                    "hyper's answer to a malformed head"
                );
            }
        }
        // Handed to hyper's HTTP/2 server (or, with HTTP/2 off, to its HTTP/1 one): only the
        // preface itself, which hyper's HTTP/1 server would never serve or answer either.
        Head::Http2 => {
            assert!(data.starts_with(H2_PREFACE), "HTTP/2 without the preface");
            check_not_http1(&hyper);
        }
        // The fast path waits for more bytes (within the head deadline): only while they may
        // still become the preface. Not compared with hyper here: the wire above ends the input,
        // where hyper's answer depends on the bytes still to come.
        Head::PartialHttp2 => {
            assert!(
                data.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(data),
                "waits on bytes that cannot become the preface"
            );
        }
        Head::Other => {}
    }
}

/// What the fast path hands to hyper's HTTP/2 server is nothing its HTTP/1 server would serve
/// or answer: no request of HTTP/1 is lost or answered differently.
fn check_not_http1(hyper: &Hyper) {
    assert!(hyper.request.is_none(), "hyper's HTTP/1 serves it");
    assert_eq!(hyper.status, None, "hyper's HTTP/1 answers it");
}

fn check_sse(data: &[u8], req: &SseRequest, hyper: &Hyper) {
    let head = &data[..req.head_len];
    // The decision depends on the head only: the same without what follows it, and nothing for
    // a head cut short (a peek may see any prefix).
    assert_eq!(head::classify(head), Head::Sse(req.clone()));
    assert_eq!(head::classify(&head[..head.len() - 1]), Head::Other);

    let seen = hyper
        .request
        .as_ref()
        .expect("hyper serves the fast path's request");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.version, hyper::Version::HTTP_11);
    assert_eq!(seen.path, "/v1/sse");
    assert_eq!(seen.query, req.query);
    let one = |name: &str| -> Option<Vec<u8>> {
        let values = seen.header(name);
        assert!(values.len() <= 1, "several {name} on the fast path");
        values.into_iter().next()
    };
    let id = one("last-event-id");
    match &req.last_event_id {
        None => assert_eq!(id, None),
        Some(Ok(text)) => assert_eq!(id.as_deref(), Some(text.as_bytes())),
        Some(Err(())) => assert!(id.is_some_and(|v| std::str::from_utf8(&v).is_err())),
    }
    assert_eq!(one("origin"), req.origin);
    assert_eq!(one("host"), req.host);
    assert_eq!(seen.header("x-forwarded-for"), req.forwarded_for);
    assert_eq!(seen.header("forwarded"), req.forwarded);
}

/// The first request as hyper's service saw it.
struct Seen {
    method: String,
    version: hyper::Version,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<Vec<u8>> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// What hyper, configured as the server configures it, makes of `data`.
struct Hyper {
    /// The first request its service was called with.
    request: Option<Seen>,
    /// The status of its first response.
    status: Option<u16>,
}

impl Hyper {
    fn read(data: &[u8]) -> Self {
        let seen: Rc<RefCell<Option<Seen>>> = Rc::default();
        let record = seen.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let mut slot = record.borrow_mut();
            if slot.is_none() {
                *slot = Some(Seen {
                    method: req.method().to_string(),
                    version: req.version(),
                    path: req.uri().path().to_owned(),
                    query: req.uri().query().map(str::to_owned),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                        .collect(),
                });
            }
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        });
        let mut wire = Wire {
            input: data,
            output: Vec::new(),
        };
        // As conn/h1.rs builds it, minus the timer (nothing here waits).
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(&mut wire, service);
        let _ = block_on(conn);
        let status = wire
            .output
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok());
        let request = seen.borrow_mut().take();
        Self { request, status }
    }
}

/// A client that sends `input`, then closes its side; what the server writes is kept.
struct Wire<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl hyper::rt::Read for &mut Wire<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut **self.get_mut();
        let n = this.input.len().min(buf.remaining());
        buf.put_slice(&this.input[..n]);
        this.input = &this.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for &mut Wire<'_> {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().output.extend_from_slice(b);
        Poll::Ready(Ok(b.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
