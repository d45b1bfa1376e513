#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| agent_image::fuzzing::http_request(input));
