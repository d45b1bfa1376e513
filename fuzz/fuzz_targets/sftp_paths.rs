#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| kubedev_agent::fuzzing::sftp_paths(input));
