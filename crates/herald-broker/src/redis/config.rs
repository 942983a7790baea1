//! RedisBroker settings. One URL string selects the topology (see [`super::url`]) so that an
//! operator configures Redis with a single option.
//!
//! Credentials may sit in the URL (`redis://user:pass@host`) or come separately
//! ([`RedisConfig::username`], [`RedisConfig::password`]) so that they can be read from a file
//! or the environment; either way they are [`Secret`]s that no `Debug` output or error shows.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use super::url::redact_url;
use crate::{Retention, RoomsConfig};

/// A password or other credential: `Debug` never prints it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the Redis client only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(empty)"
        } else {
            "Secret(redacted)"
        })
    }
}

/// When a publish counts as acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once the primary has it in history (memory; and its AOF, per its fsync policy). A primary
    /// that dies before its replica copied the message loses it.
    #[default]
    Primary,
    /// Once at least one replica has it too (`WAIT 1`). Nothing the node shows a client (live
    /// messages, history, positions) is shown before a replica has it, so a failover to that
    /// replica loses nothing any client has seen.
    Replicated,
}

/// Files with the TLS trust anchors and client identity for `rediss` URLs (PEM).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that sign the servers' certificates; unset: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain, for servers that require client certificates (`tls-auth-clients`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key.
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// Settings for [`super::RedisBroker`].
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis[s]://[user:pass@]host:port[/db]`, `redis[s]+sentinel://[user:pass@]s1:p1,s2:p2/NAME[/db]`
    /// or `redis[s]+cluster://[user:pass@]h1:p1,h2:p2,...`.
    pub url: String,
    /// Overrides the URL's user name (data nodes, not Sentinels).
    pub username: Option<String>,
    /// Overrides the URL's password (data nodes, not Sentinels).
    pub password: Option<Secret>,
    /// User name and password for the Sentinels themselves, when they require one.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<Secret>,
    /// TLS files for `rediss` URLs.
    pub tls: TlsFiles,
    /// When a publish is acknowledged.
    pub durability: Durability,
    /// With [`Durability::Replicated`]: how long to wait for a replica's acknowledgement before
    /// the publish fails as unavailable.
    pub wait_timeout: Duration,
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
    /// Most live messages waiting for the relay (the task that hands them to subscribers in
    /// order). When it is full, further live messages are dropped and every channel reads them
    /// back from history instead: a relay that falls behind costs reads, never memory.
    pub relay_queue: usize,
    /// How often the pub/sub connection is checked by publishing to this node's probe channel.
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the pub/sub connection is declared dead.
    pub probe_timeout: Duration,
    /// Names this node's probe channel; random when `None`. Must be unique per node.
    pub node_id: Option<String>,
    /// First delay before reconnecting the pub/sub connection; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Follow Sentinel's `+switch-master` announcements (on by default). Tests turn it off to
    /// prove that the self-probe alone catches a pub/sub connection left on a stale primary.
    #[doc(hidden)]
    pub follow_switch_master: bool,
    /// Which channels are rooms (presence, join/leave), how they behave, and how long a node's
    /// presence lasts without a refresh.
    pub rooms: RoomsConfig,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            // No default address: every deployment names its Redis (an empty URL is refused).
            url: String::new(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: TlsFiles::default(),
            durability: Durability::Primary,
            wait_timeout: Duration::from_secs(1),
            history_size: 1000,
            history_ttl: Duration::from_secs(3600),
            retention_by_namespace: HashMap::new(),
            timeout: Duration::from_secs(2),
            page_bytes: 256 << 10,
            max_entry_bytes: (64 << 10) + 512,
            relay_queue: 65_536,
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(2),
            node_id: None,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            follow_switch_master: true,
            rooms: RoomsConfig::default(),
        }
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("sentinel_username", &self.sentinel_username)
            .field("sentinel_password", &self.sentinel_password)
            .field("tls", &self.tls)
            .field("durability", &self.durability)
            .field("wait_timeout", &self.wait_timeout)
            .field("history_size", &self.history_size)
            .field("history_ttl", &self.history_ttl)
            .field("retention_by_namespace", &self.retention_by_namespace)
            .field("timeout", &self.timeout)
            .field("page_bytes", &self.page_bytes)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("relay_queue", &self.relay_queue)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_every_secret() {
        let shown = format!(
            "{:?}",
            RedisConfig {
                url: "rediss://u:hunter2@h".into(),
                password: Some(Secret::new("hunter3")),
                ..RedisConfig::default()
            }
        );
        assert!(!shown.contains("hunter"), "{shown}");
    }
}
