//! Defends: HTTP/1.1 request heads from untrusted clients: smuggling (CL/TE, bare LF, obs-fold, NUL), limits, upgrade allow-list; every field
//! passed on in one copy (`write::field`) is one `write::header` would accept.
//! The checks live in `bcs_proxy::fuzzing::request_head`, which the test suite also replays over
//! fuzz/corpus/request_head on stable Rust.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcs_proxy::fuzzing::request_head(data));
