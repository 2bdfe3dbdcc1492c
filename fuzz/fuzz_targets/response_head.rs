//! Defends: HTTP/1.1 response heads from semi-trusted upstreams: ambiguous framing, bodies on body-less statuses; every
//! field passed on in one copy (`write::field`) is one `write::header` would accept.
//! The checks live in `bcs_proxy::fuzzing::response_head`, which the test suite also replays over
//! fuzz/corpus/response_head on stable Rust.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| bcs_proxy::fuzzing::response_head(data));
