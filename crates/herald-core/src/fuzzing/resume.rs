//! Fuzz target `resume_token`: the SSE `Last-Event-ID` header (and `?last_event_id=`).
//!
//! The token comes back from any client on reconnect, so it is hostile input that decides which
//! history a stream replays. A token that parses must re-encode to a token that parses to the
//! same positions, fit the limit it was read under, and travel in an SSE `id:` line unchanged.

use crate::{
    channel::ChannelName,
    message::Epoch,
    sse,
    token::{MAX_TOKEN_LEN, ResumeToken, TokenError},
};

use super::wire;

/// The harness: parse `data` as a token, check what parsed against an independent reading of
/// the format (`epoch,offset,channel` entries joined by `;`), and round-trip it.
pub fn resume_token(data: &[u8]) {
    let text = super::text(data);
    let parsed = ResumeToken::parse(&text);
    let want = reference(&text);
    assert_eq!(
        parsed
            .as_ref()
            .map(ToString::to_string)
            .map_err(Clone::clone),
        want.as_ref()
            .map(|entries| entries.join(";"))
            .map_err(Clone::clone),
        "{text:?}"
    );
    let Ok(token) = parsed else {
        return;
    };

    // Each position is continued by the next offset of its epoch (or, from the start of a
    // channel without history, by the first message of any epoch), whatever the offset.
    for entry in want.iter().flatten() {
        let channel = entry.rsplit(',').next().unwrap_or_default();
        let Some(p) = token.get(channel) else {
            panic!("{channel} listed but not found");
        };
        if let Some(next) = p.offset.checked_add(1) {
            assert!(p.is_followed_by(&p.epoch, next));
        }
        assert!(!p.is_followed_by(&p.epoch, p.offset));
        let other = Epoch::parse("zz9").expect("valid");
        assert_eq!(
            p.is_followed_by(&other, 1),
            p.offset == 0 && (p.epoch.is_none() || p.epoch == other)
        );
    }

    // A channel listed twice resumes from its first position.
    for entry in want.iter().flatten() {
        let channel = entry.rsplit(',').next().unwrap_or_default();
        let first = reference_first(&text, channel);
        assert_eq!(
            token.get(channel).map(|p| (p.epoch.to_string(), p.offset)),
            first
        );
    }

    let encoded = token.to_string();
    assert!(
        encoded.len() <= text.len(),
        "{encoded:?} grew from {text:?}"
    );
    assert_eq!(ResumeToken::parse(&encoded).as_ref(), Ok(&token));
    assert!(!encoded.contains(['\r', '\n', '\0']));

    // The token as an SSE `id:` line arrives as the browser's lastEventId, unchanged.
    let mut line = bytes::BytesMut::new();
    sse::id_line(&mut line, &encoded);
    line.extend_from_slice(b"data: x\n\n");
    let events = wire::sse_stream(&line).events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, encoded);

    // Updating a position keeps the token parseable and records the new position.
    let mut updated = token.clone();
    let channel = ChannelName::parse("fuzz").expect("valid");
    let epoch = Epoch::parse("e0").expect("valid");
    updated.advance(&channel, &epoch, 7);
    let back = ResumeToken::parse(&updated.to_string()).expect("re-parses");
    assert_eq!(back.get("fuzz").map(|p| p.offset), Some(7));
}

/// The documented format read with nothing shared with `token.rs` but the name and epoch
/// rules: the entries in their canonical text form.
fn reference(text: &str) -> Result<Vec<String>, TokenError> {
    if text.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    let mut entries = Vec::new();
    for (i, entry) in text.split(';').enumerate() {
        if entry.is_empty() {
            continue;
        }
        let fields: Vec<&str> = entry.splitn(3, ',').collect();
        let [epoch, offset, channel] = fields[..] else {
            return Err(TokenError::Malformed(i));
        };
        Epoch::parse(epoch).ok_or(TokenError::BadEpoch(i))?;
        let offset = decimal(offset).ok_or(TokenError::BadOffset(i))?;
        ChannelName::parse(channel).map_err(|_| TokenError::BadChannel(i))?;
        entries.push(format!("{epoch},{offset},{channel}"));
    }
    Ok(entries)
}

/// The first (epoch, offset) `text` gives `channel` (`text` is known to be valid).
fn reference_first(text: &str, channel: &str) -> Option<(String, u64)> {
    text.split(';').find_map(|entry| {
        let mut f = entry.splitn(3, ',');
        let (epoch, offset, c) = (f.next()?, f.next()?, f.next()?);
        (c == channel).then(|| (epoch.to_owned(), decimal(offset).unwrap_or_default()))
    })
}

/// A `u64` in plain decimal digits.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
