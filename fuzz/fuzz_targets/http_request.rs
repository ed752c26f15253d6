//! HTTP request framing, chunked bodies included: see `payd::fuzzing::http_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::http_request(data));
