//! libFuzzer entry for the `wire` checks (see src/wire.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::wire(data));
