//! The create body, parsed and validated: see `payd::fuzzing::create_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::create_body(data));
