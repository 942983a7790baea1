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
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

impl Epoch {
    /// Accepts 1-32 ASCII alphanumerics (what brokers generate; safe in tokens, JSON and keys).
    pub fn parse(s: &str) -> Option<Self> {
        let ok = !s.is_empty()
            && s.len() <= MAX_EPOCH_LEN
            && s.bytes().all(|b| b.is_ascii_alphanumeric());
        ok.then(|| Self(Arc::from(s)))
    }

    /// A fresh epoch from 64 random bits, rendered as 16 hex digits.
    pub fn from_random(bits: u64) -> Self {
        Self(Arc::from(format!("{bits:016x}")))
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamPosition {
    pub epoch: Epoch,
    pub offset: u64,
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
}

impl Message {
    pub fn position(&self) -> StreamPosition {
        StreamPosition {
            epoch: self.epoch.clone(),
            offset: self.offset,
        }
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
        assert!(Epoch::parse("").is_none());
        assert!(Epoch::parse("a,b").is_none());
        assert!(Epoch::parse(&"a".repeat(MAX_EPOCH_LEN + 1)).is_none());
        assert_eq!(Epoch::from_random(255).as_str(), "00000000000000ff");
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
