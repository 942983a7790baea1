//! RedisBroker settings and the URL forms that pick standalone or Cluster mode.
//!
//! One URL string selects the topology so that an operator configures Redis with a single
//! option: `redis://host:port[/db]` is a standalone server, `redis+cluster://h1:p1,h2:p2` lists
//! Cluster seed nodes (any reachable node is enough; the client discovers the rest).

use std::{collections::HashMap, time::Duration};

use crate::{BrokerError, Retention};

/// Settings for [`super::RedisBroker`].
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]` or `redis+cluster://[user:pass@]h1:p1,h2:p2,...`.
    pub url: String,
    /// Most messages kept per channel (the stream's MAXLEN).
    pub history_size: usize,
    /// How long a message, a channel's epoch and an idempotency key are kept after the
    /// channel's last publish.
    pub history_ttl: Duration,
    /// Namespaces whose channels keep their own size and TTL instead (the server's
    /// `[namespaces.NAME]` tables; see [`Retention::of`]).
    pub retention_by_namespace: HashMap<String, Retention>,
    /// Upper bound on every Redis call: a command or script (connecting included), the pub/sub
    /// connect and (un)subscribes, a self-probe's round trip. Past it the call fails as
    /// unavailable (publishes get 503 and are retried by publishers with their idempotency key).
    pub timeout: Duration,
    /// Most payload bytes one history read (one script call) returns: long reads are pages,
    /// so no read holds Redis, which is single-threaded, for long.
    pub page_bytes: usize,
    /// The largest stored payload to expect (largest message data plus its header); sizes the
    /// chunks a history read takes from the stream so a page stays within `page_bytes`.
    pub max_entry_bytes: usize,
    /// How often the pub/sub connection is checked by publishing to this node's probe channel.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the pub/sub connection is declared dead.
    pub probe_timeout: Duration,
    /// Names this node's probe channel; random when `None`. Must be unique per node.
    pub node_id: Option<String>,
    /// First delay before reconnecting the pub/sub connection; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            // No default address: every deployment names its Redis (an empty URL is refused).
            url: String::new(),
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            retention_by_namespace: HashMap::new(),
            timeout: Duration::from_secs(2),
            page_bytes: 256 << 10,
            max_entry_bytes: (64 << 10) + 512,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
            node_id: None,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// Where Redis is, as parsed from [`RedisConfig::url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// A `redis://` URL, passed to the client unchanged.
    Standalone(String),
    /// One `redis://` URL per seed node.
    Cluster(Vec<String>),
}

const CLUSTER_SCHEME: &str = "redis+cluster://";

impl Topology {
    pub(crate) fn parse(url: &str) -> Result<Self, BrokerError> {
        let bad = |why: &str| BrokerError::Internal(format!("invalid Redis URL: {why}"));
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            // Credentials apply to every node; a path or query (e.g. `?protocol=`) likewise.
            let (userinfo, rest) = match rest.rsplit_once('@') {
                Some((u, r)) => (Some(u), r),
                None => (None, rest),
            };
            let (hosts, suffix) = match rest.find(['/', '?']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let nodes: Vec<String> = hosts
                .split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(|h| match userinfo {
                    Some(u) => format!("redis://{u}@{h}{suffix}"),
                    None => format!("redis://{h}{suffix}"),
                })
                .collect();
            if nodes.is_empty() {
                return Err(bad("redis+cluster:// lists no nodes"));
            }
            for n in &nodes {
                check_url(n)?;
            }
            Ok(Self::Cluster(nodes))
        } else if url.starts_with("redis://") || url.starts_with("rediss://") {
            check_url(url)?;
            Ok(Self::Standalone(url.to_owned()))
        } else {
            Err(bad(
                "expected redis://host:port or redis+cluster://h1:p1,h2:p2",
            ))
        }
    }
}

/// Checks `url` exactly as [`super::RedisBroker::connect`] will parse it, so that a server can
/// refuse a bad URL at configuration time, before it announces anything.
pub fn validate_url(url: &str) -> Result<(), BrokerError> {
    Topology::parse(url).map(drop)
}

fn check_url(url: &str) -> Result<(), BrokerError> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| BrokerError::Internal(format!("invalid Redis URL {:?}: {e}", redact(url))))
}

/// The URL with any credentials replaced, for error messages (which reach logs).
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_urls_pass_through() {
        assert_eq!(
            Topology::parse("redis://127.0.0.1:7000/2").ok(),
            Some(Topology::Standalone("redis://127.0.0.1:7000/2".into()))
        );
    }

    #[test]
    fn cluster_urls_expand_to_one_url_per_node() {
        assert_eq!(
            Topology::parse("redis+cluster://:pw@a:1,b:2/?protocol=resp2").ok(),
            Some(Topology::Cluster(vec![
                "redis://:pw@a:1/?protocol=resp2".into(),
                "redis://:pw@b:2/?protocol=resp2".into()
            ]))
        );
        assert_eq!(
            Topology::parse("redis+cluster://a:1, b:2").ok(),
            Some(Topology::Cluster(vec![
                "redis://a:1".into(),
                "redis://b:2".into()
            ]))
        );
    }

    #[test]
    fn errors_never_show_credentials() {
        let err = validate_url("redis://:secret@host:notaport").expect_err("bad port");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(err.to_string().contains("***@host:notaport"), "{err}");
        let err = validate_url("redis+cluster://user:pw@a:1,b:x").expect_err("bad port");
        assert!(!err.to_string().contains("pw"), "{err}");
        assert_eq!(redact("redis://h:1/0?x=@"), "redis://h:1/0?x=@");
    }

    #[test]
    fn bad_urls_are_rejected() {
        for url in ["", "http://x", "redis+cluster://", "redis+cluster://,"] {
            assert!(Topology::parse(url).is_err(), "{url}");
        }
    }
}
