//! Defends: The path router: dot segments, encoded separators, malformed escapes never reach a cluster.
//! The checks live in `bcs_proxy::fuzzing::route_match`, which the test suite also replays over
//! fuzz/corpus/route_match on stable Rust.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcs_proxy::fuzzing::route_match(data));
