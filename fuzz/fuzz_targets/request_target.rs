//! A request target, as the routes read it: see `payd::fuzzing::request_target`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::request_target(data));
