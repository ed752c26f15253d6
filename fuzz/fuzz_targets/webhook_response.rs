//! A webhook receiver's HTTP response: see `payd::fuzzing::webhook_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::webhook_response(data));
