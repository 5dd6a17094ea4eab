#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| blipserve_model::fuzzing::manifest(data));
