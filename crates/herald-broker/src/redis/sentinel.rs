//! Redis Sentinel: finding the primary, and following it when Sentinel promotes a replica.
//!
//! Discovery asks the Sentinels in turn (starting with the one that answered last) for the
//! primary's address (`SENTINEL GET-MASTER-ADDR-BY-NAME`), connects there and checks with `ROLE`
//! that the server really is a primary before anyone uses the connection: during a failover a
//! Sentinel may still name the old primary, and a restarted old primary comes back as a primary
//! until Sentinel demotes it. A failed check is just a failed connection attempt; callers retry.
//!
//! The node also subscribes to `+switch-master` on every Sentinel ([`follow`]): when the primary
//! it uses is replaced, it drops its command and barrier connections and breaks its pub/sub
//! connection, so all of them reconnect (through discovery) to the new primary, and the relay
//! fills every channel's gap from the new primary's history. Without that announcement (a
//! Sentinel unreachable from this node), connection errors, `READONLY` replies and the pub/sub
//! self-probe get to the same place, only later.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ErrorKind, PushInfo, PushKind,
    RedisError, Value,
};
use tokio::sync::mpsc;

use super::{
    Shared,
    endpoint::{Primary, with_protocol},
};

pub(crate) struct Sentinel {
    sentinels: Vec<ConnectionInfo>,
    master: String,
    /// Credentials, database and TLS settings for the data nodes; the address is Sentinel's.
    node: ConnectionInfo,
    /// The Sentinel that answered last: asked first next time.
    preferred: AtomicUsize,
}

impl Sentinel {
    pub(crate) fn new(
        sentinels: Vec<ConnectionInfo>,
        master: String,
        node: ConnectionInfo,
    ) -> Self {
        Self {
            sentinels,
            master,
            node,
            preferred: AtomicUsize::new(0),
        }
    }

    /// How many Sentinels are configured.
    pub(crate) fn len(&self) -> usize {
        self.sentinels.len()
    }

    /// Connects to the server Sentinel names as the primary, checked with `ROLE`.
    pub(crate) async fn connect_primary(
        &self,
        config: &AsyncConnectionConfig,
        resp3: bool,
        timeout: Duration,
    ) -> Result<Primary, RedisError> {
        let (host, port) = self.ask(timeout).await?;
        let addr = format!("{host}:{port}");
        let info = with_protocol(self.node_at(host, port), resp3);
        let mut conn = Client::open(info)?
            .get_multiplexed_async_connection_with_config(config)
            .await?;
        let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
        let is_primary = match &role {
            Value::Array(parts) => match parts.first() {
                Some(Value::BulkString(r)) => r == b"master",
                Some(Value::SimpleString(r)) => r == "master",
                _ => false,
            },
            _ => false,
        };
        match is_primary {
            true => Ok(Primary { conn, addr }),
            false => Err(RedisError::from((
                ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
                "the server Sentinel names is not a primary (yet)",
                addr,
            ))),
        }
    }

    /// The primary's address according to the first Sentinel that knows it.
    async fn ask(&self, timeout: Duration) -> Result<(String, u16), RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let n = self.sentinels.len();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_err = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let asked = async {
                let mut conn = Client::open(self.sentinels[idx].clone())?
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut conn)
                    .await
            };
            match asked.await {
                Ok(Some(addr)) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(addr);
                }
                Ok(None) => {
                    last_err = Some(RedisError::from((
                        ErrorKind::MasterNameNotFoundBySentinel,
                        "Sentinel does not know the primary",
                        self.master.clone(),
                    )));
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            RedisError::from((ErrorKind::EmptySentinelList, "no Sentinel configured"))
        }))
    }

    fn node_at(&self, host: String, port: u16) -> ConnectionInfo {
        let addr = match self.node.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        self.node.clone().set_addr(addr)
    }
}

/// Parses a `+switch-master` announcement for `master`: the new primary's `host:port`.
fn switched_to(master: &str, payload: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split(' ');
    if parts.next()? != master {
        return None;
    }
    let (_old_host, _old_port) = (parts.next()?, parts.next()?);
    let (host, port) = (parts.next()?, parts.next()?);
    port.parse::<u16>().ok()?;
    Some(format!("{host}:{port}"))
}

/// Listens for `+switch-master` on Sentinel `idx` for as long as the broker lives, reconnecting
/// with backoff when that Sentinel goes away.
pub(crate) async fn follow(shared: Arc<Shared>, idx: usize) {
    let Some(sentinel) = shared.endpoint.sentinel() else {
        return;
    };
    let info = with_protocol(sentinel.sentinels[idx].clone(), true);
    let mut delay = shared.cfg.reconnect_min;
    loop {
        let (tx, mut rx) = mpsc::unbounded_channel::<PushInfo>();
        let timeout = shared.cfg.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_push_sender(tx);
        let subscribed = async {
            let mut conn = Client::open(info.clone())?
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            conn.subscribe("+switch-master").await?;
            Ok::<_, RedisError>(conn)
        }
        .await;
        match subscribed {
            Ok(_conn) => {
                delay = shared.cfg.reconnect_min;
                while let Some(push) = rx.recv().await {
                    match push.kind {
                        PushKind::Disconnection => break,
                        PushKind::Message => {
                            if let Some(Value::BulkString(payload)) = push.data.get(1)
                                && let Some(addr) = switched_to(&sentinel.master, payload)
                            {
                                shared.primary_switched(&addr);
                            }
                        }
                        _ => {}
                    }
                }
                tracing::debug!(sentinel = idx, "sentinel subscription lost; reconnecting");
            }
            Err(e) => {
                tracing::debug!(sentinel = idx, error = %e, "cannot subscribe to sentinel");
            }
        }
        tokio::time::sleep(delay.mul_f64(rand::random_range(0.5..1.5))).await;
        delay = (delay * 2).min(shared.cfg.reconnect_max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_master_announcements_parse() {
        assert_eq!(
            switched_to("herald", b"herald 127.0.0.1 7000 127.0.0.1 7001"),
            Some("127.0.0.1:7001".to_owned())
        );
        assert_eq!(
            switched_to("other", b"herald 127.0.0.1 7000 127.0.0.1 7001"),
            None
        );
        assert_eq!(switched_to("herald", b"herald 127.0.0.1 7000"), None);
        assert_eq!(switched_to("herald", b"herald a 1 b x"), None);
    }
}
