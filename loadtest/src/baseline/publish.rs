//! `POST /v1/publish`: find the channel and the data in the body, encode the message once per
//! transport (the same bytes Herald writes), write it to every subscriber socket, answer
//! `{"channel","offset","epoch"}`.
//!
//! The body is not parsed as JSON: a scanner walks the top-level object just far enough to find
//! the `channel` string and the raw `data` value (it skips nested values by bracket depth and
//! string escapes, and does not validate them). `event` and `idempotency_key` are ignored.

use std::io::Write as _;

use super::{
    Shared,
    channels::Stats,
    request::{Rejection, check_channel},
    ws::{self, MAX_HEADER},
};
use std::sync::atomic::Ordering;

/// Why a body was refused (400 `invalid_json` / `invalid_channel`).
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    Json(&'static str),
    Channel(String),
}

/// The 400 answer to a refused body.
pub fn rejection(e: BodyError) -> Rejection {
    match e {
        BodyError::Json(m) => Rejection {
            status: 400,
            code: "invalid_json",
            message: m.to_owned(),
        },
        BodyError::Channel(m) => Rejection {
            status: 400,
            code: "invalid_channel",
            message: m,
        },
    }
}

/// The parts of a publish body the baseline uses, borrowed from it.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish<'a> {
    pub channel: &'a str,
    /// The raw JSON value of `data`.
    pub data: &'a [u8],
}

/// Scratch buffers of one publishing connection, reused for every publish.
#[derive(Debug, Default)]
pub struct Encoder {
    ws: Vec<u8>,
    sse: Vec<u8>,
}

impl Encoder {
    /// Assigns the next offset of the channel, writes the message to every subscriber and
    /// returns the ack body.
    pub fn publish(&mut self, shared: &Shared, p: &Publish<'_>, ack: &mut Vec<u8>) {
        let channel = shared.registry.channel(p.channel);
        let epoch = &shared.epoch;
        let offset = {
            let mut st = channel.state.lock();
            st.offset += 1;
            let offset = st.offset;
            if !st.ws.is_empty() {
                let frame = ws_message(&mut self.ws, p.channel, offset, epoch, p.data);
                for sub in &st.ws {
                    sub.send(frame, &shared.stats);
                }
            }
            if !st.sse.is_empty() {
                sse_message(&mut self.sse, p.channel, offset, epoch, p.data);
                for sub in &st.sse {
                    sub.send(&self.sse, &shared.stats);
                }
            }
            count(&shared.stats, st.ws.len() + st.sse.len());
            offset
        };
        ack.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(
            ack,
            r#"{{"channel":"{}","offset":{offset},"epoch":"{epoch}"}}"#,
            p.channel
        );
    }
}

fn count(stats: &Stats, deliveries: usize) {
    stats.publishes.fetch_add(1, Ordering::Relaxed);
    stats
        .deliveries
        .fetch_add(deliveries as u64, Ordering::Relaxed);
}

/// Herald's WebSocket `message` frame (a text frame of
/// `{"type":"message","channel","offset","epoch","data"}`), built in `out`; returns the frame.
pub fn ws_message<'o>(
    out: &'o mut Vec<u8>,
    channel: &str,
    offset: u64,
    epoch: &str,
    data: &[u8],
) -> &'o [u8] {
    out.clear();
    // Room for the longest header in front: it is written once the payload length is known.
    out.resize(MAX_HEADER, 0);
    let _ = write!(
        out,
        r#"{{"type":"message","channel":"{channel}","offset":{offset},"epoch":"{epoch}","data":"#
    );
    out.extend_from_slice(data);
    out.push(b'}');
    let mut head = [0u8; MAX_HEADER];
    let at = ws::header_before(&mut head, ws::TEXT, out.len() - MAX_HEADER);
    out[at..MAX_HEADER].copy_from_slice(&head[at..]);
    &out[at..]
}

/// Herald's SSE message event for a one-channel stream: `id:` (the resume token
/// `epoch,offset,channel`), `event: message`, `data:`.
pub fn sse_message(out: &mut Vec<u8>, channel: &str, offset: u64, epoch: &str, data: &[u8]) {
    out.clear();
    let _ = write!(
        out,
        "id: {epoch},{offset},{channel}\nevent: message\ndata: "
    );
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
}

/// Finds `channel` and `data` in a publish body.
pub fn scan(body: &[u8]) -> Result<Publish<'_>, BodyError> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.expect(b'{')?;
    let (mut channel, mut data) = (None, None);
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let (key, _) = s.string()?;
            s.ws();
            s.expect(b':')?;
            s.ws();
            let start = s.i;
            let escaped = if s.peek() == Some(b'"') {
                s.string()?.1
            } else {
                s.value()?;
                false
            };
            let value = &body[start..s.i];
            if value.is_empty() {
                return Err(BodyError::Json("missing value"));
            }
            match key {
                b"channel" => {
                    if value.first() != Some(&b'"') || escaped {
                        return Err(BodyError::Channel("channel must be a plain string".into()));
                    }
                    channel = Some(&value[1..value.len() - 1]);
                }
                b"data" => data = Some(value),
                _ => {}
            }
            s.ws();
            match s.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(BodyError::Json("expected , or }")),
            }
        }
    }
    s.ws();
    if s.i != body.len() {
        return Err(BodyError::Json("trailing bytes after the object"));
    }
    let channel = channel.ok_or(BodyError::Json("missing field `channel`"))?;
    let channel =
        std::str::from_utf8(channel).map_err(|_| BodyError::Channel("not UTF-8".into()))?;
    check_channel(channel).map_err(BodyError::Channel)?;
    let data = data.ok_or(BodyError::Json("missing field `data`"))?;
    // Herald compacts data to one line; the baseline passes it through, so a line break would
    // end the SSE event early.
    if data.iter().any(|b| matches!(b, b'\n' | b'\r')) {
        return Err(BodyError::Json(
            "data must be compact JSON (no line breaks)",
        ));
    }
    Ok(Publish { channel, data })
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), BodyError> {
        if self.next() == Some(c) {
            Ok(())
        } else {
            Err(BodyError::Json("malformed JSON object"))
        }
    }

    /// A string starting at the cursor: its raw contents and whether it had escapes.
    fn string(&mut self) -> Result<(&'a [u8], bool), BodyError> {
        self.expect(b'"')?;
        let start = self.i;
        let mut escaped = false;
        loop {
            match self.next() {
                Some(b'"') => {
                    let b: &'a [u8] = self.b;
                    return Ok((&b[start..self.i - 1], escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                }
                Some(_) => {}
                None => return Err(BodyError::Json("unterminated string")),
            }
        }
    }

    /// Skips a non-string value: an object or array by bracket depth (strings inside skipped
    /// whole), or a literal up to the next delimiter.
    fn value(&mut self) -> Result<(), BodyError> {
        let mut depth = 0usize;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                    continue;
                }
                Some(b'{' | b'[') => depth += 1,
                Some(b'}' | b']') if depth > 0 => depth -= 1,
                Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') if depth == 0 => break,
                Some(_) => {}
                None if depth == 0 => break,
                None => return Err(BodyError::Json("unterminated value")),
            }
            self.i += 1;
            if depth == 0 && matches!(self.b[self.i - 1], b'}' | b']') {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_channel_and_data() {
        let p = scan(
            br#"{"channel":"lt-1","idempotency_key":"k-1","data":{"seq":1,"ts":2,"pad":"x}"}}"#,
        )
        .expect("ok");
        assert_eq!(p.channel, "lt-1");
        assert_eq!(p.data, br#"{"seq":1,"ts":2,"pad":"x}"}"#);
        let p = scan(
            b" { \"data\" : [1, {\"a\": \"]\\\"\"}] , \"event\":\"e\", \"channel\" : \"c\" } ",
        )
        .expect("ok");
        assert_eq!((p.channel, p.data), ("c", &b"[1, {\"a\": \"]\\\"\"}]"[..]));
        assert_eq!(
            scan(br#"{"channel":"c","data":42}"#).expect("ok").data,
            b"42"
        );
        assert_eq!(
            scan(br#"{"channel":"c","data":"s"}"#).expect("ok").data,
            br#""s""#
        );
    }

    #[test]
    fn refuses_bad_bodies() {
        assert!(matches!(scan(br#"{"data":1}"#), Err(BodyError::Json(_))));
        assert!(matches!(
            scan(br#"{"channel":"c"}"#),
            Err(BodyError::Json(_))
        ));
        assert!(matches!(
            scan(br#"{"channel":"a b","data":1}"#),
            Err(BodyError::Channel(_))
        ));
        assert!(matches!(
            scan(br#"{"channel":"a\"b","data":1}"#),
            Err(BodyError::Channel(_))
        ));
        assert!(matches!(
            scan(br#"{"channel":7,"data":1}"#),
            Err(BodyError::Channel(_))
        ));
        assert!(matches!(
            scan(b"{\"channel\":\"c\",\"data\":{\n}}"),
            Err(BodyError::Json(_))
        ));
        assert!(scan(br#"{"channel":"c","data":1"#).is_err());
        assert!(scan(br#"{"channel":"c","data":1}x"#).is_err());
        assert!(scan(br#"{"channel":"c","data":{"#).is_err());
        assert!(scan(b"").is_err());
        assert!(scan(br#"{"channel":"c","data":}"#).is_err());
    }

    #[test]
    fn encodes_herald_frames() {
        let mut buf = Vec::new();
        let f = ws_message(&mut buf, "news", 17, "ep", br#"{"seq":1}"#).to_vec();
        let payload =
            br#"{"type":"message","channel":"news","offset":17,"epoch":"ep","data":{"seq":1}}"#;
        assert_eq!(f[0], 0x81);
        assert_eq!(usize::from(f[1]), payload.len());
        assert_eq!(&f[2..], payload);
        // What the loadtest's WebSocket client reads.
        let mut seen = Vec::new();
        crate::client::ws::dispatch(&f[2..], &mut |e| seen.push(format!("{e:?}"))).expect("ok");
        assert!(seen[0].contains("offset: 17"), "{}", seen[0]);
        // A payload past 125 bytes gets the 16-bit length form.
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300));
        let f = ws_message(&mut buf, "news", 1, "ep", big.as_bytes()).to_vec();
        assert_eq!(&f[..2], &[0x81, 126]);
        assert_eq!(usize::from(u16::from_be_bytes([f[2], f[3]])), f.len() - 4);

        sse_message(&mut buf, "news", 17, "ep", br#"{"seq":1}"#);
        assert_eq!(
            buf,
            b"id: ep,17,news\nevent: message\ndata: {\"seq\":1}\n\n".to_vec()
        );
    }
}
