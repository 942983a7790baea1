//! The resume token: one string that records a client's position in every channel of a stream.
//!
//! It is the SSE `id:` of each event, so a browser's `EventSource` hands it back in the
//! `Last-Event-ID` header on reconnect, to any node. Format: entries separated by `;`, each entry
//! `epoch,offset,channel` (the channel last, since only it may contain `:` and other punctuation;
//! channel names never contain `,` or `;`). Example: `9f3ab1c2d4e5f601,42,news;77aa01,3,chat:1`.

use std::fmt::Write as _;

use crate::{
    channel::ChannelName,
    message::{Epoch, StreamPosition},
};

/// Tokens longer than this are refused before parsing.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("resume token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    #[error("resume token entry {0} is not `epoch,offset,channel`")]
    Malformed(usize),
    #[error("resume token entry {0} has an invalid epoch")]
    BadEpoch(usize),
    #[error("resume token entry {0} has an invalid offset")]
    BadOffset(usize),
    #[error("resume token entry {0} has an invalid channel name")]
    BadChannel(usize),
}

/// Positions per channel, in the order the stream lists its channels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeToken {
    entries: Vec<(ChannelName, StreamPosition)>,
}

impl ResumeToken {
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        if s.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut entries = Vec::new();
        for (i, entry) in s.split(';').enumerate().filter(|(_, e)| !e.is_empty()) {
            let mut parts = entry.splitn(3, ',');
            let (Some(epoch), Some(offset), Some(channel)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(TokenError::Malformed(i));
            };
            let epoch = Epoch::parse(epoch).ok_or(TokenError::BadEpoch(i))?;
            // Digits only: `u64::from_str` would also take a leading `+`, which no token has.
            let offset = Some(offset)
                .filter(|o| o.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|o| o.parse::<u64>().ok())
                .ok_or(TokenError::BadOffset(i))?;
            let channel = ChannelName::parse(channel).map_err(|_| TokenError::BadChannel(i))?;
            entries.push((channel, StreamPosition { epoch, offset }));
        }
        Ok(Self { entries })
    }

    /// The recorded position for `channel`, if any.
    pub fn get(&self, channel: &str) -> Option<&StreamPosition> {
        self.entries
            .iter()
            .find(|(c, _)| c.as_str() == channel)
            .map(|(_, p)| p)
    }

    /// Records `pos` for `channel`, replacing an earlier position.
    pub fn set(&mut self, channel: &ChannelName, pos: StreamPosition) {
        match self.entries.iter_mut().find(|(c, _)| c == channel) {
            Some(entry) => entry.1 = pos,
            None => {
                // Most streams carry one channel: the first entry gets room for itself only
                // (a `Vec`'s first push reserves four, which an idle SSE stream would carry).
                if self.entries.capacity() == 0 {
                    self.entries.reserve_exact(1);
                }
                self.entries.push((channel.clone(), pos))
            }
        }
    }

    /// Advances the offset of an already-recorded channel in place (the per-message hot path of
    /// an SSE stream: no allocation when the epoch is unchanged).
    pub fn advance(&mut self, channel: &ChannelName, epoch: &Epoch, offset: u64) {
        match self.entries.iter_mut().find(|(c, _)| c == channel) {
            Some((_, p)) if &p.epoch == epoch => p.offset = offset,
            _ => self.set(
                channel,
                StreamPosition {
                    epoch: epoch.clone(),
                    offset,
                },
            ),
        }
    }

    pub fn remove(&mut self, channel: &str) {
        self.entries.retain(|(c, _)| c.as_str() != channel);
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the token's text form to `out`.
    pub fn write_to(&self, out: &mut String) {
        for (i, (channel, pos)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(';');
            }
            let _ = write!(out, "{},{},{}", pos.epoch, pos.offset, channel);
        }
    }
}

impl std::fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pos(e: &str, o: u64) -> StreamPosition {
        StreamPosition {
            epoch: Epoch::parse(e).expect("epoch"),
            offset: o,
        }
    }

    #[test]
    fn round_trips_several_channels() {
        let mut t = ResumeToken::default();
        t.set(&ChannelName::parse("news").expect("name"), pos("ab12", 42));
        t.set(
            &ChannelName::parse("chat:room/1").expect("name"),
            pos("ff", 0),
        );
        let text = t.to_string();
        assert_eq!(text, "ab12,42,news;ff,0,chat:room/1");
        let back = ResumeToken::parse(&text).expect("parses");
        assert_eq!(back, t);
        assert_eq!(back.get("news"), Some(&pos("ab12", 42)));
        assert_eq!(back.get("other"), None);
    }

    #[test]
    fn advance_updates_in_place_and_resets_on_new_epoch() {
        let news = ChannelName::parse("news").expect("name");
        let mut t = ResumeToken::default();
        t.advance(&news, &Epoch::parse("e1").expect("epoch"), 1);
        t.advance(&news, &Epoch::parse("e1").expect("epoch"), 2);
        assert_eq!(t.get("news"), Some(&pos("e1", 2)));
        t.advance(&news, &Epoch::parse("e2").expect("epoch"), 1);
        assert_eq!(t.to_string(), "e2,1,news");
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        assert_eq!(ResumeToken::parse("garbage"), Err(TokenError::Malformed(0)));
        assert_eq!(
            ResumeToken::parse("ab,x,news"),
            Err(TokenError::BadOffset(0))
        );
        assert_eq!(
            ResumeToken::parse("a-b,1,news"),
            Err(TokenError::BadEpoch(0))
        );
        assert_eq!(
            ResumeToken::parse("ab,1,news;ab,1,bad name"),
            Err(TokenError::BadChannel(1))
        );
        assert_eq!(
            ResumeToken::parse(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(TokenError::TooLong)
        );
        assert_eq!(ResumeToken::parse(""), Ok(ResumeToken::default()));
    }

    #[test]
    fn a_channel_without_history_has_an_empty_epoch() {
        let t = ResumeToken::parse(",0,news").expect("parses");
        assert_eq!(t.get("news"), Some(&StreamPosition::start()));
        assert_eq!(t.to_string(), ",0,news");
    }

    #[test]
    fn offsets_are_plain_digits() {
        // Found by the `resume_token` fuzz harness's reference reading: `+5` was offset 5.
        assert_eq!(
            ResumeToken::parse("ab,+5,news"),
            Err(TokenError::BadOffset(0))
        );
        assert_eq!(
            ResumeToken::parse("ab,-0,news"),
            Err(TokenError::BadOffset(0))
        );
        assert_eq!(
            ResumeToken::parse("ab,,news"),
            Err(TokenError::BadOffset(0))
        );
        assert_eq!(
            ResumeToken::parse("ab,18446744073709551616,news"),
            Err(TokenError::BadOffset(0))
        );
        assert_eq!(
            ResumeToken::parse("ab,007,news").map(|t| t.to_string()),
            Ok("ab,7,news".to_owned())
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,200}") {
            let _ = ResumeToken::parse(&s);
        }

        #[test]
        fn any_valid_token_round_trips(
            entries in prop::collection::vec(("[a-f0-9]{1,16}", any::<u64>(), "[a-z0-9:@/._-]{1,20}"), 0..8)
        ) {
            let mut t = ResumeToken::default();
            for (e, o, c) in &entries {
                t.set(&ChannelName::parse(c).expect("name"), pos(e, *o));
            }
            prop_assert_eq!(ResumeToken::parse(&t.to_string()).expect("parses"), t);
        }
    }
}
