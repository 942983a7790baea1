//! Target `claims`: the harness and its properties are `herald_core::fuzzing::claims::claims`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/claims/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzzing::claims::claims(data));
