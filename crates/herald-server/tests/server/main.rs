//! Integration tests: the real `herald` binary on port 0, driven by real SSE and WebSocket
//! clients. One test binary so the suite links once.

mod support;

mod auth;
mod bounds;
mod cli;
mod delivery;
mod failover;
mod http2;
mod input;
mod lifecycle;
mod limits;
mod multinode;
mod origins;
mod poll;
mod publishers;
mod redis_faults;
mod redis_tls;
mod redis_tls_cluster;
mod redis_tls_sentinel;
mod resume;
mod robustness;
mod rooms;
mod tls;
