//! The SSE resume token (`id:` of every event): `epoch,offset,channel` entries joined by `;`.
//!
//! An SSE `data:` line carries only the published data, so the loadtest learns a message's
//! channel and offset from the token: the entry whose offset moved since the previous event.
//! Parsing is borrow-only so it costs nothing per message beyond the scan.

/// One `epoch,offset,channel` entry, borrowed from the token text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub epoch: &'a str,
    pub offset: u64,
    pub channel: &'a str,
}

/// Iterates the entries of a token; malformed entries yield `None` items so callers can count
/// them instead of silently skipping.
pub fn entries(token: &str) -> impl Iterator<Item = Option<Entry<'_>>> {
    token.split(';').filter(|e| !e.is_empty()).map(|entry| {
        let mut parts = entry.splitn(3, ',');
        let epoch = parts.next()?;
        let offset = parts.next()?.parse().ok()?;
        let channel = parts.next()?;
        // An empty epoch is a channel without history yet (before its first message).
        if channel.is_empty() {
            return None;
        }
        Some(Entry {
            epoch,
            offset,
            channel,
        })
    })
}

/// Remembers the last offset per channel of one SSE stream to find which channel an event
/// advanced. Streams carry few channels, so a small vector beats a map.
#[derive(Debug, Default)]
pub struct TokenTracker {
    positions: Vec<(String, u64)>,
}

/// What one message id told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance<'a> {
    pub channel: &'a str,
    pub epoch: &'a str,
    pub offset: u64,
}

impl TokenTracker {
    /// Seeds the position of a channel (from `herald.subscribed`).
    pub fn set(&mut self, channel: &str, offset: u64) {
        match self.positions.iter_mut().find(|(c, _)| c == channel) {
            Some((_, o)) => *o = offset,
            None => self.positions.push((channel.to_owned(), offset)),
        }
    }

    /// Finds the entry whose offset differs from what we had and records the new positions.
    /// Returns `Err(())` for a malformed token, `Ok(None)` when no entry moved.
    #[allow(clippy::result_unit_err)]
    pub fn advance<'t>(&mut self, token: &'t str) -> Result<Option<Advance<'t>>, ()> {
        let mut moved = None;
        for entry in entries(token) {
            let entry = entry.ok_or(())?;
            let changed = match self.positions.iter_mut().find(|(c, _)| c == entry.channel) {
                Some((_, o)) if *o == entry.offset => false,
                Some((_, o)) => {
                    *o = entry.offset;
                    true
                }
                None => {
                    self.positions
                        .push((entry.channel.to_owned(), entry.offset));
                    true
                }
            };
            // With one channel per stream (the common case) the first moved entry is the one.
            if changed && moved.is_none() {
                moved = Some(Advance {
                    channel: entry.channel,
                    epoch: entry.epoch,
                    offset: entry.offset,
                });
            }
        }
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        let v: Vec<_> = entries("9f3ab1c2,42,news;77aa01,3,chat:1").collect();
        assert_eq!(
            v,
            vec![
                Some(Entry {
                    epoch: "9f3ab1c2",
                    offset: 42,
                    channel: "news"
                }),
                Some(Entry {
                    epoch: "77aa01",
                    offset: 3,
                    channel: "chat:1"
                })
            ]
        );
    }

    #[test]
    fn channel_may_contain_commas_after_the_second_field() {
        // splitn(3) keeps the channel whole even if a future charset allowed more punctuation.
        let v: Vec<_> = entries("e,1,a,b").collect();
        assert_eq!(v[0].map(|e| e.channel), Some("a,b"));
    }

    #[test]
    fn a_channel_without_history_has_an_empty_epoch() {
        let e = entries(",0,news").next().flatten().expect("valid");
        assert_eq!((e.epoch, e.offset, e.channel), ("", 0, "news"));
    }

    #[test]
    fn malformed_entries_are_reported() {
        assert_eq!(entries("e,x,news").next(), Some(None));
        assert_eq!(entries("e,1").next(), Some(None));
        assert_eq!(entries("e,1,").next(), Some(None));
        assert_eq!(entries("").count(), 0);
        assert_eq!(entries(";;").count(), 0);
    }

    #[test]
    fn tracker_finds_the_moved_channel() {
        let mut t = TokenTracker::default();
        t.set("a", 3);
        t.set("b", 7);
        let adv = t.advance("e1,3,a;e2,8,b").expect("valid");
        assert_eq!(
            adv,
            Some(Advance {
                channel: "b",
                epoch: "e2",
                offset: 8
            })
        );
        assert_eq!(t.advance("e1,3,a;e2,8,b").expect("valid"), None);
        assert_eq!(
            t.advance("e1,4,a;e2,8,b").expect("valid").map(|a| a.offset),
            Some(4)
        );
        assert!(t.advance("e1,zz,a").is_err());
    }
}
