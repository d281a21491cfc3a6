//! `cargo fuzz run http_json`: see `statehouse_fuzz::http_json` and `docs/fuzzing.md`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statehouse_fuzz::http_json(data));
