//! `cargo fuzz run entity_key`: see `statehouse_fuzz::entity_key` and `docs/fuzzing.md`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statehouse_fuzz::entity_key(data));
