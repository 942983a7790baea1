//! Fuzz target `claims`: the claims of a subscriber token (the JSON payload of a JWT whose
//! signature the server has checked; the crypto is not fuzzed), their time checks, and the read
//! and publish decisions they lead to.
//!
//! The payload is read a second time by [`reference`], the claim table of `auth/claims.rs`
//! applied to plain `serde_json` values; then every decision for channels the claims name (and
//! a few they do not) must follow the rules: a user channel `NS:ID` only for `sub == ID`,
//! nothing anonymous unless the namespace says so, and a pattern covers only what it names.

use serde_json::Value;

use crate::{
    ChannelName,
    auth::{
        Claims, ClaimsError, ClientPublish, Decision, Rules, TimeError, can_publish, can_read,
        claims::{MAX_INFO_BYTES, MAX_PATTERNS, MAX_SUB_LEN},
    },
    json,
    pattern::ChannelPattern,
};

/// Claims Herald reads; each may appear once.
const KNOWN: [&str; 7] = ["sub", "exp", "nbf", "iat", "channels", "publish", "info"];

/// What the claim table makes of `payload`: `Ok` with (sub, exp, nbf, iat, channels, publish,
/// info), or the refusal's kind.
type Reading = (
    Option<String>,
    u64,
    Option<u64>,
    Option<u64>,
    Vec<String>,
    Vec<String>,
    Option<String>,
);

fn malformed() -> ClaimsError {
    ClaimsError::Malformed(String::new())
}

fn reference(payload: &[u8]) -> Result<Reading, ClaimsError> {
    let text = std::str::from_utf8(payload).map_err(|_| malformed())?;
    let members = super::requests::members(text).ok_or_else(malformed)?;
    let claim = |name: &str| -> Result<Option<Value>, ClaimsError> {
        let mut found = members.iter().filter(|(k, _)| k == name);
        let first = found.next();
        if found.next().is_some() {
            return Err(malformed());
        }
        first
            .map(|(_, raw)| serde_json::from_str::<Value>(raw.get()).map_err(|_| malformed()))
            .transpose()
            .map(|v| v.filter(|v| !v.is_null()))
    };
    let mut values = Vec::new();
    for name in KNOWN {
        values.push(claim(name)?);
    }
    let [sub, exp, nbf, iat, channels, publish, info] =
        <[Option<Value>; 7]>::try_from(values).unwrap_or_else(|_| unreachable!("seven claims"));
    // Types first (any wrong type is a malformed payload), then the values, in the order
    // `Claims::parse` documents: sub, info, exp, nbf, iat, channels, publish.
    let text_of = |v: Option<Value>| match v {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(malformed()),
    };
    let sub = text_of(sub)?;
    let dates = [exp, nbf, iat].map(|d| match d {
        None => Ok(None),
        Some(Value::Number(n)) => Ok(Some(n)),
        Some(_) => Err(malformed()),
    });
    let list = |v: Option<Value>| match v {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s]),
        Some(Value::Array(a)) => a
            .into_iter()
            .map(|p| text_of(Some(p)).map(Option::unwrap_or_default))
            .collect(),
        Some(_) => Err(malformed()),
    };
    let (channels, publish) = (list(channels)?, list(publish)?);
    let [exp, nbf, iat] = dates;
    let (exp, nbf, iat) = (exp?, nbf?, iat?);
    if sub
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > MAX_SUB_LEN)
    {
        return Err(ClaimsError::BadSub);
    }
    let info = match members.iter().find(|(k, _)| k == "info") {
        Some((_, raw)) if info.is_some() => {
            let compact = json::compact(raw.get());
            if compact.len() > MAX_INFO_BYTES {
                return Err(ClaimsError::InfoTooLarge);
            }
            json::check_interoperable(&compact).map_err(|_| malformed())?;
            Some(compact)
        }
        _ => None,
    };
    let date = |n: Option<serde_json::Number>, claim| -> Result<Option<u64>, ClaimsError> {
        let Some(n) = n else { return Ok(None) };
        if let Some(u) = n.as_u64() {
            return Ok(Some(u));
        }
        match n.as_f64() {
            Some(f) if (0.0..18_446_744_073_709_551_615.0).contains(&f) => Ok(Some(f as u64)),
            _ => Err(ClaimsError::BadDate(claim)),
        }
    };
    let exp = date(exp, "exp")?.ok_or(ClaimsError::MissingExp)?;
    let (nbf, iat) = (date(nbf, "nbf")?, date(iat, "iat")?);
    for (name, patterns) in [("channels", &channels), ("publish", &publish)] {
        if patterns.len() > MAX_PATTERNS {
            return Err(ClaimsError::TooManyPatterns { claim: name });
        }
        if let Some(e) = patterns.iter().find_map(|p| ChannelPattern::parse(p).err()) {
            return Err(ClaimsError::Pattern {
                claim: name,
                source: e,
            });
        }
    }
    Ok((sub, exp, nbf, iat, channels, publish, info))
}

/// The harness.
pub fn claims(data: &[u8]) {
    let got = Claims::parse(data);
    let want = reference(data);
    match (&got, &want) {
        (Ok(c), Ok((sub, exp, nbf, iat, channels, publish, info))) => {
            assert_eq!(c.sub.as_deref(), sub.as_deref());
            assert_eq!((c.exp, c.nbf, c.iat), (*exp, *nbf, *iat));
            let info = info.as_deref().map(str::as_bytes);
            assert_eq!(c.info.as_deref(), info);
            for (set, listed) in [(&c.channels, channels), (&c.publish, publish)] {
                let listed: Vec<ChannelPattern> = listed
                    .iter()
                    .filter_map(|p| ChannelPattern::parse(p).ok())
                    .collect();
                assert!(set.iter().all(|p| listed.contains(p)));
                assert!(listed.iter().all(|p| set.iter().any(|q| q == p)));
            }
        }
        (Err(g), Err(w)) => assert_eq!(
            std::mem::discriminant(g),
            std::mem::discriminant(w),
            "{g} / {w}"
        ),
        _ => panic!("Claims::parse {got:?}, the claim table says {want:?}"),
    }
    let Ok(c) = got else {
        return;
    };
    check_time(&c);
    if let Some(sub) = &c.sub {
        super::rooms::check(sub, c.info.as_deref());
    }
    for channel in channels_named(&c) {
        check_access(&c, &channel);
    }
}

fn check_time(c: &Claims) {
    let edges = [0, 1, c.exp, c.exp.saturating_add(1), u64::MAX];
    let edges = edges
        .into_iter()
        .chain(c.nbf.into_iter().flat_map(|t| [t, t.saturating_sub(1)]))
        .chain(c.iat.into_iter().flat_map(|t| [t, t.saturating_sub(1)]));
    for now in edges {
        for leeway in [0, 5, u64::MAX] {
            let later = now.saturating_add(leeway);
            let want = if c.exp.saturating_add(leeway) < now {
                Err(TimeError::Expired)
            } else if c.nbf.is_some_and(|t| t > later) || c.iat.is_some_and(|t| t > later) {
                Err(TimeError::NotYetValid)
            } else {
                Ok(())
            };
            assert_eq!(
                c.check_time(now, leeway),
                want,
                "now {now}, leeway {leeway}"
            );
        }
    }
}

/// Channels worth asking about: what the patterns name, just beside it, and fixed ones.
fn channels_named(c: &Claims) -> Vec<String> {
    let mut out: Vec<String> = ["news", "news.sport", "newsletter", "user:42", "a:", ":x"]
        .map(String::from)
        .into();
    for p in c.channels.iter().chain(c.publish.iter()) {
        match p {
            ChannelPattern::Any => {}
            ChannelPattern::Exact(n) => out.extend([n.to_string(), format!("{n}x")]),
            ChannelPattern::Prefix(p) => out.extend([format!("{p}a"), p.to_string()]),
        }
    }
    if let Some(sub) = &c.sub {
        out.extend([format!("user:{sub}"), format!("user:{sub}x")]);
    }
    out.retain(|c| ChannelName::parse(c).is_ok());
    out
}

fn check_access(c: &Claims, channel: &str) {
    let user_id = channel.split_once(':').map(|(_, id)| id);
    for anonymous_read in [false, true] {
        for user_channels in [false, true] {
            for client_publish in [
                ClientPublish::No,
                ClientPublish::Token,
                ClientPublish::Anonymous,
            ] {
                let rules = Rules {
                    anonymous_read,
                    client_publish,
                    user_channels,
                };
                let user = user_channels && user_id.is_some();
                let read = can_read(&rules, Some(c), channel);
                let owner = c.sub.as_deref().is_some_and(|s| Some(s) == user_id);
                let granted = anonymous_read || c.channels.matches(channel);
                let want = if (user && owner) || (!user && granted) {
                    Decision::Allow
                } else {
                    Decision::Forbidden
                };
                assert_eq!(read, want, "read {channel:?} with {rules:?}");
                // A user channel is its owner's only: no pattern, no anonymous reading opens it.
                if user && !owner {
                    assert_ne!(read, Decision::Allow);
                }
                let anonymous = can_read(&rules, None, channel);
                let want = match anonymous_read && !user {
                    true => Decision::Allow,
                    false => Decision::Unauthorized,
                };
                assert_eq!(anonymous, want);

                let publish = can_publish(&rules, Some(c), channel);
                let want = match client_publish {
                    ClientPublish::Anonymous => Decision::Allow,
                    ClientPublish::Token if c.publish.matches(channel) => Decision::Allow,
                    _ => Decision::Forbidden,
                };
                assert_eq!(publish, want);
                assert_eq!(
                    can_publish(&rules, None, channel),
                    match client_publish {
                        ClientPublish::No => Decision::Forbidden,
                        ClientPublish::Token => Decision::Unauthorized,
                        ClientPublish::Anonymous => Decision::Allow,
                    }
                );
            }
        }
    }
}
