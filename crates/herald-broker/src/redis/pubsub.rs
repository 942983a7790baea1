//! The node's dedicated pub/sub connection: SUBSCRIBE on a standalone server, SSUBSCRIBE over
//! Cluster (one connection per shard, managed by the cluster client), both over RESP3 so that
//! messages arrive as push frames on the same multiplexed connection that confirms the
//! subscribe commands.
//!
//! Every push is tagged with the connection's generation and handed to [`relay::accept`], so
//! a disconnect of the current connection is told from the death rattle of one the supervisor
//! already replaced.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::future::try_join_all;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo};

use super::{Shared, commands::classify, endpoint::Endpoint, relay};
use crate::BrokerError;

#[derive(Clone)]
enum Conn {
    Standalone(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// One generation of the pub/sub connection. Cheap to clone.
#[derive(Clone)]
pub(crate) struct PubSub {
    pub generation: u64,
    /// The server (`host:port`) a standalone or Sentinel connection goes to; empty on Cluster.
    pub addr: String,
    conn: Conn,
    /// Test hook: when set, pushes are discarded, like a connection that silently stopped
    /// delivering. Only the self-probe can notice that.
    muted: Arc<AtomicBool>,
    timeout: Duration,
}

impl PubSub {
    pub(crate) async fn connect(
        endpoint: &Endpoint,
        generation: u64,
        shared: Weak<Shared>,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let muted = Arc::new(AtomicBool::new(false));
        let gate = muted.clone();
        let sender = move |info: PushInfo| {
            if gate.load(Ordering::Relaxed) && info.kind != redis::PushKind::Disconnection {
                return Ok(());
            }
            // Weak: the connection lives in `Shared`; once the broker is gone, pushes are too.
            let shared = shared.upgrade().ok_or(())?;
            relay::accept(&shared, generation, info)
        };
        let unavailable =
            |e: redis::RedisError| BrokerError::Unavailable(format!("redis pub/sub: {e}"));
        let connect = async {
            Ok::<_, BrokerError>(match endpoint.cluster() {
                None => {
                    let config = AsyncConnectionConfig::new()
                        .set_push_sender(sender)
                        .set_connection_timeout(Some(timeout))
                        .set_response_timeout(Some(timeout));
                    let primary = endpoint.primary(&config, true).await.map_err(unavailable)?;
                    (Conn::Standalone(primary.conn), primary.addr)
                }
                Some(builder) => {
                    let client = builder
                        .use_protocol(ProtocolVersion::RESP3)
                        .push_sender(sender)
                        .connection_timeout(timeout)
                        .response_timeout(timeout)
                        .build()
                        .map_err(unavailable)?;
                    let conn = client.get_async_connection().await.map_err(unavailable)?;
                    (Conn::Cluster(conn), String::new())
                }
            })
        };
        let (conn, addr) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| BrokerError::Unavailable("redis pub/sub: connect timed out".into()))??;
        Ok(Self {
            generation,
            addr,
            conn,
            muted,
            timeout,
        })
    }

    /// Subscribes to backbone channels; resolves once Redis confirmed every one of them.
    pub(crate) async fn subscribe(&self, channels: &[String]) -> Result<(), BrokerError> {
        if channels.is_empty() {
            return Ok(());
        }
        let call = async {
            match &self.conn {
                Conn::Standalone(c) => c.clone().subscribe(channels).await,
                // A multi-channel SSUBSCRIBE must stay within one slot: one command per channel.
                Conn::Cluster(c) => try_join_all(channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(ch).await }
                }))
                .await
                .map(drop),
            }
            .map_err(|e| classify(&e))
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| BrokerError::Unavailable("redis pub/sub: subscribe timed out".into()))?
    }

    /// Best effort: a failure leaves a subscription whose messages the relay ignores.
    pub(crate) async fn unsubscribe(&self, channel: &str) {
        let call = async {
            match &self.conn {
                Conn::Standalone(c) => c.clone().unsubscribe(channel).await,
                Conn::Cluster(c) => c.clone().sunsubscribe(channel).await,
            }
        };
        if let Ok(Err(e)) = tokio::time::timeout(self.timeout, call).await {
            tracing::debug!(channel, error = %e, "redis unsubscribe failed");
        }
    }

    pub(crate) fn mute(&self) {
        self.muted.store(true, Ordering::Relaxed);
    }
}
