//! The shared test clients live in herald-testkit.

pub use herald_testkit::clients::*;
