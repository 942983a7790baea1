//! Where the node's connections go: the one place that turns the URL, the credentials and the TLS
//! files into connections to the current primary (a fixed server, or the one Sentinel names) or
//! into a Cluster client.
//!
//! Every connection the broker opens (commands, pub/sub, the durability barrier) comes from here,
//! so all of them follow a failover the same way: a new connection asks Sentinel again. Nothing
//! here remembers the primary's address; callers drop a connection that failed (or that
//! answered `READONLY`, or that Sentinel announced as replaced) and take a new one.

use std::{fs, path::Path, time::Duration};

use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, ProtocolVersion, RedisError, TlsCertificates, aio::MultiplexedConnection,
    cluster::ClusterClientBuilder,
};

use super::{
    config::{RedisConfig, Secret, TlsFiles},
    sentinel::Sentinel,
    url::{Topology, redact_url},
};
use crate::BrokerError;

pub(crate) struct Endpoint {
    target: Target,
    /// Bounds each step of finding the primary (asking a Sentinel, checking ROLE).
    timeout: Duration,
}

enum Target {
    Single(ConnectionInfo),
    Sentinel(Sentinel),
    Cluster {
        /// The seed nodes, for the cluster client (which applies `certs` itself).
        nodes: Vec<ConnectionInfo>,
        certs: Option<TlsCertificates>,
        /// The same with `certs` applied, for connecting to a seed node directly.
        seeds: Vec<ConnectionInfo>,
    },
}

/// A connection to the current primary and where it goes (`host:port`).
pub(crate) struct Primary {
    pub conn: MultiplexedConnection,
    pub addr: String,
}

impl Endpoint {
    /// Parses the URL and reads the TLS files: every configuration mistake surfaces here, at start.
    pub(crate) fn new(cfg: &RedisConfig) -> Result<Self, BrokerError> {
        let topology = Topology::parse(&cfg.url)?;
        let tls = topology.tls();
        if !tls && !cfg.tls.is_empty() {
            return Err(config_error(format!(
                "TLS files are configured but the Redis URL {} does not use TLS (rediss://, \
                 rediss+sentinel:// or rediss+cluster://)",
                redact_url(&cfg.url)
            )));
        }
        if tls {
            // redis builds its rustls configs with the process-wide provider; choose it here so
            // that no other rustls user in the binary can make the choice ambiguous.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let certs = if tls { certificates(&cfg.tls)? } else { None };
        let credentials = |info| credentials(info, cfg.username.as_deref(), cfg.password.as_ref());
        let target = match topology {
            Topology::Standalone(url) => {
                Target::Single(with_certs(credentials(info(&url)?), &certs)?)
            }
            Topology::Cluster(urls) => {
                let nodes: Vec<ConnectionInfo> = urls
                    .iter()
                    .map(|u| info(u).map(credentials))
                    .collect::<Result<_, _>>()?;
                let seeds = nodes
                    .iter()
                    .map(|n| with_certs(n.clone(), &certs))
                    .collect::<Result<_, _>>()?;
                Target::Cluster {
                    nodes,
                    certs,
                    seeds,
                }
            }
            Topology::Sentinel {
                sentinels,
                master,
                node,
            } => {
                let sentinel_infos = sentinels
                    .iter()
                    .map(|u| {
                        let i = credentials_for_sentinel(info(u)?, cfg);
                        with_certs(i, &certs)
                    })
                    .collect::<Result<_, _>>()?;
                let node = with_certs(credentials(info(&node)?), &certs)?;
                Target::Sentinel(Sentinel::new(sentinel_infos, master, node))
            }
        };
        Ok(Self {
            target,
            timeout: cfg.timeout,
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster { .. })
    }

    pub(crate) fn sentinel(&self) -> Option<&Sentinel> {
        match &self.target {
            Target::Sentinel(s) => Some(s),
            _ => None,
        }
    }

    /// A connection to the current primary (not for Cluster), RESP3 when `resp3`.
    pub(crate) async fn primary(
        &self,
        config: &AsyncConnectionConfig,
        resp3: bool,
    ) -> Result<Primary, RedisError> {
        match &self.target {
            Target::Single(info) => {
                let addr = info.addr().to_string();
                let conn = Client::open(with_protocol(info.clone(), resp3))?
                    .get_multiplexed_async_connection_with_config(config)
                    .await?;
                Ok(Primary { conn, addr })
            }
            Target::Sentinel(s) => s.connect_primary(config, resp3, self.timeout).await,
            Target::Cluster { .. } => Err(RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a Cluster has no single primary",
            ))),
        }
    }

    /// One connection and a `PING`, to tell at start a configuration Redis refuses (see [`fatal`])
    /// from a Redis that is merely not reachable yet. On Cluster, `commands` are also sent to a
    /// seed node, to find out at start that the user lacks a permission they need.
    pub(crate) async fn preflight(
        &self,
        timeout: Duration,
        commands: &[redis::Cmd],
    ) -> Result<(), RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let attempt = async {
            match &self.target {
                Target::Cluster { seeds, .. } => {
                    seed_check(seeds, &config, commands).await?;
                    let mut conn = self
                        .cluster()
                        .into_iter()
                        .next()
                        .ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "no cluster")))?
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .build()?
                        .get_async_connection()
                        .await?;
                    redis::cmd("PING").query_async::<()>(&mut conn).await
                }
                _ => {
                    let mut primary = self.primary(&config, false).await?;
                    redis::cmd("PING")
                        .query_async::<()>(&mut primary.conn)
                        .await
                }
            }
        };
        // Discovery through Sentinel may take a few steps: give it a little more than one.
        tokio::time::timeout(timeout * 2, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from((
                    redis::ErrorKind::Io,
                    "redis did not answer in time",
                )))
            })
    }

    /// A Cluster client builder with the credentials and certificates applied (Cluster only).
    pub(crate) fn cluster(&self) -> Option<ClusterClientBuilder> {
        let Target::Cluster { nodes, certs, .. } = &self.target else {
            return None;
        };
        let builder = ClusterClientBuilder::new(nodes.clone());
        Some(match certs {
            Some(c) => builder.certs(c.clone()),
            None => builder,
        })
    }
}

/// Logs in to the Cluster's seed nodes directly, one after another, until one answers
/// `commands`. The cluster client reports a failure of its first connections as one flat
/// message, so that credentials Redis rejects or a certificate Herald does not trust would look
/// like a cluster that is merely down: a direct connection keeps the real error.
async fn seed_check(
    seeds: &[ConnectionInfo],
    config: &AsyncConnectionConfig,
    commands: &[redis::Cmd],
) -> Result<(), RedisError> {
    let mut last = None;
    for seed in seeds {
        let checked = async {
            let mut conn = Client::open(seed.clone())?
                .get_multiplexed_async_connection_with_config(config)
                .await?;
            for cmd in commands {
                cmd.query_async::<redis::Value>(&mut conn).await?;
            }
            Ok::<_, RedisError>(())
        }
        .await;
        match checked {
            Ok(()) => return Ok(()),
            Err(e) if fatal(&e).is_some() => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no seed node"))))
}

/// Why `e` is a configuration Redis will keep refusing, if it is one.
pub(crate) fn fatal(e: &RedisError) -> Option<&'static str> {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::AuthenticationFailed => Some("Redis rejected the credentials"),
        ErrorKind::Server(ServerErrorKind::NoPerm) => {
            Some("the Redis user lacks a permission Herald needs")
        }
        ErrorKind::InvalidClientConfig => Some("invalid Redis client configuration"),
        ErrorKind::MasterNameNotFoundBySentinel => {
            Some("Sentinel does not know the primary named in the URL")
        }
        _ if matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) => {
            Some("Redis rejected the credentials")
        }
        _ if is_tls_failure(e) => Some("TLS with Redis failed"),
        _ => None,
    }
}

/// A TLS handshake that failed for a reason a retry will not fix: an untrusted or mismatched
/// certificate, or a server that does not speak TLS.
fn is_tls_failure(e: &RedisError) -> bool {
    use std::error::Error;
    let rustls = |err: &(dyn Error + 'static)| err.downcast_ref::<rustls::Error>().is_some();
    let mut source: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(err) = source {
        // redis keeps an I/O error as `Arc<dyn Error>`; tokio-rustls wraps the TLS error in it.
        let io = err.downcast_ref::<std::io::Error>().or_else(|| {
            err.downcast_ref::<std::sync::Arc<dyn Error + Send + Sync>>()
                .and_then(|a| a.downcast_ref::<std::io::Error>())
        });
        let tls_in_io = io
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| rustls(inner));
        if rustls(err) || tls_in_io {
            return true;
        }
        source = err.source();
    }
    false
}

fn config_error(msg: String) -> BrokerError {
    BrokerError::Internal(msg)
}

fn info(url: &str) -> Result<ConnectionInfo, BrokerError> {
    url.into_connection_info()
        .map_err(|e| config_error(format!("invalid Redis URL {}: {e}", redact_url(url))))
}

pub(crate) fn with_protocol(info: ConnectionInfo, resp3: bool) -> ConnectionInfo {
    if !resp3 {
        return info;
    }
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    info.set_redis_settings(settings)
}

fn credentials(info: ConnectionInfo, user: Option<&str>, pass: Option<&Secret>) -> ConnectionInfo {
    let mut settings = info.redis_settings().clone();
    if let Some(u) = user {
        settings = settings.set_username(u);
    }
    if let Some(p) = pass {
        settings = settings.set_password(p.expose());
    }
    info.set_redis_settings(settings)
}

fn credentials_for_sentinel(info: ConnectionInfo, cfg: &RedisConfig) -> ConnectionInfo {
    credentials(
        info,
        cfg.sentinel_username.as_deref(),
        cfg.sentinel_password.as_ref(),
    )
}

/// Attaches the configured CA and client certificate to a `rediss` address.
fn with_certs(
    info: ConnectionInfo,
    certs: &Option<TlsCertificates>,
) -> Result<ConnectionInfo, BrokerError> {
    match certs {
        Some(c) if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) => {
            Client::build_with_tls(info, c.clone())
                .map(|client| client.get_connection_info().clone())
                .map_err(|e| config_error(format!("invalid Redis TLS files: {e}")))
        }
        _ => Ok(info),
    }
}

/// Reads the TLS files; `None` when none is configured (the system's roots are trusted).
fn certificates(files: &TlsFiles) -> Result<Option<TlsCertificates>, BrokerError> {
    let read = |what: &str, path: &Path| {
        fs::read(path).map_err(|e| {
            config_error(format!(
                "cannot read the Redis TLS {what} {}: {e}",
                path.display()
            ))
        })
    };
    let client_tls = match (&files.cert_file, &files.key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read("client certificate", cert)?,
            client_key: read("client key", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(config_error(
                "a Redis TLS client certificate needs both the certificate and the key file".into(),
            ));
        }
    };
    let root_cert = match &files.ca_file {
        Some(ca) => Some(read("CA file", ca)?),
        None => None,
    };
    if client_tls.is_none() && root_cert.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}
