#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| kubedev::fuzzing::control_request(input));
