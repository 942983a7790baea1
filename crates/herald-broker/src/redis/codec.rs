//! The payload one message travels as, on the backbone and inside the history stream.
//!
//! ```text
//! h1 <offset> <epoch> <published_at_us> <event> <channel>\n<data>
//! h2 <offset> <epoch> <published_at_us> <event> <channel> <from_len> <info_len>\n<from><info><data>
//! ```
//!
//! The header is ASCII, space separated; `<event>` is empty for the default event type (an
//! event name is never empty). Every header field comes from a charset without spaces or
//! newlines, so the first `\n` ends the header and everything after it is the compact JSON data,
//! taken as a zero-copy slice of the received buffer. The publish script builds the payload
//! (only it knows the offset and epoch), so the same bytes are stored in history and relayed,
//! and a node decodes each message once, whichever way it arrived.
//!
//! `h2` is a message a client published with a token: its sender's user id (`from`, any text)
//! and `info` (compact JSON, possibly empty) come after the header, delimited by their byte
//! lengths. Every other message is still written as `h1`, so nodes that know only `h1` keep
//! relaying everything but client publishes during a rolling upgrade. The server's room events
//! (`herald.join`, `herald.leave`) are `h1` with that event type.

use bytes::Bytes;
use herald_core::{ChannelName, Epoch, EventName, Message, Sender};

const VERSION: &str = "h1";
const VERSION_SENDER: &str = "h2";
/// A header is at most ~400 bytes (255-byte channel, 64-byte event, 32-byte epoch, numbers).
const MAX_HEADER: usize = 512;

/// Why a payload could not be decoded (a foreign publisher or a future format).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable backbone payload: {0}")]
pub(crate) struct DecodeError(&'static str);

/// Decodes one payload; `data` shares `buf`'s allocation.
pub(crate) fn decode(buf: Bytes) -> Result<Message, DecodeError> {
    let window = &buf[..buf.len().min(MAX_HEADER)];
    let nl = window
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(DecodeError("no header"))?;
    let header = std::str::from_utf8(&buf[..nl]).map_err(|_| DecodeError("header not UTF-8"))?;
    let (version, header) = header.split_once(' ').ok_or(DecodeError("short header"))?;
    let with_sender = match version {
        VERSION => false,
        VERSION_SENDER => true,
        _ => return Err(DecodeError("unknown version")),
    };
    let mut fields = header.splitn(if with_sender { 7 } else { 5 }, ' ');
    let mut next = || fields.next().ok_or(DecodeError("short header"));
    let offset = next()?.parse().map_err(|_| DecodeError("bad offset"))?;
    let epoch = Epoch::parse(next()?)
        .filter(|e| !e.is_none())
        .ok_or(DecodeError("bad epoch"))?;
    let published_at_us = next()?.parse().map_err(|_| DecodeError("bad timestamp"))?;
    let event = match next()? {
        "" => None,
        e => Some(EventName::parse_stored(e).map_err(|_| DecodeError("bad event"))?),
    };
    let channel = ChannelName::parse(next()?).map_err(|_| DecodeError("bad channel"))?;
    let mut body = nl + 1;
    let sender = if with_sender {
        let mut len = || -> Result<usize, DecodeError> {
            next()?
                .parse()
                .map_err(|_| DecodeError("bad sender length"))
        };
        let (user_len, info_len) = (len()?, len()?);
        let info_at = body
            .checked_add(user_len)
            .filter(|&at| at.checked_add(info_len).is_some_and(|end| end <= buf.len()))
            .ok_or(DecodeError("short sender"))?;
        let user = std::str::from_utf8(&buf[body..info_at])
            .map_err(|_| DecodeError("sender not UTF-8"))?;
        if user.is_empty() {
            return Err(DecodeError("empty sender"));
        }
        body = info_at + info_len;
        Some(Box::new(Sender {
            user: user.into(),
            info: (info_len > 0).then(|| buf.slice(info_at..body)),
        }))
    } else {
        None
    };
    Ok(Message {
        channel,
        offset,
        epoch,
        event,
        data: buf.slice(body..),
        published_at_us,
        sender,
    })
}

/// The encoding the publish script produces, for tests of the decoder.
#[cfg(test)]
pub(crate) fn encode(m: &Message) -> Bytes {
    let event = m.event.as_ref().map_or("", EventName::as_str);
    let head = format!(
        "{} {} {} {event} {}",
        m.offset, m.epoch, m.published_at_us, m.channel
    );
    let mut out = match &m.sender {
        None => format!("{VERSION} {head}\n").into_bytes(),
        Some(s) => {
            let info = s.info.as_deref().unwrap_or_default();
            let mut out =
                format!("{VERSION_SENDER} {head} {} {}\n", s.user.len(), info.len()).into_bytes();
            out.extend_from_slice(s.user.as_bytes());
            out.extend_from_slice(info);
            out
        }
    };
    out.extend_from_slice(&m.data);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(event: Option<&str>, data: &'static str) -> Message {
        Message {
            channel: ChannelName::parse("a/b:c").expect("name"),
            offset: 42,
            epoch: Epoch::from_random(7),
            event: event.map(|e| EventName::parse_stored(e).expect("event")),
            data: Bytes::from_static(data.as_bytes()),
            published_at_us: 1_700_000_000_000_000,
            sender: None,
        }
    }

    fn from(m: Message, user: &str, info: Option<&'static str>) -> Message {
        Message {
            sender: Some(Box::new(Sender {
                user: user.into(),
                info: info.map(|i| Bytes::from_static(i.as_bytes())),
            })),
            ..m
        }
    }

    #[test]
    fn round_trips() {
        for m in [
            msg(None, "{\"a\":1}"),
            msg(Some("e-1"), ""),
            msg(None, "\"x\\ny\""),
            from(msg(None, "[1]"), "al ice\n\u{e9}", Some(r#"{"n":"A"}"#)),
            from(msg(Some("e"), ""), "b", None),
            msg(Some("herald.join"), r#"{"user":"a","client":"c"}"#),
        ] {
            assert_eq!(decode(encode(&m)), Ok(m));
        }
        let m = from(msg(None, "1"), "bob", Some("{}"));
        assert_eq!(
            &encode(&m)[..],
            &b"h2 42 0000000000000007 1700000000000000  a/b:c 3 2\nbob{}1"[..]
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b""[..],
            b"hello",
            b"h2 1 e 1  c\n{}",
            b"h1 x e 1  c\n{}",
            b"h1 1 e,e 1  c\n{}",
            b"h1 1 e 1  c d\n{}",
            b"h1 1 e 1 herald.x c\n{}",
            b"h1 1 e 1 ",
            b"h1 1  1  c\n{}",
            b"h2 1 e 1  c\n{}",
            b"h2 1 e 1  c 5 0\nab",
            b"h2 1 e 1  c 0 0\n1",
            b"h2 1 e 1  c 1 99999999999999999999\na1",
            b"h2 1 e 1  c x 0\na1",
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
