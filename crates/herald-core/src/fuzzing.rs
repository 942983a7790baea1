//! Fuzz harnesses: one function per cargo-fuzz target under `fuzz/`, asserting what must hold
//! for any input, not only that nothing panics.
//!
//! The targets in `fuzz/fuzz_targets/` are one-line calls into this module, and the tests in
//! [`replay`] run the committed corpus (`fuzz/corpus/<target>/`) through the same functions, so
//! the fuzzer and `cargo test` check the same properties and cannot drift apart. Compiled only
//! for tests and with the `fuzzing` feature (which the fuzz crate enables).

pub mod claims;
pub mod names;
pub mod patterns;
pub mod requests;
pub mod resume;
pub mod rooms;
pub mod wire;

#[cfg(test)]
mod framing_props;
#[cfg(test)]
mod replay;
#[cfg(test)]
pub(crate) mod strategies;

use std::path::PathBuf;

use crate::protocol::Limits;

/// Limits small enough for short fuzz inputs to reach every "too long / too large" branch.
pub const LIMITS: Limits = Limits {
    max_channel_len: 48,
    max_message_bytes: 256,
    max_broadcast_channels: 4,
};

/// The committed corpus of one fuzz target: `fuzz/corpus/<target>/` at the repository top.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

/// Runs every file of `target`'s corpus through `harness` (the function its fuzz target calls)
/// and returns how many there were. A failing input is named in the panic message, so it can be
/// replayed with `cargo +nightly fuzz run <target> <file>`.
pub fn replay(target: &str, harness: fn(&[u8])) -> usize {
    let dir = corpus_dir(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} is missing: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let input = std::fs::read(&path).expect("corpus file");
        if std::panic::catch_unwind(|| harness(&input)).is_err() {
            panic!("fuzz input {} fails its harness", path.display());
        }
        count += 1;
    }
    assert!(count > 0, "corpus {} is empty", dir.display());
    count
}

/// `data` as text: valid UTF-8 as is, anything else lossily (every target also sees the raw
/// bytes where the real entry point takes bytes).
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}
