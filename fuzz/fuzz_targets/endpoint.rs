//! libFuzzer entry for the `endpoint` checks (see src/endpoint.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::endpoint(data));
