//! Request/response traffic to Redis (scripts, PING, probe publishes), standalone, through
//! Sentinel or Cluster, every call bounded by the configured timeout (`redis_timeout`).
//!
//! The bound holds whether Redis refuses connections, blackholes them, or answers slowly: the
//! whole call (connecting included) runs under one `tokio::time::timeout`, and the client's own
//! connection timeout is set to the same value, so it is this setting, not a library default,
//! that decides when a slow Redis counts as unavailable. A standalone connection has no response
//! timeout of its own (`None`, not the library's 500 ms): it would fire after ours anyway (same
//! value, started later) and cost a second timer per call; Cluster's is set to the same value.
//!
//! Every call shares one multiplexed connection (many requests in flight, pipelined on one
//! socket), made on first use by the [`Endpoint`] (which asks Sentinel for the primary). A call
//! that fails for connection reasons, times out, or is answered `READONLY` (the server was
//! demoted to a replica) drops it so the next call makes a fresh one; connecting is
//! single-flight, so an unreachable Redis costs one connection attempt at a time rather than one
//! per waiting call.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use redis::{
    AsyncConnectionConfig, ErrorKind, RedisError, ScriptInvocation, ServerErrorKind, Value,
};

use super::endpoint::Endpoint;
use crate::BrokerError;

pub(crate) struct Commands {
    endpoint: Arc<Endpoint>,
    /// Connect and response timeout of new connections.
    timeout: Duration,
    /// The connection every call shares and the server it goes to (`host:port`; empty on
    /// Cluster); `None` until first use and after a failure.
    shared: parking_lot::Mutex<Option<(Shared, Server)>>,
    /// Held while connecting.
    connecting: tokio::sync::Mutex<()>,
    /// Bumped whenever the shared connection is dropped: what a script did on an earlier
    /// connection may be gone (a failover), see `refresh`.
    generation: AtomicU64,
}

/// The server a command ran on, so a replication barrier can tell whether it covers the write.
pub(crate) type Server = Arc<str>;

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

fn connect_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis connection: {e}"))
}

impl Commands {
    pub(crate) fn new(endpoint: Arc<Endpoint>, timeout: Duration) -> Self {
        Self {
            endpoint,
            timeout,
            shared: parking_lot::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.endpoint.is_cluster()
    }

    /// The shared connection, connecting when there is none.
    async fn connection(&self) -> Result<(Shared, Server), BrokerError> {
        if let Some(conn) = self.shared.lock().clone() {
            return Ok(conn);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.shared.lock().clone() {
            return Ok(conn); // made by the call we waited for
        }
        let conn = match self.endpoint.cluster() {
            Some(builder) => (
                Shared::Cluster(
                    builder
                        .connection_timeout(self.timeout)
                        .response_timeout(self.timeout)
                        .build()
                        .map_err(|e| BrokerError::Internal(format!("redis cluster client: {e}")))?
                        .get_async_connection()
                        .await
                        .map_err(connect_error)?,
                ),
                Server::from(""),
            ),
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(None);
                let primary = self
                    .endpoint
                    .primary(&config, false)
                    .await
                    .map_err(connect_error)?;
                (Shared::Standalone(primary.conn), Server::from(primary.addr))
            }
        };
        *self.shared.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the shared connection (the primary changed): the next call connects again.
    pub(crate) fn reset(&self) {
        self.drop_shared();
    }

    fn drop_shared(&self) {
        *self.shared.lock() = None;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes whenever the shared connection is dropped. Read it before a call: a call's
    /// effects are known to be on the current server only while it has not changed.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Drops the shared connection after `result` failed for a reason a new connection may fix.
    fn check<T>(&self, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if matches!(result, Err(BrokerError::Unavailable(_))) {
            self.drop_shared();
        }
        result
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within `timeout`; also says on which
    /// server it ran.
    pub(crate) async fn script(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<(Value, Server), BrokerError> {
        let call = async {
            let (conn, server) = self.connection().await?;
            match conn {
                Shared::Standalone(mut conn) => invocation.invoke_async(&mut conn).await,
                Shared::Cluster(mut conn) => invocation.invoke_async(&mut conn).await,
            }
            .map(|v| (v, server))
            .map_err(|e: RedisError| classify(&e))
        };
        self.check(deadline(timeout, call).await)
    }

    /// Runs a prebuilt `EVALSHA` of `script` (hash, key count, keys, args: what
    /// `ScriptInvocation` would build, without its copy of every argument) within `timeout`,
    /// loading the script on NOSCRIPT like `invoke_async` does; also says on which server it ran.
    pub(crate) async fn evalsha(
        &self,
        script: &redis::Script,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<(Value, Server), BrokerError> {
        let call = async {
            let (conn, server) = self.connection().await?;
            match conn {
                Shared::Standalone(mut conn) => evalsha_on(&mut conn, script, cmd).await,
                Shared::Cluster(mut conn) => evalsha_on(&mut conn, script, cmd).await,
            }
            .map(|v| (v, server))
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
            match self.connection().await?.0 {
                Shared::Standalone(mut conn) => cmd.query_async::<Value>(&mut conn).await,
                Shared::Cluster(mut conn) => cmd.query_async::<Value>(&mut conn).await,
            }
            .map_err(|e| classify(&e))
        };
        self.check(deadline(timeout, call).await)
    }
}

async fn evalsha_on(
    conn: &mut impl redis::aio::ConnectionLike,
    script: &redis::Script,
    cmd: &redis::Cmd,
) -> Result<Value, RedisError> {
    match cmd.query_async::<Value>(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
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
