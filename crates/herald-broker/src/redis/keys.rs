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
//! | `herald:{probe:<node>}`  | channel | this node's pub/sub self-probe                   |
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

pub(crate) fn probe(node_id: &str) -> String {
    format!("herald:{{probe:{node_id}}}")
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
        assert_eq!(probe("n1"), "herald:{probe:n1}");
    }
}
