//! Channel patterns: which channels a credential covers (an API key's `channels`, a token's
//! `channels` and `publish` claims).
//!
//! Three forms, nothing else:
//! - an exact channel name: `news` covers `news` only;
//! - a prefix: `news.*` covers `news.` followed by at least one character (`news.sport`,
//!   `news.a.b`), never `news` itself nor `newsletter`;
//! - `*`: every channel.
//!
//! A prefix must end with a separator (`. : / - _ @ = +`) so a pattern can never match in the
//! middle of a word: `news*` is refused rather than silently covering `newsletter`.

use std::fmt;

use crate::channel::{ChannelName, MAX_CHANNEL_LEN};

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern is empty")]
    Empty,
    #[error("pattern {0:?}: `*` may only end a pattern (`news.*`) or stand alone (`*`)")]
    MisplacedStar(String),
    #[error(
        "pattern {0:?}: the `*` must follow a separator such as `.` or `:` (write `news.*`, not `news*`)"
    )]
    NoSeparator(String),
    #[error("pattern {pattern:?}: {reason}")]
    BadName { pattern: String, reason: String },
}

/// One pattern; see the module docs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ChannelPattern {
    /// `*`
    Any,
    /// An exact channel name.
    Exact(Box<str>),
    /// The prefix of `prefix*` (including its trailing separator, without the `*`).
    Prefix(Box<str>),
}

fn is_separator(b: u8) -> bool {
    matches!(b, b'.' | b':' | b'/' | b'-' | b'_' | b'@' | b'=' | b'+')
}

impl ChannelPattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text == "*" {
            return Ok(Self::Any);
        }
        let (name, prefix) = match text.strip_suffix('*') {
            Some(p) => (p, true),
            None => (text, false),
        };
        if name.contains('*') {
            return Err(PatternError::MisplacedStar(text.to_owned()));
        }
        if prefix && !name.as_bytes().last().copied().is_some_and(is_separator) {
            return Err(PatternError::NoSeparator(text.to_owned()));
        }
        // The fixed part obeys the channel-name rules, so a pattern that can match nothing (a
        // space, a comma) is an error at start rather than a silent dead rule. A prefix may be
        // as long as a name minus the one character it requires after it.
        let max = if prefix {
            MAX_CHANNEL_LEN - 1
        } else {
            MAX_CHANNEL_LEN
        };
        ChannelName::parse_with_limit(name, max).map_err(|e| PatternError::BadName {
            pattern: text.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(if prefix {
            Self::Prefix(name.into())
        } else {
            Self::Exact(name.into())
        })
    }

    /// Whether `channel` is covered.
    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(name) => **name == *channel,
            Self::Prefix(p) => channel.len() > p.len() && channel.starts_with(&**p),
        }
    }

    /// Whether any of `patterns` covers `channel`.
    pub fn any_matches(patterns: &[Self], channel: &str) -> bool {
        patterns.iter().any(|p| p.matches(channel))
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

impl std::str::FromStr for ChannelPattern {
    type Err = PatternError;
    fn from_str(s: &str) -> Result<Self, PatternError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn the_three_forms() {
        assert!(p("news").matches("news"));
        assert!(!p("news").matches("news.sport"));
        assert!(!p("news").matches("new"));
        let prefix = p("news.*");
        assert!(prefix.matches("news.sport"));
        assert!(prefix.matches("news.a.b"));
        for no in ["news", "news.", "newsletter", "user:1", "xnews.sport"] {
            assert!(!prefix.matches(no), "{no}");
        }
        assert!(p("chat:*").matches("chat:room1"));
        assert!(!p("chat:*").matches("chat"));
        assert!(p("*").matches("anything"));
        assert_eq!(p(" orders.* ").to_string(), "orders.*");
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "", "  ", "news*", "*news", "ne*ws.*", "a b", "news.**", "**",
        ] {
            assert!(ChannelPattern::parse(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            ChannelPattern::parse("news*"),
            Err(PatternError::NoSeparator(_))
        ));
    }

    #[test]
    fn a_prefix_leaves_room_for_a_channel_below_it() {
        // Found by the `channel_pattern` fuzz harness's reading of the rules: a 255-byte prefix
        // was accepted, a dead rule no channel name (at most 255 bytes) can match.
        let longest = format!("{}.*", "a".repeat(MAX_CHANNEL_LEN - 2));
        assert!(p(&longest).matches(&format!("{}.b", "a".repeat(MAX_CHANNEL_LEN - 2))));
        let too_long = format!("{}.*", "a".repeat(MAX_CHANNEL_LEN - 1));
        assert!(matches!(
            ChannelPattern::parse(&too_long),
            Err(PatternError::BadName { .. })
        ));
        assert!(ChannelPattern::parse(&"a".repeat(MAX_CHANNEL_LEN)).is_ok());
    }

    proptest! {
        /// A prefix pattern never covers a channel outside its prefix, nor the bare prefix.
        #[test]
        fn prefix_matches_only_below_the_prefix(
            prefix in "[a-z]{1,8}[.:]",
            channel in "[a-z.:]{0,12}",
        ) {
            let pattern = p(&format!("{prefix}*"));
            let expected = channel.starts_with(&prefix) && channel.len() > prefix.len();
            prop_assert_eq!(pattern.matches(&channel), expected);
        }
    }
}
