//! The Redis key layout. Every key and the backbone channel of one Herald channel carry the
//! same hash tag `{<channel>}`, so they live in one Cluster slot and a single Lua script may
//! touch all of them (and SPUBLISH to the channel's shard).
//!
//! | name                     | type    | content                                          |
//! |--------------------------|---------|--------------------------------------------------|
//! | `herald:{c}:m`           | hash    | `e` = epoch, `o` = last assigned offset          |
//! | `herald:{c}:s`           | stream  | entry id `<offset>-0`, fields `t` (ms), `p` (payload) |
//! | `herald:{c}:i:<key>`     | string  | `<epoch>:<offset>` of the first publish with `key` |
//! | `herald:{c}` (pub/sub)   | channel | live payloads, see [`super::codec`]              |
//! | `herald:{probe:<node>:<i>}` | channel | this node's pub/sub self-probe (one per shard) |
//! | `herald:durability`      | string  | the replication barrier's write (`replicated`)   |
//! | `herald:{durability:<n>}` | string | the same on Cluster, one per slot used, `n` chosen so the key is in that slot |
//!
//! Channel names cannot contain `{` or `}` (see `herald_core::channel`), so the tag is exactly
//! the channel name.

use std::{fmt::Write, sync::OnceLock};

use herald_core::ChannelName;

/// The number of Cluster hash slots.
const SLOTS: u16 = 16384;

pub(crate) fn meta(c: &ChannelName) -> String {
    Key::meta(c).to_string()
}

pub(crate) fn stream(c: &ChannelName) -> String {
    Key::stream(c).to_string()
}

#[cfg(test)]
pub(crate) fn idempotency(c: &ChannelName, key: &str) -> String {
    Key::idempotency(c, &[":i:", key]).to_string()
}

pub(crate) fn backbone(c: &ChannelName) -> String {
    Key::backbone(c).to_string()
}

/// A key of channel `c` (`herald:{c}<suffix>`): the one spelling of the per-channel layout.
/// The publish path writes it straight into a command's buffer (no allocation per key per
/// publish); the `String`s above are its `Display`.
pub(crate) struct Key<'a> {
    channel: &'a ChannelName,
    suffix: &'a [&'a str],
}

impl<'a> Key<'a> {
    pub(crate) fn meta(channel: &'a ChannelName) -> Self {
        Self {
            channel,
            suffix: &[":m"],
        }
    }

    pub(crate) fn stream(channel: &'a ChannelName) -> Self {
        Self {
            channel,
            suffix: &[":s"],
        }
    }

    pub(crate) fn backbone(channel: &'a ChannelName) -> Self {
        Self {
            channel,
            suffix: &[],
        }
    }

    /// `suffix` is `[":i:", key]`.
    pub(crate) fn idempotency(channel: &'a ChannelName, suffix: &'a [&'a str; 2]) -> Self {
        Self { channel, suffix }
    }
}

impl Key<'_> {
    /// The key's pieces in order; both renderings below concatenate them.
    fn pieces(&self) -> impl Iterator<Item = &str> {
        ["herald:{", self.channel.as_str(), "}"]
            .into_iter()
            .chain(self.suffix.iter().copied())
    }
}

impl std::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.pieces().try_for_each(|p| f.write_str(p))
    }
}

impl redis::ToRedisArgs for Key<'_> {
    fn write_redis_args<W>(&self, out: &mut W)
    where
        W: ?Sized + redis::RedisWrite,
    {
        let mut w = out.writer_for_next_arg();
        for piece in self.pieces() {
            // Writing into the command's own buffer cannot fail.
            let _ = std::io::Write::write_all(&mut w, piece.as_bytes());
        }
    }
}

pub(crate) fn probe(node_id: &str, i: usize) -> String {
    format!("herald:{{probe:{node_id}:{i}}}")
}

/// The slot of every key of channel `c`: their hash tag is the channel name.
pub(crate) fn channel_slot(c: &ChannelName) -> u16 {
    slot(c.as_str())
}

/// A key in `slot` for the Cluster replication barrier's write: `herald:{durability:<n>}` with
/// the smallest `n` whose tag hashes to `slot` (found for every slot at once, on first use).
pub(crate) fn barrier(slot: u16) -> String {
    static TAGS: OnceLock<Box<[u32]>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut missing = tags.len();
        let mut tag = String::new();
        // About 170,000 tries cover every slot (coupon collector over 16384 slots).
        for n in 0..u32::MAX {
            tag.clear();
            let _ = write!(tag, "durability:{n}");
            let t = &mut tags[usize::from(crc16(tag.as_bytes()) % SLOTS)];
            if *t == u32::MAX {
                *t = n;
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
        tags.into_boxed_slice()
    });
    format!("herald:{{durability:{}}}", tags[usize::from(slot % SLOTS)])
}

/// The Cluster hash slot of `key` (CRC16/XMODEM of the hash tag, or of the key without one).
pub(crate) fn slot(key: impl AsRef<[u8]>) -> u16 {
    let bytes = key.as_ref();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % SLOTS
}

/// CRC16/XMODEM, a byte at a time.
fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0, |crc, &b| {
        (crc << 8) ^ CRC16_TABLE[usize::from((crc >> 8) as u8 ^ b)]
    })
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_channel_hash_tag() {
        let c = ChannelName::parse("news:eu").expect("name");
        assert_eq!(meta(&c), "herald:{news:eu}:m");
        assert_eq!(stream(&c), "herald:{news:eu}:s");
        assert_eq!(idempotency(&c, "k"), "herald:{news:eu}:i:k");
        assert_eq!(backbone(&c), "herald:{news:eu}");
        assert_eq!(probe("n1", 2), "herald:{probe:n1:2}");
    }

    #[test]
    fn written_keys_are_the_same_bytes() {
        use redis::ToRedisArgs;
        let c = ChannelName::parse("news:eu").expect("name");
        let one = |k: Key<'_>| {
            let args = k.to_redis_args();
            assert_eq!(args.len(), 1);
            String::from_utf8(args[0].clone()).expect("utf-8")
        };
        assert_eq!(one(Key::meta(&c)), meta(&c));
        assert_eq!(one(Key::stream(&c)), stream(&c));
        assert_eq!(one(Key::backbone(&c)), backbone(&c));
        assert_eq!(
            one(Key::idempotency(&c, &[":i:", "k"])),
            idempotency(&c, "k")
        );
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        assert_eq!(crc16(b"123456789"), 0x31C3, "the CRC16/XMODEM check value");
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("user1000"));
        assert_eq!(
            slot("foo{}{bar}"),
            slot("foo{}{bar}"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(
            slot(meta(&ChannelName::parse("news").expect("name"))),
            slot("news")
        );
    }

    #[test]
    fn a_channel_slot_is_its_keys_slot() {
        let c = ChannelName::parse("news:eu").expect("name");
        assert_eq!(channel_slot(&c), slot(backbone(&c)));
        assert_eq!(channel_slot(&c), slot(idempotency(&c, "k")));
    }

    #[test]
    fn every_slot_has_a_barrier_key() {
        for s in 0..SLOTS {
            let key = barrier(s);
            assert!(key.starts_with("herald:{durability:"), "{key}");
            assert_eq!(slot(&key), s, "{key}");
        }
        assert_eq!(barrier(SLOTS), barrier(0), "slots wrap");
    }
}
