//! The broker: where messages get their offsets, where history lives, and how live messages
//! reach every node that has subscribers.
//!
//! The server talks only to the [`Broker`] trait. [`MemoryBroker`] is the embedded single-node
//! default; [`RedisBroker`] (standalone Redis or Redis Cluster) sits behind the same trait for
//! multi-node deployments.

mod broker;
pub mod memory;
pub mod presence;
pub mod redis;

pub use broker::{Broker, BrokerError, History, HistoryQuery, Published, Retention, Sink, Start};
pub use memory::{MemoryBroker, MemoryConfig, MemoryStats};
pub use presence::{Presence, RoomPolicy, RoomsConfig};
pub use redis::{
    Durability, RedisBroker, RedisConfig, RedisStats, RedisStatsSnapshot, Secret, TlsFiles,
};
#[doc(hidden)]
pub use redis::{Gate, Hold};

/// Unix time in microseconds (for `Message::published_at_us`).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
