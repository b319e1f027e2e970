//! libFuzzer entry for the `frames_relay` checks (see src/frames_relay.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::frames_relay(data));
