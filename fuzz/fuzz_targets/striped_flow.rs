#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| kubedev_protocol::fuzzing::striped_flow(input));
