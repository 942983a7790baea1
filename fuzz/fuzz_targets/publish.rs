//! Target `publish`: the harness and its properties are `herald_core::fuzzing::requests::publish`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/publish/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzzing::requests::publish(data));
