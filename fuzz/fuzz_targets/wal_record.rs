//! Log record framing and every payload decoder: see `payd::fuzzing::wal_record`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::wal_record(data));
