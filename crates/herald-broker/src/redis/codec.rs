//! The payload one message travels as, on the backbone and inside the history stream.
//!
//! ```text
//! h1 <offset> <epoch> <published_at_us> <event> <channel>\n<data>
//! ```
//!
//! The header is ASCII, space separated; `<event>` is empty for the default event type (an
//! event name is never empty). Every header field comes from a charset without spaces or
//! newlines, so the first `\n` ends the header and everything after it is the compact JSON data,
//! taken as a zero-copy slice of the received buffer. The publish script builds the payload
//! (only it knows the offset and epoch), so the same bytes are stored in history and relayed,
//! and a node decodes each message once, whichever way it arrived.

use bytes::Bytes;
use herald_core::{ChannelName, Epoch, EventName, Message};

const VERSION: &str = "h1";
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
    let mut fields = header.splitn(6, ' ');
    let mut next = || fields.next().ok_or(DecodeError("short header"));
    if next()? != VERSION {
        return Err(DecodeError("unknown version"));
    }
    let offset = next()?.parse().map_err(|_| DecodeError("bad offset"))?;
    let epoch = Epoch::parse(next()?)
        .filter(|e| !e.is_none())
        .ok_or(DecodeError("bad epoch"))?;
    let published_at_us = next()?.parse().map_err(|_| DecodeError("bad timestamp"))?;
    let event = match next()? {
        "" => None,
        e => Some(EventName::parse(e).map_err(|_| DecodeError("bad event"))?),
    };
    let channel = ChannelName::parse(next()?).map_err(|_| DecodeError("bad channel"))?;
    Ok(Message {
        channel,
        offset,
        epoch,
        event,
        data: buf.slice(nl + 1..),
        published_at_us,
    })
}

/// The encoding the publish script produces, for tests of the decoder.
#[cfg(test)]
pub(crate) fn encode(m: &Message) -> Bytes {
    let event = m.event.as_ref().map_or("", EventName::as_str);
    let mut out = format!(
        "{VERSION} {} {} {} {event} {}\n",
        m.offset, m.epoch, m.published_at_us, m.channel
    )
    .into_bytes();
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
            event: event.map(|e| EventName::parse(e).expect("event")),
            data: Bytes::from_static(data.as_bytes()),
            published_at_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn round_trips() {
        for m in [
            msg(None, "{\"a\":1}"),
            msg(Some("e-1"), ""),
            msg(None, "\"x\\ny\""),
        ] {
            assert_eq!(decode(encode(&m)), Ok(m));
        }
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
        ] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
