//! `cargo fuzz run grpc_frame`: see `statehouse_fuzz::grpc_frame` and `docs/fuzzing.md`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statehouse_fuzz::grpc_frame(data));
