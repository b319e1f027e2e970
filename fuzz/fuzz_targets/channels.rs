//! libFuzzer entry for the `channels` checks (see src/channels.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::channels(data));
