//! Target `channel_pattern`: the harness and its properties are
//! `herald_core::fuzzing::patterns::channel_pattern`, which `cargo test` also runs over the
//! committed corpus (fuzz/corpus/channel_pattern/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzzing::patterns::channel_pattern(data));
