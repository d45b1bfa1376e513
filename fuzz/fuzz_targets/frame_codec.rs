#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| kubedev_protocol::fuzzing::frame_codec(input));
