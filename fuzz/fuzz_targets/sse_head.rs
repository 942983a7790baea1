//! Target `sse_head`: the harness and its properties are `herald_server::fuzzing::sse_head`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/sse_head/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_server::fuzzing::sse_head(data));
