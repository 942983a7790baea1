//! Request/response traffic to Redis (scripts, PING, probe publishes) through a deadpool-redis
//! pool, standalone or Cluster, every call bounded by a deadline.
//!
//! Callers never wait longer than the configured timeout, whether Redis refuses connections,
//! blackholes them, or answers slowly: the whole call (pool checkout included) runs under one
//! `tokio::time::timeout`, and what did not finish in time is reported as `Unavailable`.
//!
//! The pool is used as a connection factory: every connection it makes is multiplexed (many
//! requests in flight, pipelined on one socket), so one connection taken out of the pool is
//! shared by all callers. Checking a connection out per call would cost deadpool's recycle check
//! (an UNWATCH + PING round trip) on every publish. A call that fails for connection reasons, or
//! times out, drops the shared connection so the next call takes a fresh one.

use std::time::Duration;

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::{ErrorKind, RedisError, ScriptInvocation, ServerErrorKind, Value};

use super::config::Topology;
use crate::BrokerError;

pub(crate) struct Commands {
    pool: Pool,
    /// The connection every call shares; `None` until first use and after a failure.
    shared: parking_lot::Mutex<Option<Shared>>,
}

enum Pool {
    Standalone(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

/// A multiplexed connection; cloning is cheap and clones share the socket.
#[derive(Clone)]
enum Shared {
    Standalone(redis::aio::MultiplexedConnection),
    Cluster(deadpool_redis::cluster::ClusterConnection),
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

fn pool_error(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("redis connection: {e}"))
}

impl Commands {
    pub(crate) fn new(
        topology: &Topology,
        size: usize,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let pool = PoolConfig {
            max_size: size.max(1),
            timeouts: Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
            ..PoolConfig::default()
        };
        let internal =
            |e: &dyn std::fmt::Display| BrokerError::Internal(format!("redis pool: {e}"));
        let pool = match topology {
            Topology::Standalone(url) => {
                let mut cfg = deadpool_redis::Config::from_url(url.clone());
                cfg.pool = Some(pool);
                Pool::Standalone(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| internal(&e))?,
                )
            }
            Topology::Cluster(urls) => {
                let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
                cfg.pool = Some(pool);
                Pool::Cluster(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| internal(&e))?,
                )
            }
        };
        Ok(Self {
            pool,
            shared: parking_lot::Mutex::new(None),
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.pool, Pool::Cluster(_))
    }

    /// The shared connection, taking one from the pool when there is none.
    async fn connection(&self) -> Result<Shared, BrokerError> {
        if let Some(conn) = self.shared.lock().clone() {
            return Ok(conn);
        }
        let conn = match &self.pool {
            Pool::Standalone(pool) => Shared::Standalone(deadpool_redis::Connection::take(
                pool.get().await.map_err(pool_error)?,
            )),
            Pool::Cluster(pool) => Shared::Cluster(deadpool_redis::cluster::Connection::take(
                pool.get().await.map_err(pool_error)?,
            )),
        };
        // Two callers may race here; both connections work, the last one stays shared.
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
