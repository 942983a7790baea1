//! The Herald server: HTTP publish, SSE and WebSocket fan-out, over a pluggable broker.
//!
//! The binary is a thin wrapper around [`build_broker`] and [`run`], which takes a bound listener,
//! the started broker and a shutdown future so tests can start servers on port 0 in-process or as
//! real processes.

pub mod app;
pub mod auth;
pub mod config;
mod conn;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
mod posture;
mod publish;
pub mod publishers;
pub mod rooms;
mod server;
pub mod shutdown;
pub mod tls;
mod transport;

pub use config::{Cli, Config, ConfigError};
pub use server::{Listener, build_broker, run};
