//! Target `names`: the harness and its properties are `herald_core::fuzzing::names::names`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/names/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzzing::names::names(data));
