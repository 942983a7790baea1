//! Request/response traffic to Redis (scripts, PING, probe publishes), standalone or Cluster,
//! every call bounded by the configured timeout (`redis_timeout`).
//!
//! The bound holds whether Redis refuses connections, blackholes them, or answers slowly: the
//! whole call (connecting included) runs under one `tokio::time::timeout`, and the client's own
//! connection and response timeouts are set to the same value, so it is this setting, not a
//! library default, that decides when a slow Redis counts as unavailable.
//!
//! Every call shares one multiplexed connection (many requests in flight, pipelined on one
//! socket), made on first use. A call that fails for connection reasons, or times out, drops
//! it so the next call makes a fresh one; connecting is single-flight, so an unreachable Redis
//! costs one connection attempt at a time rather than one per waiting call.

use std::time::Duration;

use redis::{
    AsyncConnectionConfig, ErrorKind, RedisError, ScriptInvocation, ServerErrorKind, Value,
};

use super::config::Topology;
use crate::BrokerError;

pub(crate) struct Commands {
    topology: Topology,
    timeout: Duration,
    /// The connection every call shares; `None` until first use and after a failure.
    shared: parking_lot::Mutex<Option<Shared>>,
    /// Held while connecting.
    connecting: tokio::sync::Mutex<()>,
}

/// A multiplexed connection; cloning is cheap and clones share the socket.
#[derive(Clone)]
enum Shared {
    Standalone(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Turns a Redis error into the broker's vocabulary: what a retry may fix is `Unavailable`.
pub(crate) fn classify(e: &RedisError) -> BrokerError {
    match e.kind() {
        ErrorKind::Server(
            ServerErrorKind::ResponseError | ServerErrorKind::NoPerm | ServerErrorKind::CrossSlot,
        ) => BrokerError::Internal(format!("redis: {e}")),
        _ => BrokerError::Unavailable(format!("redis: {e}")),
    }
}

impl Commands {
    pub(crate) fn new(topology: &Topology, timeout: Duration) -> Self {
        Self {
            topology: topology.clone(),
            timeout,
            shared: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster(_))
    }

    /// The shared connection, connecting when there is none.
    async fn connection(&self) -> Result<Shared, BrokerError> {
        if let Some(conn) = self.shared.lock().clone() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.shared.lock().clone() {
            return Ok(conn); // made by the call we waited for
        }
        let unavailable =
            |e: RedisError| BrokerError::Unavailable(format!("redis connection: {e}"));
        let conn = match &self.topology {
            Topology::Standalone(url) => {
                let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                Shared::Standalone(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(unavailable)?,
                )
            }
            Topology::Cluster(urls) => {
                let client = redis::cluster::ClusterClientBuilder::new(urls.clone())
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .build()
                    .map_err(unavailable)?;
                Shared::Cluster(client.get_async_connection().await.map_err(unavailable)?)
            }
        };
        *self.shared.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the shared connection after `result` failed for a reason a new connection may fix.
    fn check<T>(&self, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if matches!(result, Err(BrokerError::Unavailable(_))) {
            *self.shared.lock() = None;
        }
        result
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within `timeout`.
    pub(crate) async fn script(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        let call = async {
            match self.connection().await? {
                Shared::Standalone(mut conn) => invocation.invoke_async(&mut conn).await,
                Shared::Cluster(mut conn) => invocation.invoke_async(&mut conn).await,
            }
            .map_err(|e: RedisError| classify(&e))
        };
        self.check(deadline(timeout, call).await)
    }

    /// Runs one command within `timeout`.
    pub(crate) async fn query(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        let call = async {
            match self.connection().await? {
                Shared::Standalone(mut conn) => cmd.query_async::<Value>(&mut conn).await,
                Shared::Cluster(mut conn) => cmd.query_async::<Value>(&mut conn).await,
            }
            .map_err(|e| classify(&e))
        };
        self.check(deadline(timeout, call).await)
    }
}

async fn deadline<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, BrokerError>>,
) -> Result<T, BrokerError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(BrokerError::Unavailable(format!(
                "redis did not answer within {timeout:?}"
            )))
        })
}
