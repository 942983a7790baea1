//! Herald's vocabulary: the types every other crate speaks, and their wire encodings.
//!
//! Nothing in this crate performs IO or depends on a runtime, so the encodings can be unit
//! tested and fuzzed in isolation and reused by the server, the brokers and the load tester.

pub mod auth;
pub mod channel;
pub mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod json;
pub mod message;
pub mod pattern;
pub mod poll;
pub mod protocol;
pub mod room;
pub mod sse;
pub mod token;

pub use channel::{ChannelName, EventName, NameError};
pub use error::ErrorCode;
pub use message::{Epoch, Message, Sender, StreamPosition};
pub use pattern::ChannelPattern;
