//! `cargo fuzz run reflection`: see `statehouse_fuzz::reflection` and `docs/fuzzing.md`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statehouse_fuzz::reflection(data));
