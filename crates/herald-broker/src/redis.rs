//! The Redis backbone: offsets, history and idempotency in Redis; live messages over Redis
//! pub/sub (standalone) or sharded pub/sub (Cluster), one subscription per channel per node.
//!
//! Publishing is one Lua script ([`scripts`]); the node's pub/sub connection is kept alive by
//! [`supervisor`]; the [`relay`] task turns backbone messages into in-order, exactly-once sink
//! deliveries, filling gaps from history. Key layout: [`keys`]; payload format: [`codec`].

mod broker;
mod codec;
mod commands;
mod config;
mod keys;
mod probe;
mod pubsub;
mod relay;
mod scripts;
mod stats;
mod supervisor;

pub use broker::RedisBroker;
pub use config::{RedisConfig, validate_url};
pub use stats::{RedisStats, RedisStatsSnapshot};

pub(crate) use broker::Shared;
