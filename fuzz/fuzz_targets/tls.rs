//! libFuzzer entry for the `tls` checks (see src/tls_checks.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| wsedge_fuzz::tls(data));
