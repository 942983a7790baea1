//! Channel and event names: validated once at the edge, then cheap to clone everywhere.
//!
//! Channel names use a deliberately small charset (`A-Z a-z 0-9 _ - . : @ / = +`). It excludes
//! `,` and `;` because the SSE resume token uses them as separators, and excludes whitespace and
//! quotes so a name can be written into JSON and SSE without escaping.

use std::{borrow::Borrow, fmt, sync::Arc};

/// The longest channel name any configuration may allow.
pub const MAX_CHANNEL_LEN: usize = 255;
/// The longest event type name.
pub const MAX_EVENT_LEN: usize = 64;
/// Event types starting with this prefix are emitted by the server itself (SSE control events).
pub const RESERVED_EVENT_PREFIX: &str = "herald.";
/// The event type of a room's join message (a user's first connection entered the channel).
pub const JOIN_EVENT: &str = "herald.join";
/// The event type of a room's leave message (a user's last connection left, after the grace).
pub const LEAVE_EVENT: &str = "herald.leave";

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is empty")]
    Empty,
    #[error("name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("name contains {0:?}; allowed are A-Z a-z 0-9 and _ - . : @ / = +")]
    BadChar(char),
    #[error("event types starting with \"herald.\" are reserved for the server")]
    Reserved,
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@' | b'/' | b'=' | b'+')
}

fn check(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            len: name.len(),
            max,
        });
    }
    match name.bytes().position(|b| !is_name_byte(b)) {
        // Report the whole (possibly multi-byte) char, not the byte.
        Some(i) => Err(NameError::BadChar(name[i..].chars().next().unwrap_or('?'))),
        None => Ok(()),
    }
}

/// A validated channel name. Cloning is a refcount increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` against the charset and `max_len` (capped at [`MAX_CHANNEL_LEN`]).
    pub fn parse_with_limit(name: &str, max_len: usize) -> Result<Self, NameError> {
        check(name, max_len.min(MAX_CHANNEL_LEN))?;
        Ok(Self(Arc::from(name)))
    }

    /// Validates `name` against the charset and [`MAX_CHANNEL_LEN`].
    pub fn parse(name: &str) -> Result<Self, NameError> {
        Self::parse_with_limit(name, MAX_CHANNEL_LEN)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated event type (the SSE `event:` field). Same charset as channels, at most 64 bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

impl EventName {
    /// Validates an event type supplied by a publisher; the `herald.` prefix is refused.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        check(name, MAX_EVENT_LEN)?;
        if name.starts_with(RESERVED_EVENT_PREFIX) {
            return Err(NameError::Reserved);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The server's own `herald.join`: the only way to make one (publishers cannot).
    pub fn join() -> Self {
        static JOIN: std::sync::LazyLock<EventName> =
            std::sync::LazyLock::new(|| EventName(Arc::from(JOIN_EVENT)));
        JOIN.clone()
    }

    /// The server's own `herald.leave`.
    pub fn leave() -> Self {
        static LEAVE: std::sync::LazyLock<EventName> =
            std::sync::LazyLock::new(|| EventName(Arc::from(LEAVE_EVENT)));
        LEAVE.clone()
    }

    /// Reads an event type back from storage (history, the backbone): a publisher's, or one of
    /// the server's own room events. Any other `herald.` type is refused as from a publisher.
    pub fn parse_stored(name: &str) -> Result<Self, NameError> {
        match name {
            JOIN_EVENT => Ok(Self::join()),
            LEAVE_EVENT => Ok(Self::leave()),
            other => Self::parse(other),
        }
    }

    /// True for the server's own event types (`herald.join`, `herald.leave`).
    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(RESERVED_EVENT_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_charset() {
        for ok in [
            "news",
            "chat:room-1",
            "user@example.com/inbox",
            "a.b_c=d+e",
            "X",
        ] {
            assert_eq!(
                ChannelName::parse(ok).map(|c| c.to_string()),
                Ok(ok.to_string())
            );
        }
    }

    #[test]
    fn rejects_separators_whitespace_and_unicode() {
        assert_eq!(ChannelName::parse(""), Err(NameError::Empty));
        assert_eq!(ChannelName::parse("a,b"), Err(NameError::BadChar(',')));
        assert_eq!(ChannelName::parse("a;b"), Err(NameError::BadChar(';')));
        assert_eq!(ChannelName::parse("a b"), Err(NameError::BadChar(' ')));
        assert_eq!(ChannelName::parse("a\"b"), Err(NameError::BadChar('"')));
        assert_eq!(
            ChannelName::parse("caf\u{e9}"),
            Err(NameError::BadChar('\u{e9}'))
        );
    }

    #[test]
    fn enforces_length_limits() {
        let long = "a".repeat(MAX_CHANNEL_LEN + 1);
        assert!(matches!(
            ChannelName::parse(&long),
            Err(NameError::TooLong { .. })
        ));
        assert!(ChannelName::parse_with_limit("abcd", 3).is_err());
        assert!(ChannelName::parse_with_limit("abc", 3).is_ok());
        // A configured limit can never exceed the hard maximum.
        assert!(ChannelName::parse_with_limit(&long, usize::MAX).is_err());
    }

    #[test]
    fn event_names_reserve_the_server_prefix() {
        assert!(EventName::parse("update").is_ok());
        assert_eq!(
            EventName::parse("herald.subscribed"),
            Err(NameError::Reserved)
        );
        assert!(EventName::parse(&"e".repeat(MAX_EVENT_LEN + 1)).is_err());
        assert!(EventName::parse("line\nbreak").is_err());
    }

    #[test]
    fn only_the_server_makes_room_events() {
        assert_eq!(EventName::parse(JOIN_EVENT), Err(NameError::Reserved));
        assert_eq!(EventName::join().as_str(), JOIN_EVENT);
        assert!(
            EventName::join().is_reserved() && !EventName::parse("x").expect("ok").is_reserved()
        );
        assert_eq!(EventName::parse_stored(LEAVE_EVENT), Ok(EventName::leave()));
        assert_eq!(EventName::parse_stored("upd"), EventName::parse("upd"));
        assert_eq!(
            EventName::parse_stored("herald.other"),
            Err(NameError::Reserved)
        );
    }
}
