#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| meshsync_fuzz::token(data));
