//! Connection limits: how many connections a node holds, how many one client address may hold
//! and open per second, and who may say which address a client has.
//!
//! Connections are admitted twice:
//! - **at accept** ([`ConnectionLimits::admit_socket`]): every TCP connection counts against
//!   `max_connections` plus a small reserve for plain requests, and, unless it comes from a
//!   trusted proxy, against its address's `max_connections_per_ip` and
//!   `connection_rate_per_ip`. A refused socket is answered at once (see [`refuse`]);
//! - **when it asks for a stream** ([`ConnectionLimits::admit_stream`]): SSE and WebSocket are
//!   refused with `503 over_capacity` once the node holds more than `max_connections`, and a
//!   stream a trusted proxy forwards counts against the per-address limits of the client the
//!   proxy names (the proxy's own connections are not limited per address).
//!
//! A [`Permit`] is what admission hands out; dropping it gives the capacity back.

pub mod bucket;
pub mod fds;
mod per_ip;
mod proxies;
pub mod refuse;
pub mod timer;

use std::{
    net::IpAddr,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use herald_core::ErrorCode;

pub use self::proxies::TrustedProxies;
use self::{bucket::Rate, per_ip::PerIp};
use crate::{config::Config, metrics::LimitCounters};

/// Every limit that refuses or closes something, by the name of its option (the `limit` label of
/// `herald_limit_rejections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    HeaderReadTimeout,
    KeepAliveTimeout,
    MaxConnections,
    MaxConnectionsPerIp,
    ConnectionRatePerIp,
    AllowedOrigins,
    ApiKeyRate,
    WsMessageRate,
    WsPublishRate,
    MaxBodyBytes,
    MaxMessageBytes,
    MaxWsFrameBytes,
    MaxChannelsPerConnection,
    /// The embedded broker's bound: a publish refused with `storage_full`.
    MemoryMaxBytes,
}

impl Limit {
    pub const ALL: [Limit; 14] = [
        Self::HeaderReadTimeout,
        Self::KeepAliveTimeout,
        Self::MaxConnections,
        Self::MaxConnectionsPerIp,
        Self::ConnectionRatePerIp,
        Self::AllowedOrigins,
        Self::ApiKeyRate,
        Self::WsMessageRate,
        Self::WsPublishRate,
        Self::MaxBodyBytes,
        Self::MaxMessageBytes,
        Self::MaxWsFrameBytes,
        Self::MaxChannelsPerConnection,
        Self::MemoryMaxBytes,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::HeaderReadTimeout => "header_read_timeout",
            Self::KeepAliveTimeout => "keep_alive_timeout",
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
            Self::ConnectionRatePerIp => "connection_rate_per_ip",
            Self::AllowedOrigins => "allowed_origins",
            Self::ApiKeyRate => "api_key_rate",
            Self::WsMessageRate => "ws_message_rate",
            Self::WsPublishRate => "ws_publish_rate",
            Self::MaxBodyBytes => "max_body_bytes",
            Self::MaxMessageBytes => "max_message_bytes",
            Self::MaxWsFrameBytes => "max_ws_frame_bytes",
            Self::MaxChannelsPerConnection => "max_channels_per_connection",
            Self::MemoryMaxBytes => "memory_max_bytes",
        }
    }
}

/// Milliseconds on a process-wide monotonic clock, for token buckets shared across tasks.
pub fn clock_ms() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Why a connection or stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections`: 503 `over_capacity`.
    OverCapacity,
    /// `max_connections_per_ip`: 429 `too_many_connections`.
    TooManyConnections,
    /// `connection_rate_per_ip`: 429 `rate_limited`.
    RateLimited { retry_after: Duration },
}

/// How long a client refused for capacity is asked to wait (a proxy retries another node at once).
const CAPACITY_RETRY_AFTER: u64 = 5;

impl Refusal {
    pub fn limit(self) -> Limit {
        match self {
            Self::OverCapacity => Limit::MaxConnections,
            Self::TooManyConnections => Limit::MaxConnectionsPerIp,
            Self::RateLimited { .. } => Limit::ConnectionRatePerIp,
        }
    }

    pub fn code(self) -> ErrorCode {
        match self {
            Self::OverCapacity => ErrorCode::OverCapacity,
            Self::TooManyConnections => ErrorCode::TooManyConnections,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::OverCapacity => "this node is at its connection limit; retry (on another node)",
            Self::TooManyConnections => "too many connections from this address",
            Self::RateLimited { .. } => "too many new connections from this address",
        }
    }

    /// The `Retry-After` value, in whole seconds (at least 1).
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Self::OverCapacity | Self::TooManyConnections => CAPACITY_RETRY_AFTER,
            Self::RateLimited { retry_after } => retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }
}

/// Where a connection comes from, as known at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub ip: IpAddr,
    /// The peer is a trusted proxy: its requests name the client.
    pub via_proxy: bool,
}

pub struct ConnectionLimits {
    open: AtomicUsize,
    max_connections: usize,
    reserve: usize,
    /// `None` when neither per-address limit is set: nothing to count.
    per_ip: Option<PerIp>,
    proxies: TrustedProxies,
    refusing: AtomicUsize,
    /// Refusals answered at once may linger this many at a time, half the file-descriptor
    /// headroom; more are closed without an answer (each holds a descriptor for up to
    /// [`refuse::LINGER`]).
    max_refusing: usize,
    counters: LimitCounters,
}

impl ConnectionLimits {
    pub fn new(config: &Config, counters: LimitCounters) -> Arc<Self> {
        let nofile = fds::open_file_limit();
        let max_connections = match config.max_connections {
            0 => fds::derived_max_connections(nofile),
            n => n,
        };
        let reserve = fds::reserve(max_connections);
        if (max_connections + reserve) as u64 + fds::headroom(nofile) > nofile {
            tracing::warn!(
                max_connections,
                open_file_limit = nofile,
                "max_connections is above what the open-file limit leaves room for: the node may run out of file descriptors (raise the limit, e.g. LimitNOFILE=)"
            );
        }
        tracing::info!(
            max_connections,
            reserve,
            open_file_limit = nofile,
            "connection limits"
        );
        let rate = Rate::with_default_burst(
            config.connection_rate_per_ip,
            config.connection_burst_per_ip,
        );
        let per_ip = (config.max_connections_per_ip > 0 || rate.is_limited())
            .then(|| PerIp::new(config.max_connections_per_ip, rate));
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max_connections,
            reserve,
            per_ip,
            proxies: config.trusted_proxies.clone(),
            refusing: AtomicUsize::new(0),
            max_refusing: (fds::headroom(nofile) / 2).max(16) as usize,
            counters,
        })
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Open client connections (TCP), including those admitted into the reserve.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn refused(&self, r: Refusal) -> Refusal {
        self.counters.hit(r.limit());
        r
    }

    /// Admits a freshly accepted TCP connection from `ip`.
    pub fn admit_socket(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let mut permit = Permit {
            limits: self.clone(),
            socket: true,
            ip: None,
            peer: Peer {
                ip,
                via_proxy: self.proxies.trusts(ip),
            },
        };
        if open > self.max_connections + self.reserve {
            return Err(self.refused(Refusal::OverCapacity));
        }
        if let Some(per_ip) = &self.per_ip
            && !permit.peer.via_proxy
        {
            let key = per_ip::key(ip);
            per_ip.admit(key, clock_ms()).map_err(|r| self.refused(r))?;
            permit.ip = Some(key);
        }
        Ok(permit)
    }

    /// Admits a stream (SSE or WebSocket) on a connection from `peer`. `forwarded_for` and
    /// `forwarded` are the request's `X-Forwarded-For` and `Forwarded` values, read only when
    /// the peer is a trusted proxy. `takes_socket`: the stream outlives the HTTP connection (a
    /// WebSocket), so the permit also counts the socket and the direct peer's address.
    pub fn admit_stream<'a>(
        self: &Arc<Self>,
        peer: Peer,
        forwarded_for: impl Iterator<Item = &'a [u8]>,
        forwarded: impl Iterator<Item = &'a [u8]>,
        takes_socket: bool,
    ) -> Result<Option<Permit>, Refusal> {
        if self.open() > self.max_connections {
            return Err(self.refused(Refusal::OverCapacity));
        }
        let ip = match &self.per_ip {
            None => None,
            Some(per_ip) if peer.via_proxy => {
                let client = self.proxies.client_ip(peer.ip, forwarded_for, forwarded);
                let key = per_ip::key(client);
                per_ip.admit(key, clock_ms()).map_err(|r| self.refused(r))?;
                Some(key)
            }
            Some(per_ip) if takes_socket => {
                let key = per_ip::key(peer.ip);
                per_ip.hold(key, clock_ms());
                Some(key)
            }
            Some(_) => None,
        };
        if takes_socket {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        Ok((takes_socket || ip.is_some()).then(|| Permit {
            limits: self.clone(),
            socket: takes_socket,
            ip,
            peer,
        }))
    }

    /// Answers a refused socket (see [`refuse`]), unless too many refusals are in flight already.
    pub fn refuse(self: &Arc<Self>, stream: tokio::net::TcpStream, refusal: Refusal) {
        if self.refusing.fetch_add(1, Ordering::Relaxed) >= self.max_refusing {
            self.refusing.fetch_sub(1, Ordering::Relaxed);
            return; // dropped: closed without an answer
        }
        let limits = self.clone();
        tokio::spawn(async move {
            refuse::answer(stream, refusal).await;
            limits.refusing.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Capacity held by a connection or stream; given back on drop.
pub struct Permit {
    limits: Arc<ConnectionLimits>,
    socket: bool,
    /// The per-address key counted, if any.
    ip: Option<IpAddr>,
    peer: Peer,
}

impl Permit {
    pub fn peer(&self) -> Peer {
        self.peer
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.socket {
            self.limits.open.fetch_sub(1, Ordering::Relaxed);
        }
        if let (Some(ip), Some(per_ip)) = (self.ip, &self.limits.per_ip) {
            per_ip.release(ip, clock_ms());
        }
    }
}
