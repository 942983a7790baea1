//! Fuzz target `channel_pattern`: the channel patterns of API-key scopes and token claims
//! (`news`, `news.*`, `*`) and what they cover.
//!
//! A pattern decides what a credential may read or publish, so a pattern that covers more than
//! its text says is an authorization hole. The input is a pattern, a line break, and a channel.

use crate::{
    channel::{ChannelName, MAX_CHANNEL_LEN},
    pattern::{ChannelPattern, PatternError},
};

/// Separators a prefix pattern must end with.
const SEPARATORS: &[u8] = b".:/-_@=+";

/// What the documented rules make of `text`: `Ok(None)` for `*`, `Ok(Some((fixed, prefix)))`
/// for an exact name or a prefix, or the refusal.
fn reference(text: &str) -> Result<Option<(&str, bool)>, PatternError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(PatternError::Empty);
    }
    if text == "*" {
        return Ok(None);
    }
    let prefix = text.ends_with('*');
    let fixed = if prefix {
        &text[..text.len() - 1]
    } else {
        text
    };
    if fixed.contains('*') {
        return Err(PatternError::MisplacedStar(text.to_owned()));
    }
    if prefix
        && !fixed
            .bytes()
            .last()
            .is_some_and(|b| SEPARATORS.contains(&b))
    {
        return Err(PatternError::NoSeparator(text.to_owned()));
    }
    // A pattern that can cover no channel is refused: a prefix needs one character after it.
    let max = if prefix {
        MAX_CHANNEL_LEN - 1
    } else {
        MAX_CHANNEL_LEN
    };
    if let Err(e) = ChannelName::parse_with_limit(fixed, max) {
        return Err(PatternError::BadName {
            pattern: text.to_owned(),
            reason: e.to_string(),
        });
    }
    Ok(Some((fixed, prefix)))
}

/// The harness.
pub fn channel_pattern(data: &[u8]) {
    let text = super::text(data);
    let (pattern_text, channel) = text.split_once('\n').unwrap_or((&text, ""));
    let parsed = ChannelPattern::parse(pattern_text);
    let want = reference(pattern_text);
    match (&parsed, &want) {
        (Ok(p), Ok(w)) => {
            let form = match p {
                ChannelPattern::Any => None,
                ChannelPattern::Exact(n) => Some((&**n, false)),
                ChannelPattern::Prefix(n) => Some((&**n, true)),
            };
            assert_eq!(form, *w, "{pattern_text:?}");
        }
        // The kind of refusal must agree; its message may say more.
        (Err(got), Err(want)) => assert_eq!(
            std::mem::discriminant(got),
            std::mem::discriminant(want),
            "{pattern_text:?}: {got} / {want}"
        ),
        _ => panic!("{pattern_text:?}: parsed {parsed:?}, the rules say {want:?}"),
    }
    let Ok(pattern) = parsed else {
        return;
    };
    assert_eq!(
        ChannelPattern::parse(&pattern.to_string()).as_ref(),
        Ok(&pattern)
    );

    // What it covers: exactly its name, or strictly below its prefix, never into a word.
    let covered = pattern.matches(channel);
    let want = match want {
        Ok(None) => true,
        Ok(Some((name, false))) => channel == name,
        Ok(Some((prefix, true))) => channel.len() > prefix.len() && channel.starts_with(prefix),
        Err(_) => unreachable!("checked above"),
    };
    assert_eq!(covered, want, "{pattern} on {channel:?}");
    if let ChannelPattern::Prefix(p) = &pattern
        && covered
    {
        assert!(SEPARATORS.contains(&channel.as_bytes()[p.len() - 1]));
    }
    assert_eq!(
        ChannelPattern::any_matches(std::slice::from_ref(&pattern), channel),
        covered
    );
}
