//! The Redis backbone: offsets, history and idempotency in Redis; live messages over Redis
//! pub/sub (standalone) or sharded pub/sub (Cluster), one subscription per channel per node.
//!
//! Publishing is one Lua script ([`scripts`]); the node's pub/sub connection is kept alive by
//! [`supervisor`]; the [`relay`] task turns backbone messages into in-order, exactly-once sink
//! deliveries, filling gaps from history. Key layout: [`keys`]; payload format: [`codec`].
//! Every connection comes from the [`endpoint`] (standalone, through [`sentinel`], or Cluster;
//! TLS and credentials), and [`durability`] holds the replication barrier behind
//! `publish_durability = "replicated"`.

mod broker;
mod codec;
mod commands;
mod config;
mod durability;
mod endpoint;
mod hooks;
pub(crate) mod keys;
mod probe;
mod pubsub;
pub(crate) mod refresh;
mod relay;
mod scripts;
mod sentinel;
mod serial;
mod slots;
mod stats;
mod supervisor;
mod url;

pub use broker::RedisBroker;
pub use config::{Durability, RedisConfig, Secret, TlsFiles};
#[doc(hidden)]
pub use hooks::{Gate, Hold};
pub use stats::{RedisStats, RedisStatsSnapshot};
pub use url::{redact_url, validate_url};

pub(crate) use broker::Shared;
pub(crate) use scripts::append_fn;
