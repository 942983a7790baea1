//! Subscriber authorization, the pure part: token claims (their channel patterns are
//! [`crate::pattern`]), and the namespace rules that decide who may read or publish what. Verifying signatures is the server's job;
//! everything here works on already-verified data, so it can be unit tested and fuzzed.

pub mod access;
pub mod claims;

pub use access::{
    ClientPublish, DEFAULT_NAMESPACE, Decision, Rules, can_publish, can_read, namespace_of,
};
pub use claims::{Claims, ClaimsError, PatternSet, TimeError};
