//! Recovery of a shard from arbitrary segment files: see `payd::fuzzing::wal_recovery`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::wal_recovery(data));
