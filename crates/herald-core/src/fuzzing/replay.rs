//! The committed fuzz corpus, replayed through the harnesses on every `cargo test`: what the
//! fuzzers explored is re-checked in seconds, and a harness change that breaks on an old input
//! fails here first.

use super::{claims, names, patterns, replay, requests, resume};

#[test]
fn names_corpus_holds() {
    replay("names", names::names);
}

#[test]
fn resume_token_corpus_holds() {
    replay("resume_token", resume::resume_token);
}

#[test]
fn publish_corpus_holds() {
    replay("publish", requests::publish);
}

#[test]
fn client_op_corpus_holds() {
    replay("client_op", requests::client_op);
}

#[test]
fn channel_pattern_corpus_holds() {
    replay("channel_pattern", patterns::channel_pattern);
}

#[test]
fn claims_corpus_holds() {
    replay("claims", claims::claims);
}
