//! libFuzzer entry for the `firewall` checks (see src/firewall.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::firewall(data));
