//! `cargo fuzz run internal_request`: see `statehouse_fuzz::internal_request` and `docs/fuzzing.md`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statehouse_fuzz::internal_request(data));
