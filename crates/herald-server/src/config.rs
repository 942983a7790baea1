//! Configuration: defaults, overridden by a TOML file, overridden by `HERALD_*` environment
//! variables and command-line flags (clap reads both; a flag wins over its variable).
//!
//! Every option exists in all three forms with the same name: `--history-size`,
//! `HERALD_HISTORY_SIZE`, `history_size = ...`. Durations are written like `15s`, `500ms`, `2m`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use herald_broker::{Durability, RedisConfig, TlsFiles, redis::Secret as RedisSecret};
use serde::Deserialize;

mod api_keys;
mod auth;
mod namespaces;

pub use api_keys::{ApiKey, ApiKeys, KeyRate, Secret};
pub use auth::MIN_SECRET_BYTES;
use auth::parse_secret;
pub use namespaces::{NamespaceSettings, Namespaces};

use crate::{http::cors::AllowedOrigins, limits::TrustedProxies};

/// Why the configuration was refused. Printed at start; the process exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid value for {option}: {reason}")]
    Invalid {
        option: &'static str,
        reason: String,
    },
}

macro_rules! options {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr, env = $env:literal, parse = $parse:expr $(, bare = $bare:literal)? $(, file = $file:expr)?; )*) => {
        /// Herald: real-time pub/sub fan-out over SSE and WebSocket.
        ///
        /// Every option can also be set as HERALD_<NAME> in the environment or as <name> in the
        /// TOML file given by --config. Precedence: flag > environment > file > default.
        #[derive(Debug, Parser)]
        #[command(name = "herald", version, about, long_about = None,
            after_help = "Subcommands:\n  herald token --help   mint a development subscriber token (docs/security.md)")]
        pub struct Cli {
            /// TOML file with any of the options below (snake_case keys).
            #[arg(long, env = "HERALD_CONFIG")]
            pub config: Option<PathBuf>,
            // `bare`: the flag alone means that value (`--allow-client-publish` is `true`).
            // `hide_env_values`: `--help` must never print a secret taken from the environment.
            $( $(#[doc = $doc])* #[arg(long, env = $env, hide_env_values = true, value_parser = $parse $(, num_args = 0..=1, default_missing_value = $bare)?)] pub $name: Option<$ty>, )*
        }

        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $( $name: Option<toml::Value>, )*
            /// `[namespaces.NAME]` tables (TOML only).
            namespaces: Option<toml::Value>,
        }

        /// The effective configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// Per-namespace settings from the `[namespaces.NAME]` tables of the config file.
            pub namespaces: Namespaces,
        }

        impl Config {
            /// Merges flags/env over the file over the defaults.
            pub fn from_cli(cli: Cli) -> Result<Self, ConfigError> {
                let file = match &cli.config {
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                        toml::from_str::<FileConfig>(&text)
                            .map_err(|source| ConfigError::Parse { path: path.clone(), source: Box::new(source) })?
                    }
                    None => FileConfig::default(),
                };
                let config = Self {
                    $( $name: match (cli.$name, file.$name) {
                        (Some(v), _) => v,
                        (None, Some(v)) => file_value!(v, $parse $(, $file)?)
                            .map_err(|reason| ConfigError::Invalid { option: stringify!($name), reason })?,
                        (None, None) => $default,
                    }, )*
                    namespaces: match file.namespaces {
                        Some(v) => Namespaces::from_toml(v)
                            .map_err(|reason| ConfigError::Invalid { option: "namespaces", reason })?,
                        None => Namespaces::default(),
                    },
                };
                let mut config = config;
                config.read_secret_files()?;
                config.validate()?;
                Ok(config)
            }
        }

        impl Default for Config {
            fn default() -> Self {
                Self { $( $name: $default, )* namespaces: Namespaces::default() }
            }
        }
    };
}

/// Reads an option's value from the TOML file: as the text a flag would carry, or with the
/// option's own `file = ...` reader when its file form is structured (`[[api_keys]]` tables).
macro_rules! file_value {
    ($v:expr, $parse:expr) => {
        ($parse)(&file_text($v))
    };
    ($v:expr, $parse:expr, $file:expr) => {
        ($file)($v)
    };
}

/// Reads a TOML value as the text a flag would carry, so file values go through the same
/// parser as flags (`history_ttl = "1h"`, `history_size = 500`, `api_keys = ["a", "b"]`).
fn file_text(value: toml::Value) -> String {
    match value {
        toml::Value::String(s) => s,
        toml::Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 15s, 500ms, 2m or 1h"))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{s:?} is not a duration like 15s, 500ms, 2m or 1h")),
    }
}

fn parse_usize(s: &str) -> Result<usize, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a non-negative integer"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// A rate: events per second as a number (`10`, `0.5`) or with a unit (`10/s`, `600/m`, `3600/h`).
fn parse_rate(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let (num, per) = match s.split_once('/') {
        None => (s, 1.0),
        Some((n, "s")) => (n, 1.0),
        Some((n, "m")) => (n, 60.0),
        Some((n, "h")) => (n, 3600.0),
        Some(_) => {
            return Err(format!(
                "{s:?} is not a rate like 10, 10/s, 600/m or 3600/h"
            ));
        }
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 => Ok(n / per),
        _ => Err(format!(
            "{s:?} is not a rate like 10, 10/s, 600/m or 3600/h"
        )),
    }
}

/// `IP:port`, or `host:port` with a host name resolved once, at start (`localhost:8080`). A name
/// with several addresses binds the first IPv4 one (`localhost` is 127.0.0.1, as in every
/// example), else the first.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let bad = |why: String| {
        format!("{s:?} is not an address like 127.0.0.1:8080 or localhost:8080 ({why})")
    };
    let addrs: Vec<SocketAddr> = s
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("the name has no address".to_owned()))
}

/// A `tracing` env-filter directive list, checked here so a typo exits 2 instead of logging at
/// a level nobody asked for.
fn parse_log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s.trim())
        .map(|_| s.trim().to_owned())
        .map_err(|e| format!("{s:?} is not a log filter like info or herald_server=debug: {e}"))
}

fn parse_string(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

/// The Redis URL. A newtype so `Debug` (and so any log of the config) never shows a password.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", herald_broker::redis::redact_url(&self.0))
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for RedisUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

fn parse_redis_url(s: &str) -> Result<RedisUrl, String> {
    Ok(RedisUrl(s.trim().to_owned()))
}

fn parse_redis_secret(s: &str) -> Result<RedisSecret, String> {
    Ok(RedisSecret::new(s))
}

fn parse_path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s.trim()))
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    match s.trim() {
        "primary" => Ok(Durability::Primary),
        "replicated" => Ok(Durability::Replicated),
        _ => Err(format!("{s:?} is not primary or replicated")),
    }
}

/// Reads a secret from a file: its first line, without the line ending.
fn read_secret_file(
    option: &'static str,
    path: &std::path::Path,
) -> Result<RedisSecret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        option,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(ConfigError::Invalid {
            option,
            reason: format!("{} is empty", path.display()),
        });
    }
    Ok(RedisSecret::new(line))
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim() {
        "human" | "text" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?} is not human or json")),
    }
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

options! {
    /// Address to listen on: IP:port or host:port (port 0 picks a free port; the bound address is printed on stdout). [default: 127.0.0.1:8080]
    listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080)), env = "HERALD_LISTEN", parse = parse_addr;
    /// Redis URL: redis://[user:pass@]host:port[/db], redis+sentinel://s1:p1,s2:p2/PRIMARY_NAME[/db] or redis+cluster://h1:p1,h2:p2 (rediss... for TLS). Unset: the embedded in-memory broker. [default: unset]
    redis_url: RedisUrl = RedisUrl::default(), env = "HERALD_REDIS_URL", parse = parse_redis_url;
    /// Upper bound on every Redis call (a publish, a history page, a subscribe, connecting, the pub/sub self-probe); past it the call fails: publishes get 503 unavailable. [default: 2s]
    redis_timeout: Duration = Duration::from_secs(2), env = "HERALD_REDIS_TIMEOUT", parse = parse_duration;
    /// How often each Redis pub/sub connection is checked by publishing to this node's probe channel (a connection that silently stopped delivering is reconnected). [default: 5s]
    redis_probe_interval: Duration = Duration::from_secs(5), env = "HERALD_REDIS_PROBE_INTERVAL", parse = parse_duration;

    // --- production Redis (issue 14): durability, Sentinel and data-node credentials, TLS ---
    /// When a publish is acknowledged: primary (the Redis primary has it) or replicated (a replica has it too, WAIT 1; on Cluster, a replica of the channel's shard). [default: primary]
    publish_durability: Durability = Durability::Primary, env = "HERALD_PUBLISH_DURABILITY", parse = parse_durability;
    /// With publish_durability = replicated: how long a publish waits for a replica's acknowledgement before failing with 503. [default: 1s]
    redis_wait_timeout: Duration = Duration::from_secs(1), env = "HERALD_REDIS_WAIT_TIMEOUT", parse = parse_duration;
    /// Redis ACL user name (overrides the URL's). [default: unset]
    redis_username: String = String::new(), env = "HERALD_REDIS_USERNAME", parse = parse_string;
    /// Redis password (overrides the URL's). Prefer the environment variable or redis_password_file: a flag shows in the process list. [default: unset]
    redis_password: RedisSecret = RedisSecret::default(), env = "HERALD_REDIS_PASSWORD", parse = parse_redis_secret;
    /// File whose first line is the Redis password (read at start). [default: unset]
    redis_password_file: PathBuf = PathBuf::new(), env = "HERALD_REDIS_PASSWORD_FILE", parse = parse_path;
    /// ACL user name for the Sentinels themselves (redis+sentinel URLs). [default: unset]
    redis_sentinel_username: String = String::new(), env = "HERALD_REDIS_SENTINEL_USERNAME", parse = parse_string;
    /// Password for the Sentinels themselves, when they require one. [default: unset]
    redis_sentinel_password: RedisSecret = RedisSecret::default(), env = "HERALD_REDIS_SENTINEL_PASSWORD", parse = parse_redis_secret;
    /// File whose first line is the Sentinels' password. [default: unset]
    redis_sentinel_password_file: PathBuf = PathBuf::new(), env = "HERALD_REDIS_SENTINEL_PASSWORD_FILE", parse = parse_path;
    /// PEM file with the CA certificate(s) that sign the Redis servers' certificates (rediss URLs). Unset: Mozilla's root CAs, built in. [default: unset]
    redis_tls_ca_file: PathBuf = PathBuf::new(), env = "HERALD_REDIS_TLS_CA_FILE", parse = parse_path;
    /// PEM client certificate for Redis servers that require one (with redis_tls_key_file). [default: unset]
    redis_tls_cert_file: PathBuf = PathBuf::new(), env = "HERALD_REDIS_TLS_CERT_FILE", parse = parse_path;
    /// PEM private key of redis_tls_cert_file. [default: unset]
    redis_tls_key_file: PathBuf = PathBuf::new(), env = "HERALD_REDIS_TLS_KEY_FILE", parse = parse_path;
    // --- end of production Redis ---
    /// API keys allowed to publish (comma-separated; each may publish to every channel). Named keys scoped to channels and rate-limited: [[api_keys]] tables in the config file (docs/security.md). Empty: publishing needs no key. [default: none]
    api_keys: ApiKeys = ApiKeys::default(), env = "HERALD_API_KEYS", parse = api_keys::parse_list, file = api_keys::from_toml;
    /// Let WebSocket clients publish with the `publish` op (the flag alone means true): the default `client_publish` of every namespace becomes `token` when a subscriber key is configured, `anonymous` when none is (a namespace's own `client_publish` wins). [default: false]
    allow_client_publish: bool = false, env = "HERALD_ALLOW_CLIENT_PUBLISH", parse = parse_bool, bare = "true";
    /// Messages kept per channel for resume and the history endpoint. [default: 1000]
    history_size: usize = 1000, env = "HERALD_HISTORY_SIZE", parse = parse_usize;
    /// How long history (and idempotency keys) are kept. [default: 1h]
    history_ttl: Duration = Duration::from_secs(3600), env = "HERALD_HISTORY_TTL", parse = parse_duration;
    // History and memory bounds (issue 10): how much one history read may carry, and how much
    // the embedded broker may keep.
    /// Most message bytes one history read carries (a page of the history endpoint or of a resume; with Redis, what one script copies). Longer reads are several pages, streamed as the client reads. [default: 262144]
    history_page_bytes: usize = 256 << 10, env = "HERALD_HISTORY_PAGE_BYTES", parse = parse_usize;
    /// The embedded broker's memory limit: history, idempotency keys and channel state. A publish beyond it gets 503 storage_full (nothing is stored or forgotten). Not used with Redis. [default: 536870912]
    memory_max_bytes: usize = 512 << 20, env = "HERALD_MEMORY_MAX_BYTES", parse = parse_usize;
    /// Interval of SSE heartbeat comments (they also reap dead SSE connections). [default: 15s]
    sse_heartbeat: Duration = Duration::from_secs(15), env = "HERALD_SSE_HEARTBEAT", parse = parse_duration;
    /// The `retry:` hint sent to EventSource clients. [default: 2s]
    sse_retry: Duration = Duration::from_secs(2), env = "HERALD_SSE_RETRY", parse = parse_duration;
    /// Interval of server pings to WebSocket clients. [default: 25s]
    ws_ping_interval: Duration = Duration::from_secs(25), env = "HERALD_WS_PING_INTERVAL", parse = parse_duration;
    /// A WebSocket client silent for this long after a ping is closed (4001). [default: 20s]
    ws_ping_timeout: Duration = Duration::from_secs(20), env = "HERALD_WS_PING_TIMEOUT", parse = parse_duration;
    /// Largest POST body, in bytes. [default: 262144]
    max_body_bytes: usize = 256 * 1024, env = "HERALD_MAX_BODY_BYTES", parse = parse_usize;
    /// Largest message `data` (compact JSON), in bytes. [default: 65536]
    max_message_bytes: usize = 64 * 1024, env = "HERALD_MAX_MESSAGE_BYTES", parse = parse_usize;
    /// Largest WebSocket message from a client, in bytes (larger: close 1009). [default: 131072]
    max_ws_frame_bytes: usize = 128 * 1024, env = "HERALD_MAX_WS_FRAME_BYTES", parse = parse_usize;
    /// Most channels one SSE stream or WebSocket may subscribe to. [default: 64]
    max_channels_per_connection: usize = 64, env = "HERALD_MAX_CHANNELS_PER_CONNECTION", parse = parse_usize;
    /// Longest channel name (at most 255). [default: 128]
    max_channel_len: usize = 128, env = "HERALD_MAX_CHANNEL_LEN", parse = parse_usize;
    /// Most channels in one broadcast. [default: 100]
    max_broadcast_channels: usize = 100, env = "HERALD_MAX_BROADCAST_CHANNELS", parse = parse_usize;
    /// Most messages queued for one connection before it is cut off as a slow consumer. [default: 2048]
    queue_max_messages: usize = 2048, env = "HERALD_QUEUE_MAX_MESSAGES", parse = parse_usize;
    /// Most bytes queued for one connection before it is cut off as a slow consumer. [default: 4194304]
    queue_max_bytes: usize = 4 << 20, env = "HERALD_QUEUE_MAX_BYTES", parse = parse_usize;
    /// How long a channel's backbone subscription outlives its last local subscriber. [default: 2s]
    channel_linger: Duration = Duration::from_secs(2), env = "HERALD_CHANNEL_LINGER", parse = parse_duration;
    /// On SIGTERM/SIGINT: clients are told to reconnect at random moments spread over this window (no reconnect storm); the process exits when they are gone, at most 2s after the window. [default: 10s]
    drain_window: Duration = Duration::from_secs(10), env = "HERALD_DRAIN_WINDOW", parse = parse_duration;
    // --- publishers, origins and connection limits (docs/security.md) ---
    /// Web origins allowed to open WebSockets and read over CORS (comma-separated): exact origins (https://app.example.com) and subdomain patterns (https://*.example.com). A page from the node's own host is always allowed; a request without Origin (not a browser) too. Unset: every origin. [default: unset]
    allowed_origins: AllowedOrigins = AllowedOrigins::default(), env = "HERALD_ALLOWED_ORIGINS", parse = AllowedOrigins::parse_list;
    /// A connection whose request head is not complete this long after it was accepted (a silent socket, a slowloris head) is closed. [default: 10s]
    header_read_timeout: Duration = Duration::from_secs(10), env = "HERALD_HEADER_READ_TIMEOUT", parse = parse_duration;
    /// An HTTP keep-alive connection idle this long after its last response is closed (streams are not idle). [default: 60s]
    keep_alive_timeout: Duration = Duration::from_secs(60), env = "HERALD_KEEP_ALIVE_TIMEOUT", parse = parse_duration;
    /// Most open client connections on this node; beyond it new SSE/WebSocket requests get 503 over_capacity. 0: derived from the open-file limit. [default: 0]
    max_connections: usize = 0, env = "HERALD_MAX_CONNECTIONS", parse = parse_usize;
    /// Most open connections from one client address. 0: no limit. [default: 0]
    max_connections_per_ip: usize = 0, env = "HERALD_MAX_CONNECTIONS_PER_IP", parse = parse_usize;
    /// New connections per second allowed from one client address (e.g. 10, 10/s, 600/m). 0: no limit. [default: 0]
    connection_rate_per_ip: f64 = 0.0, env = "HERALD_CONNECTION_RATE_PER_IP", parse = parse_rate;
    /// Burst of new connections from one client address above connection_rate_per_ip. 0: twice the rate. [default: 0]
    connection_burst_per_ip: usize = 0, env = "HERALD_CONNECTION_BURST_PER_IP", parse = parse_usize;
    /// Proxies (comma-separated addresses or CIDRs, e.g. 10.0.0.0/8,::1) whose X-Forwarded-For or Forwarded header names the client address. Anyone else's such headers are ignored. [default: none]
    trusted_proxies: TrustedProxies = TrustedProxies::default(), env = "HERALD_TRUSTED_PROXIES", parse = TrustedProxies::parse_list;
    /// Messages (and pings) per second one WebSocket may send; above it they are refused with `rate_limited`, and a connection that keeps it up is closed with 4029. 0: no limit. [default: 100]
    ws_message_rate: f64 = 100.0, env = "HERALD_WS_MESSAGE_RATE", parse = parse_rate;
    /// Burst of WebSocket messages above ws_message_rate. [default: 200]
    ws_message_burst: usize = 200, env = "HERALD_WS_MESSAGE_BURST", parse = parse_usize;
    /// Publishes per second one WebSocket may make (with allow_client_publish); above it `rate_limited`, kept up: close 4029. 0: no limit. [default: 20]
    ws_publish_rate: f64 = 20.0, env = "HERALD_WS_PUBLISH_RATE", parse = parse_rate;
    /// Burst of WebSocket publishes above ws_publish_rate. [default: 40]
    ws_publish_burst: usize = 40, env = "HERALD_WS_PUBLISH_BURST", parse = parse_usize;
    // --- end of publishers, origins and connection limits ---
    // ---- subscriber auth and namespaces (docs/security.md) ----
    /// HMAC secret (HS256/HS384/HS512) that subscriber tokens are signed with, at least 32 bytes. Prefer jwt_secret_file or the environment: flags show in process listings. Any subscriber key makes reading deny-by-default. [default: unset]
    jwt_secret: Secret = Secret::default(), env = "HERALD_JWT_SECRET", parse = parse_secret;
    /// File holding the HMAC secret (a trailing newline is ignored). [default: unset]
    jwt_secret_file: String = String::new(), env = "HERALD_JWT_SECRET_FILE", parse = parse_string;
    /// PEM public key that subscriber tokens are verified with: RSA (RS256/384/512, PS256/384/512), EC (ES256/ES384) or Ed25519 (EdDSA). [default: unset]
    jwt_public_key_file: String = String::new(), env = "HERALD_JWT_PUBLIC_KEY_FILE", parse = parse_string;
    /// JWKS file (JSON Web Key Set) whose keys verify subscriber tokens, chosen by the token's `kid`. [default: unset]
    jwks_file: String = String::new(), env = "HERALD_JWKS_FILE", parse = parse_string;
    /// Required `aud` of subscriber tokens (comma-separated: any of them). Empty: `aud` is not checked. [default: unset]
    jwt_audience: String = String::new(), env = "HERALD_JWT_AUDIENCE", parse = parse_string;
    /// Required `iss` of subscriber tokens (comma-separated: any of them). Empty: `iss` is not checked. [default: unset]
    jwt_issuer: String = String::new(), env = "HERALD_JWT_ISSUER", parse = parse_string;
    /// Clock skew allowed when checking `exp`, `nbf` and `iat`. [default: 5s]
    jwt_leeway: Duration = Duration::from_secs(5), env = "HERALD_JWT_LEEWAY", parse = parse_duration;
    /// Cookie a subscriber token is read from (after the Authorization header and ?token=). [default: herald_token]
    jwt_cookie: String = "herald_token".to_owned(), env = "HERALD_JWT_COOKIE", parse = parse_string;
    /// A WebSocket opened without a token must send the `auth` op (or hold a subscription to an anonymously readable channel) within this time, or it is closed with 4401. [default: 10s]
    auth_timeout: Duration = Duration::from_secs(10), env = "HERALD_AUTH_TIMEOUT", parse = parse_duration;
    // ---- end of subscriber auth and namespaces ----
    // --- TLS, HTTP/2 and long-polling (docs/operations.md, "TLS and HTTP/2") ---
    /// PEM certificate chain (leaf first) for native TLS; with tls_key_file set too, the node speaks https:// and wss:// only. Re-read when it changes and on SIGHUP. [default: unset]
    tls_cert_file: PathBuf = PathBuf::new(), env = "HERALD_TLS_CERT_FILE", parse = parse_path;
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of tls_cert_file. [default: unset]
    tls_key_file: PathBuf = PathBuf::new(), env = "HERALD_TLS_KEY_FILE", parse = parse_path;
    /// How often the certificate files are checked for a new pair; 0: only on SIGHUP. [default: 10s]
    tls_reload_interval: Duration = Duration::from_secs(10), env = "HERALD_TLS_RELOAD_INTERVAL", parse = parse_duration;
    /// Offer HTTP/2: by ALPN over TLS, and cleartext with prior knowledge (h2c) on a plain port (the flag alone means true). [default: true]
    http2: bool = true, env = "HERALD_HTTP2", parse = parse_bool, bare = "true";
    /// Most concurrent streams (requests and SSE streams) one HTTP/2 connection may open. [default: 100]
    h2_max_concurrent_streams: usize = 100, env = "HERALD_H2_MAX_CONCURRENT_STREAMS", parse = parse_usize;
    /// Interval of HTTP/2 pings from the server. [default: 25s]
    h2_ping_interval: Duration = Duration::from_secs(25), env = "HERALD_H2_PING_INTERVAL", parse = parse_duration;
    /// An HTTP/2 connection that does not answer a ping within this long is closed. [default: 20s]
    h2_ping_timeout: Duration = Duration::from_secs(20), env = "HERALD_H2_PING_TIMEOUT", parse = parse_duration;
    /// Largest request header block on HTTP/2, in bytes (decoded); larger: 431. [default: 16384]
    h2_max_header_bytes: usize = 16 * 1024, env = "HERALD_H2_MAX_HEADER_BYTES", parse = parse_usize;
    /// Longest a long-poll (GET /v1/poll) is held; a client's `timeout` above it is lowered to it. [default: 60s]
    poll_max_timeout: Duration = Duration::from_secs(60), env = "HERALD_POLL_MAX_TIMEOUT", parse = parse_duration;
    // --- end of TLS, HTTP/2 and long-polling ---
    // ---- rooms: presence and join/leave (docs/operations.md, "Rooms") ----
    /// How long a node's presence in its rooms lasts without a refresh (with Redis): the members of a node that dies drop out of presence within this time and their users leave. Nodes refresh every third of it. [default: 15s]
    presence_ttl: Duration = Duration::from_secs(15), env = "HERALD_PRESENCE_TTL", parse = parse_duration;
    /// How long a user's last connection to a room must be gone before `leave` is sent: a page reload inside it sends neither leave nor join. A namespace's own `leave_grace` wins. [default: 5s]
    leave_grace: Duration = Duration::from_secs(5), env = "HERALD_LEAVE_GRACE", parse = parse_duration;
    /// No join or leave messages in a room holding more connections than this (against storms in big rooms). A namespace's own `join_leave_max_members` wins. [default: 1000]
    join_leave_max_members: usize = 1000, env = "HERALD_JOIN_LEAVE_MAX_MEMBERS", parse = parse_usize;
    /// Most members one presence listing returns (WebSocket `presence`, GET .../presence); a larger room's listing says `truncated: true` (its counts stay exact). [default: 1000]
    presence_list_max: usize = 1000, env = "HERALD_PRESENCE_LIST_MAX", parse = parse_usize;
    // ---- end of rooms ----
    // --- runtime (issue 12: fan-out performance, docs/benchmarks.md) ---
    /// Runtime worker threads. 0: one per CPU. Several nodes on one machine: give each its share of the cores (two nodes on two cores spend less CPU per delivery with 1 each). [default: 0]
    worker_threads: usize = 0, env = "HERALD_WORKER_THREADS", parse = parse_usize;
    // --- end of runtime ---
    /// Log format: human or json. [default: human]
    log_format: LogFormat = LogFormat::Human, env = "HERALD_LOG_FORMAT", parse = parse_log_format;
    /// Log filter (tracing env-filter syntax, e.g. info or herald_server=debug; checked at start). [default: info]
    log_level: String = "info".to_owned(), env = "HERALD_LOG_LEVEL", parse = parse_log_level;
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |option, reason: &str| {
            Err(ConfigError::Invalid {
                option,
                reason: reason.to_owned(),
            })
        };
        if self.max_channel_len == 0 || self.max_channel_len > herald_core::channel::MAX_CHANNEL_LEN
        {
            return invalid("max_channel_len", "must be between 1 and 255");
        }
        for (option, v) in [
            ("max_body_bytes", self.max_body_bytes),
            ("max_message_bytes", self.max_message_bytes),
            ("max_ws_frame_bytes", self.max_ws_frame_bytes),
            (
                "max_channels_per_connection",
                self.max_channels_per_connection,
            ),
            ("max_broadcast_channels", self.max_broadcast_channels),
            ("queue_max_messages", self.queue_max_messages),
            ("queue_max_bytes", self.queue_max_bytes),
            ("history_page_bytes", self.history_page_bytes),
            ("memory_max_bytes", self.memory_max_bytes),
            ("presence_list_max", self.presence_list_max),
        ] {
            if v == 0 {
                return invalid(option, "must be greater than 0");
            }
        }
        for (option, d) in [
            ("sse_heartbeat", self.sse_heartbeat),
            ("ws_ping_interval", self.ws_ping_interval),
            ("ws_ping_timeout", self.ws_ping_timeout),
            ("history_ttl", self.history_ttl),
            ("header_read_timeout", self.header_read_timeout),
            ("keep_alive_timeout", self.keep_alive_timeout),
            ("presence_ttl", self.presence_ttl),
        ] {
            if d.is_zero() {
                return invalid(option, "must be greater than 0");
            }
        }
        for (option, rate, burst) in [
            (
                "ws_message_burst",
                self.ws_message_rate,
                self.ws_message_burst,
            ),
            (
                "ws_publish_burst",
                self.ws_publish_rate,
                self.ws_publish_burst,
            ),
        ] {
            if rate > 0.0 && burst == 0 {
                return invalid(option, "must be at least 1 when its rate is set");
            }
        }
        self.validate_transports()?;
        if self.queue_max_bytes < self.max_message_bytes + 1024 {
            return invalid(
                "queue_max_bytes",
                "must exceed max_message_bytes by at least 1 KiB",
            );
        }
        // Checked here exactly as the broker will parse it, so a bad URL exits 2 before the
        // node announces that it is listening.
        let url = &self.redis_url;
        let known = [
            "redis://",
            "rediss://",
            "redis+sentinel://",
            "rediss+sentinel://",
            "redis+cluster://",
            "rediss+cluster://",
        ];
        if !url.is_empty() && !known.iter().any(|scheme| url.starts_with(scheme)) {
            return invalid(
                "redis_url",
                "must start with redis://, rediss://, redis+sentinel://, rediss+sentinel://, \
                 redis+cluster:// or rediss+cluster://",
            );
        }
        if !url.is_empty()
            && let Err(e) = herald_broker::redis::validate_url(url)
        {
            let reason = match e {
                herald_broker::BrokerError::Internal(reason) => reason,
                other => other.to_string(),
            };
            return invalid("redis_url", &reason);
        }
        self.validate_production_redis()?;
        self.validate_auth()
    }

    /// Checks the production Redis block (issue 14) against the URL.
    fn validate_production_redis(&self) -> Result<(), ConfigError> {
        let invalid = |option, reason: &str| {
            Err(ConfigError::Invalid {
                option,
                reason: reason.to_owned(),
            })
        };
        let url = &self.redis_url;
        if self.publish_durability == Durability::Replicated {
            if url.is_empty() {
                return invalid(
                    "publish_durability",
                    "replicated needs a Redis with replicas (set redis_url)",
                );
            }
            if self.redis_wait_timeout.is_zero() {
                return invalid("redis_wait_timeout", "must be greater than 0");
            }
        }
        let tls = url.starts_with("rediss");
        for (option, path) in [
            ("redis_tls_ca_file", &self.redis_tls_ca_file),
            ("redis_tls_cert_file", &self.redis_tls_cert_file),
            ("redis_tls_key_file", &self.redis_tls_key_file),
        ] {
            if path.as_os_str().is_empty() {
                continue;
            }
            if !tls {
                return invalid(
                    option,
                    "needs a TLS Redis URL (rediss://, rediss+sentinel:// or rediss+cluster://)",
                );
            }
            if let Err(e) = std::fs::metadata(path) {
                return Err(ConfigError::Invalid {
                    option,
                    reason: format!("cannot read {}: {e}", path.display()),
                });
            }
        }
        if self.redis_tls_cert_file.as_os_str().is_empty()
            != self.redis_tls_key_file.as_os_str().is_empty()
        {
            return invalid(
                "redis_tls_cert_file",
                "a client certificate needs both redis_tls_cert_file and redis_tls_key_file",
            );
        }
        let sentinel =
            url.starts_with("redis+sentinel://") || url.starts_with("rediss+sentinel://");
        if !sentinel
            && (!self.redis_sentinel_username.is_empty()
                || !self.redis_sentinel_password.is_empty())
        {
            return invalid(
                "redis_sentinel_password",
                "only applies to redis+sentinel:// URLs",
            );
        }
        Ok(())
    }

    /// Replaces `*_password_file` options by the secrets they hold (each excludes its inline twin).
    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        for (file_option, file, secret) in [
            (
                "redis_password_file",
                &self.redis_password_file,
                &mut self.redis_password,
            ),
            (
                "redis_sentinel_password_file",
                &self.redis_sentinel_password_file,
                &mut self.redis_sentinel_password,
            ),
        ] {
            if file.as_os_str().is_empty() {
                continue;
            }
            if !secret.is_empty() {
                return Err(ConfigError::Invalid {
                    option: file_option,
                    reason: "set either the password or the password file, not both".into(),
                });
            }
            *secret = read_secret_file(file_option, file)?;
        }
        Ok(())
    }

    /// The production Redis options (issue 14) as broker settings; the rest is the default.
    pub fn production_redis(&self) -> RedisConfig {
        let some = |s: &String| (!s.is_empty()).then(|| s.clone());
        let secret = |s: &RedisSecret| (!s.is_empty()).then(|| s.clone());
        let path = |p: &PathBuf| (!p.as_os_str().is_empty()).then(|| p.clone());
        RedisConfig {
            durability: self.publish_durability,
            wait_timeout: self.redis_wait_timeout,
            username: some(&self.redis_username),
            password: secret(&self.redis_password),
            sentinel_username: some(&self.redis_sentinel_username),
            sentinel_password: secret(&self.redis_sentinel_password),
            tls: TlsFiles {
                ca_file: path(&self.redis_tls_ca_file),
                cert_file: path(&self.redis_tls_cert_file),
                key_file: path(&self.redis_tls_key_file),
            },
            ..RedisConfig::default()
        }
    }

    /// The TLS, HTTP/2 and long-polling options.
    fn validate_transports(&self) -> Result<(), ConfigError> {
        let invalid = |option, reason: &str| {
            Err(ConfigError::Invalid {
                option,
                reason: reason.to_owned(),
            })
        };
        let cert = !self.tls_cert_file.as_os_str().is_empty();
        let key = !self.tls_key_file.as_os_str().is_empty();
        if cert && !key {
            return invalid("tls_key_file", "must be set with tls_cert_file");
        }
        if key && !cert {
            return invalid("tls_cert_file", "must be set with tls_key_file");
        }
        if self.h2_max_concurrent_streams == 0 || self.h2_max_concurrent_streams > u32::MAX as usize
        {
            return invalid("h2_max_concurrent_streams", "must be between 1 and 2^32-1");
        }
        if !(1024..=1 << 20).contains(&self.h2_max_header_bytes) {
            return invalid("h2_max_header_bytes", "must be between 1024 and 1048576");
        }
        for (option, d) in [
            ("h2_ping_interval", self.h2_ping_interval),
            ("h2_ping_timeout", self.h2_ping_timeout),
            ("poll_max_timeout", self.poll_max_timeout),
        ] {
            if d.is_zero() {
                return invalid(option, "must be greater than 0");
            }
        }
        Ok(())
    }

    /// Validation limits for request parsing.
    pub fn limits(&self) -> herald_core::protocol::Limits {
        herald_core::protocol::Limits {
            max_channel_len: self.max_channel_len,
            max_message_bytes: self.max_message_bytes,
            max_broadcast_channels: self.max_broadcast_channels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn defaults_flags_and_file_merge_in_order() {
        let dir = std::env::temp_dir().join(format!("herald-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("herald.toml");
        std::fs::write(&path, "history_size = 5\nsse_heartbeat = \"500ms\"\napi_keys = [\"a\", \"b\"]\nlisten = \"127.0.0.1:0\"\n")
            .expect("write");
        let c = Config::from_cli(cli(&[
            "--config",
            path.to_str().expect("utf8"),
            "--history-size",
            "7",
        ]))
        .expect("valid");
        assert_eq!(c.history_size, 7, "flag beats file");
        assert_eq!(
            c.sse_heartbeat,
            Duration::from_millis(500),
            "file beats default"
        );
        let secrets: Vec<&[u8]> = c.api_keys.iter().map(|k| k.secret.as_bytes()).collect();
        assert_eq!(secrets, [b"a", b"b"]);
        assert_eq!(
            format!("{:?}", c.api_keys),
            "ApiKeys(2 keys, secrets redacted: unnamed [*], unnamed [*])"
        );
        assert_eq!(c.max_channels_per_connection, 64, "default");
        std::fs::write(&path, "no_such_option = 1\n").expect("write");
        assert!(matches!(
            Config::from_cli(cli(&["--config", path.to_str().expect("utf8")])),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::write(&path, "history_ttl = \"forever\"\n").expect("write");
        assert!(matches!(
            Config::from_cli(cli(&["--config", path.to_str().expect("utf8")])),
            Err(ConfigError::Invalid {
                option: "history_ttl",
                ..
            })
        ));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn list_flags_take_comma_separated_values() {
        let c = Config::from_cli(cli(&["--api-keys", "k1, k2"])).expect("valid");
        let secrets: Vec<&[u8]> = c.api_keys.iter().map(|k| k.secret.as_bytes()).collect();
        assert_eq!(secrets, [b"k1", b"k2"]);
        assert!(c.redis_url.is_empty());
    }

    #[test]
    fn invalid_values_are_refused_with_the_option_name() {
        assert!(Cli::try_parse_from(["herald", "--sse-heartbeat", "soon"]).is_err());
        assert!(matches!(
            Config::from_cli(cli(&["--max-channel-len", "300"])),
            Err(ConfigError::Invalid {
                option: "max_channel_len",
                ..
            })
        ));
        assert!(matches!(
            Config::from_cli(cli(&["--redis-url", "http://x"])),
            Err(ConfigError::Invalid {
                option: "redis_url",
                ..
            })
        ));
    }

    #[test]
    fn boolean_flags_work_bare_and_with_values() {
        let bare = |args: &[&str]| Config::from_cli(cli(args)).expect("valid");
        assert!(bare(&["--allow-client-publish"]).allow_client_publish);
        assert!(
            bare(&["--allow-client-publish", "--history-size", "3"]).allow_client_publish,
            "a bare flag before another option"
        );
        assert!(bare(&["--allow-client-publish", "TRUE"]).allow_client_publish);
        assert!(!bare(&["--allow-client-publish=false"]).allow_client_publish);
        assert!(!bare(&[]).allow_client_publish);
        assert!(Cli::try_parse_from(["herald", "--allow-client-publish", "maybe"]).is_err());
    }

    #[test]
    fn listen_takes_host_names_and_log_filters_are_checked() {
        let c = Config::from_cli(cli(&["--listen", "localhost:9711"])).expect("valid");
        assert_eq!(c.listen, SocketAddr::from(([127, 0, 0, 1], 9711)));
        assert!(parse_addr("[::1]:80").is_ok_and(|a| a.is_ipv6()));
        assert!(parse_addr("localhost").is_err(), "no port");
        assert!(Cli::try_parse_from(["herald", "--log-level", "nonsense==="]).is_err());
        for ok in ["info", "herald_server=debug,warn", "off"] {
            assert_eq!(parse_log_level(ok).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn redis_urls_are_checked_fully_at_start() {
        for (url, says) in [
            ("redis://:pw@h:notaport", "invalid Redis URL"),
            ("redis+cluster://", "lists no hosts"),
            ("redis+sentinel://s1:1", "names the primary"),
        ] {
            match Config::from_cli(cli(&["--redis-url", url])) {
                Err(ConfigError::Invalid {
                    option: "redis_url",
                    reason,
                }) => assert!(reason.contains(says) && !reason.contains("pw"), "{reason}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        for ok in [
            "redis://127.0.0.1:6390/2",
            "rediss://h:1",
            "rediss+sentinel://s1:1,s2:2/main",
            "rediss+cluster://a:1,b:2",
        ] {
            assert!(Config::from_cli(cli(&["--redis-url", ok])).is_ok(), "{ok}");
        }
    }

    #[test]
    fn security_options_load_from_the_file_and_flags() {
        let dir = std::env::temp_dir().join(format!("herald-config-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("herald.toml");
        std::fs::write(
            &path,
            r#"
allowed_origins = ["https://app.example.com", "https://*.example.org"]
trusted_proxies = ["10.0.0.0/8", "::1"]
connection_rate_per_ip = "600/m"
ws_message_rate = 0.5
header_read_timeout = "2s"

[[api_keys]]
name = "billing"
key = "k1"
channels = ["orders.*"]
rate = "5/s"
"#,
        )
        .expect("write");
        let file = path.to_str().expect("utf8");
        let c = Config::from_cli(cli(&["--config", file])).expect("valid");
        assert_eq!(c.api_keys.len(), 1);
        assert_eq!(c.api_keys[0].name, "billing");
        assert_eq!(c.api_keys[0].rate.map(|r| r.burst), Some(10));
        assert!(!c.allowed_origins.is_any());
        assert!(c.trusted_proxies.trusts("10.1.2.3".parse().expect("ip")));
        assert_eq!(c.connection_rate_per_ip, 10.0);
        assert_eq!(c.ws_message_rate, 0.5);
        assert_eq!(c.header_read_timeout, Duration::from_secs(2));
        // A flag replaces the file's keys entirely.
        let c = Config::from_cli(cli(&["--config", file, "--api-keys", "k2"])).expect("valid");
        assert_eq!(c.api_keys[0].name, "unnamed");
        for (args, option) in [
            (
                &["--allowed-origins", "https://*.com"][..],
                "allowed_origins",
            ),
            (&["--trusted-proxies", "10.0.0.0/40"][..], "trusted_proxies"),
            (&["--ws-message-burst", "0"][..], "ws_message_burst"),
            (&["--header-read-timeout", "0s"][..], "header_read_timeout"),
        ] {
            let err = Cli::try_parse_from(std::iter::once("herald").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
                .and_then(|cli| Config::from_cli(cli).map_err(|e| e.to_string()));
            let err = err.expect_err("refused");
            let flag = option.replace('_', "-");
            assert!(err.contains(option) || err.contains(&flag), "{err}");
        }
        assert_eq!(parse_rate("10"), Ok(10.0));
        assert_eq!(parse_rate("3600/h"), Ok(1.0));
        assert!(parse_rate("-1").is_err() && parse_rate("5/d").is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn production_redis_options_parse_validate_and_hide_secrets() {
        let dir = std::env::temp_dir().join(format!("herald-config-redis-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let secret = dir.join("password");
        std::fs::write(&secret, "s3cret-file\n").expect("write");
        let secret = secret.to_str().expect("utf8");
        let c = Config::from_cli(cli(&[
            "--redis-url",
            "redis+sentinel://u:s3cret-url@a:1,b:2/main",
            "--publish-durability",
            "replicated",
            "--redis-wait-timeout",
            "250ms",
            "--redis-username",
            "herald",
            "--redis-password-file",
            secret,
        ]))
        .expect("valid");
        assert_eq!(c.redis_password.expose(), "s3cret-file");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        let r = c.production_redis();
        assert_eq!(r.durability, Durability::Replicated);
        assert_eq!(r.wait_timeout, Duration::from_millis(250));
        assert_eq!(r.username.as_deref(), Some("herald"));
        assert!(!format!("{r:?}").contains("s3cret"));

        let refused = |args: &[&str], option: &str| match Config::from_cli(cli(args)) {
            Err(ConfigError::Invalid { option: o, .. }) => assert_eq!(o, option, "{args:?}"),
            other => panic!("{args:?}: {other:?}"),
        };
        refused(
            &["--publish-durability", "replicated"],
            "publish_durability",
        );
        refused(
            &["--redis-url", "redis://a:1", "--redis-tls-ca-file", secret],
            "redis_tls_ca_file",
        );
        refused(
            &[
                "--redis-url",
                "rediss://a:1",
                "--redis-tls-ca-file",
                "/no/such/ca.pem",
            ],
            "redis_tls_ca_file",
        );
        refused(
            &[
                "--redis-url",
                "rediss://a:1",
                "--redis-tls-cert-file",
                secret,
            ],
            "redis_tls_cert_file",
        );
        refused(
            &[
                "--redis-url",
                "redis://a:1",
                "--redis-password",
                "x",
                "--redis-password-file",
                secret,
            ],
            "redis_password_file",
        );
        refused(
            &[
                "--redis-url",
                "redis://a:1",
                "--redis-password-file",
                "/no/such/file",
            ],
            "redis_password_file",
        );
        refused(
            &[
                "--redis-url",
                "redis://a:1",
                "--redis-sentinel-password",
                "x",
            ],
            "redis_sentinel_password",
        );
        assert!(Cli::try_parse_from(["herald", "--publish-durability", "fsync"]).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("x").is_err());
    }
}
