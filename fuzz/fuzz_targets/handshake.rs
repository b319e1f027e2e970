//! libFuzzer entry for the `handshake` checks (see src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::handshake(data));
