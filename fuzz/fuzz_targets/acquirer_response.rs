//! An acquirer's HTTP response: see `payd::fuzzing::acquirer_response`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::acquirer_response(data));
