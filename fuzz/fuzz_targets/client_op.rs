//! Target `client_op`: the harness and its properties are `herald_core::fuzzing::requests::client_op`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/client_op/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzzing::requests::client_op(data));
