//! Defends: The snapshot protocol decoder: oversize frames, malformed JSON, round trips.
//! The checks live in `bcs_proxy::fuzzing::snapshot_frame`, which the test suite also replays over
//! fuzz/corpus/snapshot_frame on stable Rust.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcs_proxy::fuzzing::snapshot_frame(data));
