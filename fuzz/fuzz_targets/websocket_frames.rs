//! WebSocket frames and the messages they carry: see `payd::fuzzing::websocket_frames`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| payd::fuzzing::websocket_frames(data));
