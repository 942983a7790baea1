//! Channel patterns: what a token's `channels` and `publish` claims (and other allow-lists) say.
//!
//! Three forms, nothing else:
//! - an exact channel name (`news`, `chat:room1`);
//! - a prefix pattern: a name ending in `.*`, `:*` or `/*` (`news.*`, `chat:*`) matches every
//!   channel that starts with the part before the `*` **and has at least one more character**,
//!   so `news.*` matches `news.sport` but neither `news` nor `news.` nor `newsletter`;
//! - `*` alone: every channel.
//!
//! A `*` anywhere else is refused, so a typo can never turn into a wider grant than written.

use std::fmt;

use crate::channel::{ChannelName, MAX_CHANNEL_LEN, NameError};

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern {pattern:?}: `*` is allowed only alone or after a final `.`, `:` or `/`")]
    Wildcard { pattern: String },
    #[error("pattern {pattern:?}: {source}")]
    Name { pattern: String, source: NameError },
}

/// One parsed pattern.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ChannelPattern {
    /// Exactly this channel.
    Exact(Box<str>),
    /// Channels starting with this prefix (which ends in `.`, `:` or `/`) followed by at least
    /// one more character.
    Prefix(Box<str>),
    /// Every channel.
    Any,
}

impl ChannelPattern {
    pub fn parse(pattern: &str) -> Result<Self, PatternError> {
        if pattern == "*" {
            return Ok(Self::Any);
        }
        let name_err = |source| PatternError::Name {
            pattern: truncate(pattern),
            source,
        };
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with(['.', ':', '/']) && prefix.len() > 1 => {
                // The prefix itself must be made of channel-name characters (it is the start of
                // a valid name); its length leaves room for at least one more character.
                ChannelName::parse_with_limit(prefix, MAX_CHANNEL_LEN - 1).map_err(name_err)?;
                Ok(Self::Prefix(prefix.into()))
            }
            Some(_) => Err(PatternError::Wildcard {
                pattern: truncate(pattern),
            }),
            None if pattern.contains('*') => Err(PatternError::Wildcard {
                pattern: truncate(pattern),
            }),
            None => {
                ChannelName::parse(pattern).map_err(name_err)?;
                Ok(Self::Exact(pattern.into()))
            }
        }
    }

    pub fn matches(&self, channel: &str) -> bool {
        match self {
            Self::Exact(name) => **name == *channel,
            Self::Prefix(prefix) => channel.len() > prefix.len() && channel.starts_with(&**prefix),
            Self::Any => true,
        }
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Prefix(prefix) => write!(f, "{prefix}*"),
            Self::Any => f.write_str("*"),
        }
    }
}

/// A list of patterns; matches when any of them does. Empty: matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternSet(Vec<ChannelPattern>);

impl PatternSet {
    /// Parses every pattern; the first bad one is the error.
    pub fn parse<'a>(patterns: impl IntoIterator<Item = &'a str>) -> Result<Self, PatternError> {
        let mut out: Vec<ChannelPattern> = Vec::new();
        for p in patterns {
            let p = ChannelPattern::parse(p)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(Self(out))
    }

    pub fn matches(&self, channel: &str) -> bool {
        self.0.iter().any(|p| p.matches(channel))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ChannelPattern> {
        self.0.iter()
    }
}

/// Patterns come from tokens: never echo more than a short prefix of one in a message.
fn truncate(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn prefix_patterns_need_at_least_one_more_character() {
        let news = p("news.*");
        assert!(news.matches("news.sport"));
        assert!(news.matches("news.a.b"));
        assert!(!news.matches("news."), "the prefix alone is not matched");
        assert!(!news.matches("news"));
        assert!(!news.matches("newsletter"));
        assert!(!news.matches("user:1"));
        let chat = p("chat:*");
        assert!(chat.matches("chat:room1"));
        assert!(!chat.matches("chat:"));
        assert!(!chat.matches("chatter"));
    }

    #[test]
    fn exact_and_any() {
        assert!(p("news").matches("news"));
        assert!(!p("news").matches("news.sport"));
        assert!(!p("news").matches("new"));
        assert!(p("*").matches("anything:at/all"));
    }

    #[test]
    fn wildcards_elsewhere_and_bad_names_are_refused() {
        for bad in [
            "news*",
            "*news",
            "ne*ws",
            "news.**",
            ".*",
            "**",
            "news.*.x",
            "a b.*",
            "",
            "caf\u{e9}",
        ] {
            assert!(
                ChannelPattern::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn sets_match_any_member_and_dedupe() {
        let set = PatternSet::parse(["news.*", "alerts", "news.*"]).expect("valid");
        assert_eq!(set.iter().count(), 2);
        assert!(set.matches("alerts"));
        assert!(set.matches("news.x"));
        assert!(!set.matches("other"));
        assert!(!PatternSet::default().matches("alerts"));
        assert_eq!(
            set.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["news.*", "alerts"]
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_display_round_trips(s in ".{0,80}") {
            if let Ok(pattern) = ChannelPattern::parse(&s) {
                prop_assert_eq!(ChannelPattern::parse(&pattern.to_string()).ok(), Some(pattern));
            }
        }

        #[test]
        fn a_prefix_pattern_never_matches_its_bare_prefix_or_a_longer_word(
            prefix in "[a-z]{1,10}", rest in "[a-z0-9]{1,10}"
        ) {
            let pattern = p(&format!("{prefix}.*"));
            let dotted = format!("{prefix}.{rest}");
            let glued = format!("{prefix}{rest}");
            prop_assert!(pattern.matches(&dotted));
            prop_assert!(!pattern.matches(&prefix));
            prop_assert!(!pattern.matches(&glued));
        }
    }
}
