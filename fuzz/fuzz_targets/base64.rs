#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blipserve_api::fuzzing::base64(data));
