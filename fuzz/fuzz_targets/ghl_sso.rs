#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| whatsnap_fuzz::ghl_sso(data));
