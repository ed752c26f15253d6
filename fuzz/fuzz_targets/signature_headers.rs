//! The signature headers: see `payd::fuzzing::signature_headers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::signature_headers(data));
