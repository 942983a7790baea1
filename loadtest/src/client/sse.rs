//! Server-Sent Events client over a raw HTTP/1.1 connection (TCP, or TLS): request, chunked body, and an
//! incremental `text/event-stream` parser, as an `EventSource` would read it.

use std::io;

use bytes::BytesMut;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{End, Event, http};
use crate::{
    net::{Alpn, Dialer, Flavor, Stream, Target, encode_query},
    token::TokenTracker,
};

/// One dispatched event. `event` is empty for the default type `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    pub id: &'a [u8],
    pub event: &'a [u8],
    pub data: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    LineTooLong,
}

/// Incremental event-stream parser (WHATWG HTML "event stream interpretation"). Complete
/// lines are parsed straight from the input; only a line split across reads is copied.
#[derive(Debug)]
pub struct SseParser {
    partial: Vec<u8>,
    id: Vec<u8>,
    event: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    /// The previous chunk ended in `\r`: a leading `\n` belongs to that line break.
    skip_lf: bool,
    max_line: usize,
    /// Comment lines seen (server heartbeats).
    pub comments: u64,
}

impl SseParser {
    pub fn new(max_line: usize) -> Self {
        Self {
            partial: Vec::new(),
            id: Vec::new(),
            event: Vec::new(),
            data: Vec::new(),
            has_data: false,
            skip_lf: false,
            max_line,
            comments: 0,
        }
    }

    pub fn feed<F: FnMut(SseEvent<'_>)>(
        &mut self,
        mut input: &[u8],
        on_event: &mut F,
    ) -> Result<(), SseError> {
        while !input.is_empty() {
            if self.skip_lf {
                self.skip_lf = false;
                if input[0] == b'\n' {
                    input = &input[1..];
                    continue;
                }
            }
            let Some(pos) = input.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.partial.len() + input.len() > self.max_line {
                    return Err(SseError::LineTooLong);
                }
                self.partial.extend_from_slice(input);
                return Ok(());
            };
            if self.partial.is_empty() {
                self.line(&input[..pos], on_event);
            } else {
                if self.partial.len() + pos > self.max_line {
                    return Err(SseError::LineTooLong);
                }
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&input[..pos]);
                self.line(&line, on_event);
                line.clear();
                self.partial = line;
            }
            if input[pos] == b'\r' {
                match input.get(pos + 1) {
                    Some(b'\n') => input = &input[pos + 2..],
                    Some(_) => input = &input[pos + 1..],
                    None => {
                        self.skip_lf = true;
                        input = &input[pos + 1..];
                    }
                }
            } else {
                input = &input[pos + 1..];
            }
        }
        Ok(())
    }

    fn line<F: FnMut(SseEvent<'_>)>(&mut self, line: &[u8], on_event: &mut F) {
        if line.is_empty() {
            if self.has_data {
                on_event(SseEvent {
                    id: &self.id,
                    event: &self.event,
                    data: &self.data,
                });
            }
            // The id is the stream's "last event ID" and persists; type and data do not.
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.id.clear();
                self.id.extend_from_slice(value);
            }
            // `retry` only matters to a browser's reconnect timer; unknown fields are ignored.
            _ => {}
        }
    }
}

/// `herald.subscribed` / `herald.error` control event data.
#[derive(Deserialize)]
struct Control<'a> {
    #[serde(borrow)]
    channel: Option<&'a str>,
    offset: Option<u64>,
    #[serde(borrow)]
    epoch: Option<&'a str>,
    recovered: Option<bool>,
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// An open `/v1/sse` stream.
#[derive(Debug)]
pub struct SseConn {
    stream: Stream,
    rbuf: BytesMut,
    chunked: Option<http::ChunkedDecoder>,
    parser: SseParser,
    tokens: TokenTracker,
    /// nchan target: the channel; events carry the raw message and an nchan id.
    nchan: Option<Box<str>>,
    /// nchan sends no subscribed event: report `Subscribed` on the first read.
    announce: bool,
}

impl SseConn {
    /// Connects and returns once the server answered `200 text/event-stream`.
    pub async fn open(
        dialer: &Dialer,
        target: &Target,
        channels: &[&str],
        last_event_id: Option<&str>,
        token: Option<&str>,
    ) -> Result<Self, End> {
        let nchan = target.flavor == Flavor::Nchan;
        let mut stream = dialer
            .connect(target, Alpn::Http1)
            .await
            .map_err(End::connect)?;
        let mut req = format!("GET {}/v1/sse?", target.prefix);
        if nchan {
            // One channel per stream (the fleet subscribes one each).
            req = format!("GET {}/sub/", target.prefix);
            encode_query(&mut req, channels.first().copied().unwrap_or(""));
        }
        for (i, c) in channels.iter().enumerate().filter(|_| !nchan) {
            if i > 0 {
                req.push('&');
            }
            req.push_str("channel=");
            encode_query(&mut req, c);
        }
        req.push_str(" HTTP/1.1\r\nHost: ");
        req.push_str(&target.host);
        req.push_str("\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n");
        if let Some(t) = token {
            req.push_str("Authorization: Bearer ");
            req.push_str(t);
            req.push_str("\r\n");
        }
        if let Some(id) = last_event_id.filter(|_| !nchan) {
            req.push_str("Last-Event-ID: ");
            req.push_str(id);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.map_err(End::io)?;
        let mut rbuf = BytesMut::with_capacity(4096);
        let head = http::read_head(&mut stream, &mut rbuf)
            .await
            .map_err(End::io)?;
        if head.status != 200 {
            return Err(End::Status(head.status));
        }
        let _ = rbuf.split_to(head.len);
        Ok(Self {
            stream,
            rbuf,
            chunked: head.chunked.then(http::ChunkedDecoder::default),
            parser: SseParser::new(1 << 20),
            tokens: TokenTracker::default(),
            nchan: nchan.then(|| channels.first().copied().unwrap_or("").into()),
            announce: nchan,
        })
    }

    /// Reads once from the socket and dispatches every complete event.
    pub async fn next_batch<F: FnMut(Event<'_>)>(&mut self, f: &mut F) -> Result<(), End> {
        if self.announce {
            self.announce = false;
            f(Event::Subscribed {
                channel: self.nchan.as_deref().unwrap_or(""),
                offset: 0,
                epoch: "",
                recovered: false,
                sse_id: None,
            });
            return Ok(());
        }
        // Bytes read together with the response head are processed before reading again:
        // the first events (`herald.subscribed`) usually arrive in the same segment. Every
        // batch consumes the whole buffer, so empty means "nothing pending".
        if self.rbuf.is_empty() {
            if self.rbuf.capacity() < 1024 {
                self.rbuf.reserve(4096);
            }
            if self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(End::io)?
                == 0
            {
                return Err(End::Eof);
            }
        }
        let Self {
            rbuf,
            chunked,
            parser,
            tokens,
            nchan,
            ..
        } = self;
        let mut failed: Option<End> = None;
        let mut on_event = |ev: SseEvent<'_>| {
            if let Some(ch) = nchan {
                super::ws::dispatch_nchan(ch, ev.data, f);
            } else if failed.is_none()
                && let Err(e) = dispatch(tokens, ev, f)
            {
                failed = Some(e);
            }
        };
        match chunked {
            Some(dec) => {
                let mut perr = None;
                dec.decode(rbuf, |body| {
                    if perr.is_none() {
                        perr = parser.feed(body, &mut on_event).err();
                    }
                })
                .map_err(End::io)?;
                if perr.is_some() {
                    return Err(End::Protocol("SSE line too long".into()));
                }
                let done = dec.is_done();
                rbuf.clear();
                if done {
                    return Err(End::Eof);
                }
            }
            None => {
                parser
                    .feed(rbuf, &mut on_event)
                    .map_err(|_| End::Protocol("SSE line too long".into()))?;
                rbuf.clear();
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

pub(super) fn dispatch<F: FnMut(Event<'_>)>(
    tokens: &mut TokenTracker,
    ev: SseEvent<'_>,
    f: &mut F,
) -> Result<(), End> {
    let id = std::str::from_utf8(ev.id).map_err(|_| End::Protocol("non-UTF-8 id".into()))?;
    match ev.event {
        b"herald.subscribed" => {
            let c: Control<'_> = serde_json::from_slice(ev.data)
                .map_err(|e| End::Protocol(format!("bad herald.subscribed data: {e}")))?;
            let (Some(channel), Some(offset)) = (c.channel, c.offset) else {
                return Err(End::Protocol(
                    "herald.subscribed without channel/offset".into(),
                ));
            };
            tokens.set(channel, offset);
            f(Event::Subscribed {
                channel,
                offset,
                epoch: c.epoch.unwrap_or(""),
                recovered: c.recovered.unwrap_or(false),
                sse_id: Some(id),
            });
        }
        b"herald.error" => {
            let code = serde_json::from_slice::<Control<'_>>(ev.data)
                .ok()
                .and_then(|c| c.code)
                .unwrap_or("unknown");
            f(Event::Error { code });
        }
        b"herald.reconnect" => f(Event::Reconnect),
        e if e.starts_with(b"herald.") => {}
        _ => match tokens.advance(id) {
            Ok(Some(adv)) => f(Event::Message {
                channel: adv.channel,
                offset: adv.offset,
                epoch: adv.epoch,
                data: ev.data,
                sse_id: Some(id),
            }),
            // An id that moved no channel is a repeat of the previous position.
            Ok(None) => f(Event::Unattributed),
            Err(()) => return Err(End::Protocol(format!("malformed resume token {id:?}"))),
        },
    }
    Ok(())
}

impl End {
    fn io(e: io::Error) -> Self {
        End::Io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(input: &[u8], piece: usize) -> (Vec<(String, String, String)>, u64) {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            p.feed(part, &mut |e: SseEvent<'_>| {
                out.push((
                    String::from_utf8_lossy(e.id).into_owned(),
                    String::from_utf8_lossy(e.event).into_owned(),
                    String::from_utf8_lossy(e.data).into_owned(),
                ));
            })
            .expect("valid");
        }
        (out, p.comments)
    }

    #[test]
    fn herald_stream_in_every_split() {
        let input = b"retry: 2000\n\n\
            id: e,3,news\nevent: herald.subscribed\ndata: {\"channel\":\"news\",\"offset\":3}\n\n\
            :\n\n\
            id: e,4,news\nevent: message\ndata: {\"seq\":1}\n\n\
            id: e,5,news\r\ndata: a\r\ndata: b\r\n\r\n";
        let want = vec![
            (
                "e,3,news".to_owned(),
                "herald.subscribed".to_owned(),
                r#"{"channel":"news","offset":3}"#.to_owned(),
            ),
            (
                "e,4,news".to_owned(),
                "message".to_owned(),
                r#"{"seq":1}"#.to_owned(),
            ),
            ("e,5,news".to_owned(), String::new(), "a\nb".to_owned()),
        ];
        for piece in 1..input.len() {
            let (got, comments) = collect(input, piece);
            assert_eq!(got, want, "piece {piece}");
            assert_eq!(comments, 1);
        }
    }

    #[test]
    fn lone_cr_line_endings_and_fields() {
        let (got, _) = collect(b"data:x\rid\r\r", 1);
        // `data:x` without the space keeps the value; a bare `id` clears the id.
        assert_eq!(got, vec![(String::new(), String::new(), "x".to_owned())]);
        let (got, _) = collect(b"event: e\n\ndata\n\n", 3);
        // No data: no dispatch, and the event type resets. A bare `data` is an empty line.
        assert_eq!(got, vec![(String::new(), String::new(), String::new())]);
    }

    #[test]
    fn id_persists_between_events() {
        let (got, _) = collect(b"id: 1\ndata: a\n\ndata: b\n\n", 5);
        assert_eq!(got[1].0, "1");
    }

    #[test]
    fn line_limit() {
        let mut p = SseParser::new(8);
        let r = p.feed(b"data: 0123", &mut |_e: SseEvent<'_>| {});
        assert_eq!(r, Err(SseError::LineTooLong));
    }

    #[test]
    fn dispatch_attributes_messages_by_token() {
        let mut tokens = TokenTracker::default();
        let mut seen = Vec::new();
        let mut f = |e: Event<'_>| seen.push(format!("{e:?}"));
        let sub = SseEvent {
            id: b"ep,3,news",
            event: b"herald.subscribed",
            data: br#"{"channel":"news","offset":3,"epoch":"ep","recovered":false}"#,
        };
        dispatch(&mut tokens, sub, &mut f).expect("ok");
        let msg = SseEvent {
            id: b"ep,4,news",
            event: b"",
            data: br#"{"seq":1}"#,
        };
        dispatch(&mut tokens, msg, &mut f).expect("ok");
        let bad = SseEvent {
            id: b"ep,x,news",
            event: b"",
            data: b"1",
        };
        assert!(dispatch(&mut tokens, bad, &mut f).is_err());
        assert!(seen[0].starts_with("Subscribed"));
        assert!(
            seen[1].contains("offset: 4") && seen[1].contains("\"news\""),
            "{}",
            seen[1]
        );
    }
}
