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
//!
//! Channel names cannot contain `{` or `}` (see `herald_core::channel`), so the tag is exactly
//! the channel name.

use herald_core::ChannelName;

pub(crate) fn meta(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:m")
}

pub(crate) fn stream(c: &ChannelName) -> String {
    format!("herald:{{{c}}}:s")
}

pub(crate) fn idempotency(c: &ChannelName, key: &str) -> String {
    format!("herald:{{{c}}}:i:{key}")
}

pub(crate) fn backbone(c: &ChannelName) -> String {
    format!("herald:{{{c}}}")
}

pub(crate) fn probe(node_id: &str, i: usize) -> String {
    format!("herald:{{probe:{node_id}:{i}}}")
}

/// The Cluster hash slot of `key` (CRC16/XMODEM of the hash tag, or of the key without one),
/// used to give every shard its own probe channel.
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &bytes[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(bytes)) % 16384
}

fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

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
            slot(&meta(&ChannelName::parse("news").expect("name"))),
            slot("news")
        );
    }
}
