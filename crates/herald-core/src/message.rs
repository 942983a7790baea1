//! A published message and the positions that order a channel's stream.
//!
//! Every channel is a totally ordered stream: each message gets the next `offset` (the first is
//! offset 1) and the channel's current `epoch`. An epoch is a random string that changes whenever the
//! channel's history was lost, so a client holding `(epoch, offset)` can tell "resume from here"
//! apart from "that stream no longer exists".

use std::{fmt, sync::Arc};

use bytes::Bytes;

use crate::channel::{ChannelName, EventName};

/// The longest epoch string accepted from a client.
pub const MAX_EPOCH_LEN: usize = 32;

/// Identifies one incarnation of a channel's history. Cloning is a refcount increment.
///
/// The empty epoch ([`Epoch::none`]) belongs to a channel that has no history yet (never
/// published, or everything about it expired): reading a channel never creates its epoch, the
/// first publish does. A position `("", 0)` therefore means "saw the channel before its first
/// message", and continues into whichever epoch the first publish creates.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

static NONE: std::sync::LazyLock<Epoch> = std::sync::LazyLock::new(|| Epoch(Arc::from("")));

impl Epoch {
    /// Accepts 0-32 ASCII alphanumerics (what brokers generate; safe in tokens, JSON and keys).
    /// The empty string is [`Epoch::none`].
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() {
            return Some(Self::none());
        }
        let ok = s.len() <= MAX_EPOCH_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| Self(Arc::from(s)))
    }

    /// The epoch of a channel that has none yet (one shared allocation).
    pub fn none() -> Self {
        NONE.clone()
    }

    /// True for [`Epoch::none`].
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// A fresh epoch from 64 random bits, rendered as 16 hex digits.
    pub fn from_random(bits: u64) -> Self {
        let hex = Self::random_hex(bits);
        // Hex digits are ASCII.
        Self(Arc::from(std::str::from_utf8(&hex).unwrap_or_default()))
    }

    /// The 16 lowercase hex digits of [`Epoch::from_random`], on the stack: what a publish
    /// sends as the epoch a new channel would get (most publishes go to a channel that has one).
    pub fn random_hex(bits: u64) -> [u8; 16] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (i, d) in out.iter_mut().enumerate() {
            *d = DIGITS[((bits >> (60 - 4 * i)) & 0xf) as usize];
        }
        out
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when both are clones of one allocation: equal without comparing the strings. The
    /// fan-out path keeps one allocation per channel epoch so that its per-subscriber check is
    /// this pointer compare (see [`Epoch::adopt`]).
    pub fn same_arc(&self, other: &Epoch) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Makes `self` share `canonical`'s allocation when they are equal; returns whether they are.
    pub fn adopt(&mut self, canonical: &Epoch) -> bool {
        if self.same_arc(canonical) {
            return true;
        }
        if *self.0 == *canonical.0 {
            *self = canonical.clone();
            return true;
        }
        false
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A point in one channel's stream: "I have seen everything up to and including `offset`".
/// Offset 0 means "nothing yet".
///
/// Two positions continue each other across the empty epoch: `("", 0)` is followed by offset 1
/// of the channel's first epoch (see [`StreamPosition::is_followed_by`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    pub epoch: Epoch,
    pub offset: u64,
}

impl StreamPosition {
    /// Where a channel without history stands: `("", 0)`.
    pub fn start() -> Self {
        Self {
            epoch: Epoch::none(),
            offset: 0,
        }
    }

    /// True when the message at (`epoch`, `offset`) comes right after this position: the next
    /// offset of the same epoch, or offset 1 of any epoch after `("", 0)` (the channel's first
    /// message, whose publish created its epoch).
    pub fn is_followed_by(&self, epoch: &Epoch, offset: u64) -> bool {
        if self.epoch == *epoch {
            // Checked: a client's position may say offset u64::MAX.
            self.offset.checked_add(1) == Some(offset)
        } else {
            self.epoch.is_none() && self.offset == 0 && offset == 1
        }
    }
}

/// Who published a message from a client connection (the WebSocket `publish` op): the user of
/// the publisher's token (`sub`) and its `info` claim. Set by the server, never taken from what
/// the client sent, and delivered as the message's `from` and `info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sender {
    pub user: Box<str>,
    /// The token's `info` claim, compact JSON.
    pub info: Option<Bytes>,
}

impl Sender {
    /// What the sender adds to a stored message's size.
    pub fn len(&self) -> usize {
        self.user.len() + self.info.as_ref().map_or(0, Bytes::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One published message, as stored in history and relayed between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub channel: ChannelName,
    pub offset: u64,
    pub epoch: Epoch,
    /// `None` means the default SSE event type, `message`.
    pub event: Option<EventName>,
    /// Compact, single-line JSON exactly as published (see [`crate::json::compact`]).
    pub data: Bytes,
    /// Unix time in microseconds when the publish was accepted; drives end-to-end latency metrics.
    pub published_at_us: u64,
    /// The client that published it, for messages published over WebSocket with a token that
    /// has a `sub` (boxed: most messages have none).
    pub sender: Option<Box<Sender>>,
}

impl Message {
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
    }

    /// About what the message costs where it is kept and sent: its data plus its header
    /// (offset, epoch, event, channel). Byte bounds on history pages and queues count this.
    pub fn stored_len(&self) -> usize {
        const HEADER: usize = 64;
        self.data.len()
            + self.channel.as_str().len()
            + self.event.as_ref().map_or(0, |e| e.as_str().len())
            + self.sender.as_ref().map_or(0, |s| s.len())
            + HEADER
    }

    /// The SSE event type this message is delivered as.
    pub fn event_name(&self) -> &str {
        self.event.as_ref().map_or("message", EventName::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_parsing_is_strict() {
        assert!(Epoch::parse("abc123").is_some());
        assert!(Epoch::parse("").is_some_and(|e| e.is_none() && e == Epoch::none()));
        assert!(!Epoch::parse("a").is_some_and(|e| e.is_none()));
        assert!(Epoch::parse("a,b").is_none());
        assert!(Epoch::parse(&"a".repeat(MAX_EPOCH_LEN + 1)).is_none());
        assert_eq!(Epoch::from_random(255).as_str(), "00000000000000ff");
        for bits in [0, 1, 0x0123_4567_89ab_cdef, u64::MAX, 0xf000_0000_0000_000f] {
            assert_eq!(Epoch::from_random(bits).as_str(), format!("{bits:016x}"));
        }
    }

    #[test]
    fn the_last_offset_is_followed_by_nothing() {
        // Found by the `resume_token` fuzz harness (a `Last-Event-ID` offset of u64::MAX):
        // `offset + 1` overflowed, a panic in debug builds.
        let e = Epoch::parse("e1").expect("valid");
        let last = StreamPosition {
            epoch: e.clone(),
            offset: u64::MAX,
        };
        assert!(!last.is_followed_by(&e, 0));
        assert!(!last.is_followed_by(&e, u64::MAX));
    }

    #[test]
    fn the_start_position_continues_into_the_first_epoch() {
        let e = Epoch::parse("e1").expect("valid");
        let start = StreamPosition::start();
        assert!(start.is_followed_by(&e, 1));
        assert!(!start.is_followed_by(&e, 2));
        let at = StreamPosition {
            epoch: e.clone(),
            offset: 4,
        };
        assert!(at.is_followed_by(&e, 5));
        assert!(!at.is_followed_by(&Epoch::parse("e2").expect("valid"), 1));
        assert!(!at.is_followed_by(&e, 4));
    }

    #[test]
    fn adopt_shares_equal_epochs_and_refuses_others() {
        let canonical = Epoch::parse("abc").expect("valid");
        let mut copy = Epoch::parse("abc").expect("valid");
        assert!(!copy.same_arc(&canonical));
        assert!(copy.adopt(&canonical));
        assert!(copy.same_arc(&canonical));
        let mut other = Epoch::parse("abd").expect("valid");
        assert!(!other.adopt(&canonical));
        assert_eq!(other.as_str(), "abd");
    }
}
