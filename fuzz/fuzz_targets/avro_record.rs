//! `cargo fuzz run avro_record`: see `statehouse_fuzz::avro_record` and `docs/fuzzing.md`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| statehouse_fuzz::avro_record(data));
