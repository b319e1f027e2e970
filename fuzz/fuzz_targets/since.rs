//! libFuzzer entry for the `since` checks (see src/since.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::since(data));
