//! Request/response traffic to Redis (scripts, PING, probe publishes) through a deadpool-redis
//! pool, standalone or Cluster, every call bounded by a deadline.
//!
//! Callers never wait longer than the configured timeout, whether Redis refuses connections,
//! blackholes them, or answers slowly: the whole call (pool checkout included) runs under one
//! `tokio::time::timeout`, and what did not finish in time is reported as `Unavailable`.

use std::time::Duration;

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::{ErrorKind, RedisError, ScriptInvocation, ServerErrorKind, Value};

use super::config::Topology;
use crate::BrokerError;

pub(crate) enum Commands {
    Standalone(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
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
        Ok(match topology {
            Topology::Standalone(url) => {
                let mut cfg = deadpool_redis::Config::from_url(url.clone());
                cfg.pool = Some(pool);
                Self::Standalone(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| internal(&e))?,
                )
            }
            Topology::Cluster(urls) => {
                let mut cfg = deadpool_redis::cluster::Config::from_urls(urls.clone());
                cfg.pool = Some(pool);
                Self::Cluster(
                    cfg.create_pool(Some(Runtime::Tokio1))
                        .map_err(|e| internal(&e))?,
                )
            }
        })
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within `timeout`.
    pub(crate) async fn script(
        &self,
        invocation: &ScriptInvocation<'_>,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        let call = async {
            match self {
                Self::Standalone(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    invocation.invoke_async(&mut conn).await
                }
                Self::Cluster(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    invocation.invoke_async(&mut conn).await
                }
            }
            .map_err(|e: RedisError| classify(&e))
        };
        deadline(timeout, call).await
    }

    /// Runs one command within `timeout`.
    pub(crate) async fn query(
        &self,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<Value, BrokerError> {
        let call = async {
            match self {
                Self::Standalone(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    cmd.query_async::<Value>(&mut conn).await
                }
                Self::Cluster(pool) => {
                    let mut conn = pool.get().await.map_err(pool_error)?;
                    cmd.query_async::<Value>(&mut conn).await
                }
            }
            .map_err(|e| classify(&e))
        };
        deadline(timeout, call).await
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
