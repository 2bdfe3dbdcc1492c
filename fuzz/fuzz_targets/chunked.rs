//! Defends: The chunked body decoder on both legs: size overflow, bad CRLF, trailers; whole and byte-by-byte agree.
//! The checks live in `bcs_proxy::fuzzing::chunked`, which the test suite also replays over
//! fuzz/corpus/chunked on stable Rust.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcs_proxy::fuzzing::chunked(data));
