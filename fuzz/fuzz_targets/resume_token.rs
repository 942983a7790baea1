//! Target `resume_token`: the harness and its properties are `herald_core::fuzzing::resume::resume_token`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/resume_token/).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herald_core::fuzzing::resume::resume_token(data));
