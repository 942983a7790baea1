//! The claims of a subscriber token, read from the JSON payload of an already verified JWT.
//!
//! Signature checking belongs to the server (a well-kept JWT crate does it); what is here is
//! pure, so it can be unit tested and fuzzed: which claims Herald reads, their types and limits,
//! and the time checks.
//!
//! | claim | type | meaning |
//! |---|---|---|
//! | `exp` | NumericDate, required | the token is refused after it (plus leeway); connections end then |
//! | `nbf`, `iat` | NumericDate | refused before `nbf`, or when issued in the future (minus leeway) |
//! | `sub` | string | the user id; `NAME:ID` user channels are readable only when `sub == ID` |
//! | `channels` | string or array of patterns | what the holder may read (see [`crate::pattern`]) |
//! | `publish` | string or array of patterns | what the holder may publish to over WebSocket |
//! | `info` | any JSON | opaque user info a server may attach to what the holder publishes |
//!
//! `aud` and `iss` are checked by the verifier when configured; other claims are ignored.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{
    json,
    pattern::{ChannelPattern, PatternError},
};

/// Longest `sub` accepted.
pub const MAX_SUB_LEN: usize = 1024;
/// Most patterns in `channels` or `publish`.
pub const MAX_PATTERNS: usize = 1024;
/// Largest `info` (compact JSON), in bytes.
pub const MAX_INFO_BYTES: usize = 4096;

/// Why a token's claims were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimsError {
    #[error("the token's claims are not a JSON object with the expected types: {0}")]
    Malformed(String),
    #[error("the token has no `exp` claim; Herald requires expiring tokens")]
    MissingExp,
    #[error("`{0}` is not a valid NumericDate (seconds since the epoch)")]
    BadDate(&'static str),
    #[error("`sub` must be 1-{MAX_SUB_LEN} bytes")]
    BadSub,
    #[error("`{claim}` lists more than {MAX_PATTERNS} patterns")]
    TooManyPatterns { claim: &'static str },
    #[error("`{claim}`: {source}")]
    Pattern {
        claim: &'static str,
        source: PatternError,
    },
    #[error("`info` is larger than {MAX_INFO_BYTES} bytes")]
    InfoTooLarge,
}

/// Why a token is not valid at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf or iat in the future)")]
    NotYetValid,
}

/// A list of channel patterns (a claim); matches when any of them does. Empty: matches nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PatternSet(Vec<ChannelPattern>);

impl PatternSet {
    /// Parses every pattern (dropping repeats); the first bad one is the error.
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
        ChannelPattern::any_matches(&self.0, channel)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ChannelPattern> {
        self.0.iter()
    }
}

/// What a verified token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: Option<Box<str>>,
    /// Seconds since the Unix epoch.
    pub exp: u64,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    /// Channels the holder may read.
    pub channels: PatternSet,
    /// Channels the holder may publish to from a client connection.
    pub publish: PatternSet,
    /// `info`, compact JSON, when present.
    pub info: Option<Bytes>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
    #[serde(default)]
    channels: Option<OneOrMany>,
    #[serde(default)]
    publish: Option<OneOrMany>,
    #[serde(default, borrow)]
    info: Option<&'a RawValue>,
}

/// A NumericDate: a non-negative JSON number of seconds; fractions are dropped.
fn date(n: Option<serde_json::Number>, claim: &'static str) -> Result<Option<u64>, ClaimsError> {
    let Some(n) = n else { return Ok(None) };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
        _ => Err(ClaimsError::BadDate(claim)),
    }
}

fn patterns(v: Option<OneOrMany>, claim: &'static str) -> Result<PatternSet, ClaimsError> {
    let list = match v {
        None => return Ok(PatternSet::default()),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if list.len() > MAX_PATTERNS {
        return Err(ClaimsError::TooManyPatterns { claim });
    }
    PatternSet::parse(list.iter().map(String::as_str))
        .map_err(|source| ClaimsError::Pattern { claim, source })
}

impl Claims {
    /// Reads the claims from a token payload (JSON). Unknown claims are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, ClaimsError> {
        // serde would also read a struct from an array (`["alice", 5]`); a payload is an object.
        if payload.trim_ascii_start().first() != Some(&b'{') {
            return Err(ClaimsError::Malformed(
                "the payload is not a JSON object".into(),
            ));
        }
        // serde_json checks UTF-8 only in the strings it reads, not in unknown claims it skips.
        let text = std::str::from_utf8(payload)
            .map_err(|e| ClaimsError::Malformed(format!("the payload is not UTF-8 ({e})")))?;
        let raw: RawClaims<'_> =
            serde_json::from_str(text).map_err(|e| ClaimsError::Malformed(e.to_string()))?;
        let sub = match raw.sub {
            Some(s) if s.is_empty() || s.len() > MAX_SUB_LEN => return Err(ClaimsError::BadSub),
            s => s.map(String::into_boxed_str),
        };
        let info = match raw.info {
            None => None,
            Some(v) => {
                let compact = json::compact(v.get());
                if compact.len() > MAX_INFO_BYTES {
                    return Err(ClaimsError::InfoTooLarge);
                }
                // It may travel with messages: every client must be able to read it.
                json::check_interoperable(&compact)
                    .map_err(|e| ClaimsError::Malformed(format!("`info`: {e}")))?;
                Some(Bytes::from(compact))
            }
        };
        Ok(Self {
            exp: date(raw.exp, "exp")?.ok_or(ClaimsError::MissingExp)?,
            nbf: date(raw.nbf, "nbf")?,
            iat: date(raw.iat, "iat")?,
            sub,
            channels: patterns(raw.channels, "channels")?,
            publish: patterns(raw.publish, "publish")?,
            info,
        })
    }

    /// Checks `exp`, `nbf` and `iat` against `now` (seconds since the epoch), allowing `leeway`
    /// seconds of clock skew either way.
    pub fn check_time(&self, now: u64, leeway: u64) -> Result<(), TimeError> {
        if self.exp.saturating_add(leeway) < now {
            return Err(TimeError::Expired);
        }
        let later = now.saturating_add(leeway);
        if self.nbf.is_some_and(|nbf| nbf > later) || self.iat.is_some_and(|iat| iat > later) {
            return Err(TimeError::NotYetValid);
        }
        Ok(())
    }

    /// When the token stops being valid: `exp` plus the leeway, in seconds since the epoch.
    pub fn valid_until(&self, leeway: u64) -> u64 {
        self.exp.saturating_add(leeway)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_every_claim_herald_uses() {
        let c = Claims::parse(
            br#"{"sub":"42","exp":2000000000,"nbf":1.5,"iat":10,"aud":"x","jti":"j",
                "channels":["news.*","user:42"],"publish":"chat:*","info":{"name": "Ann"}}"#,
        )
        .expect("valid");
        assert_eq!(c.sub.as_deref(), Some("42"));
        assert_eq!((c.exp, c.nbf, c.iat), (2_000_000_000, Some(1), Some(10)));
        assert!(c.channels.matches("news.sport") && c.channels.matches("user:42"));
        assert!(!c.channels.matches("news"));
        assert!(c.publish.matches("chat:1") && !c.publish.matches("news.x"));
        assert_eq!(c.info.as_deref(), Some(&br#"{"name":"Ann"}"#[..]));
        let bare = Claims::parse(br#"{"exp":5}"#).expect("valid");
        assert!(bare.sub.is_none() && bare.channels.is_empty() && bare.publish.is_empty());
    }

    #[test]
    fn refuses_what_it_cannot_trust() {
        let err = |json: &str| Claims::parse(json.as_bytes()).expect_err(json);
        assert_eq!(err(r#"{"sub":"a"}"#), ClaimsError::MissingExp);
        assert_eq!(err(r#"{"exp":-1}"#), ClaimsError::BadDate("exp"));
        assert!(matches!(
            err(r#"{"exp":"soon"}"#),
            ClaimsError::Malformed(_)
        ));
        assert_eq!(err(r#"{"exp":1,"sub":""}"#), ClaimsError::BadSub);
        assert!(matches!(
            err(r#"{"exp":1,"channels":["ne*ws"]}"#),
            ClaimsError::Pattern {
                claim: "channels",
                ..
            }
        ));
        assert!(matches!(
            err(r#"{"exp":1,"publish":[1]}"#),
            ClaimsError::Malformed(_)
        ));
        assert!(matches!(err("[]"), ClaimsError::Malformed(_)));
        assert!(matches!(err(r#"["alice", 5]"#), ClaimsError::Malformed(_)));
        let big = format!(r#"{{"exp":1,"info":"{}"}}"#, "x".repeat(MAX_INFO_BYTES));
        assert_eq!(err(&big), ClaimsError::InfoTooLarge);
    }

    #[test]
    fn payloads_are_utf8_and_info_interoperable() {
        // Found by the `claims` fuzz harness's claim table: bytes that are not UTF-8 in an
        // unknown claim were skipped, and `info` took JSON that strict parsers refuse (as message
        // data did, see `json::check_interoperable`).
        let err = |json: &[u8]| Claims::parse(json).expect_err("refused");
        assert!(matches!(
            err(b"{\"exp\":1,\"x\":\"\xff\"}"),
            ClaimsError::Malformed(_)
        ));
        assert!(matches!(
            err(br#"{"exp":1,"info":{"a":"\ud800"}}"#),
            ClaimsError::Malformed(_)
        ));
        let deep = format!(
            r#"{{"exp":1,"info":{}1{}}}"#,
            "[".repeat(65),
            "]".repeat(65)
        );
        assert!(matches!(err(deep.as_bytes()), ClaimsError::Malformed(_)));
    }

    #[test]
    fn pattern_sets_match_any_member_and_drop_repeats() {
        let set = PatternSet::parse(["news.*", "alerts", "news.*"]).expect("valid");
        assert_eq!(set.iter().count(), 2);
        assert!(set.matches("alerts") && set.matches("news.x"));
        assert!(!set.matches("other") && !set.matches("news"));
        assert!(!PatternSet::default().matches("alerts"));
        assert!(PatternSet::parse(["ok", "bad*"]).is_err());
    }

    #[test]
    fn time_checks_allow_the_leeway_and_no_more() {
        let c = Claims::parse(br#"{"exp":100,"nbf":50,"iat":40}"#).expect("valid");
        assert_eq!(c.check_time(100, 0), Ok(()));
        assert_eq!(c.check_time(101, 0), Err(TimeError::Expired));
        assert_eq!(c.check_time(105, 5), Ok(()));
        assert_eq!(c.check_time(106, 5), Err(TimeError::Expired));
        assert_eq!(c.check_time(49, 0), Err(TimeError::NotYetValid));
        assert_eq!(c.check_time(45, 5), Ok(()));
        let future_iat = Claims::parse(br#"{"exp":100,"iat":90}"#).expect("valid");
        assert_eq!(future_iat.check_time(80, 5), Err(TimeError::NotYetValid));
        assert_eq!(c.valid_until(5), 105);
        let max = Claims::parse(format!(r#"{{"exp":{}}}"#, u64::MAX).as_bytes()).expect("valid");
        assert_eq!(max.check_time(u64::MAX, u64::MAX), Ok(()));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = Claims::parse(s.as_bytes());
        }

        #[test]
        fn check_time_never_panics(exp in any::<u64>(), nbf in any::<Option<u64>>(), now in any::<u64>(), leeway in any::<u64>()) {
            let c = Claims { sub: None, exp, nbf, iat: None, channels: PatternSet::default(), publish: PatternSet::default(), info: None };
            let _ = c.check_time(now, leeway);
        }
    }
}
