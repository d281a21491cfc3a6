//! Statehouse's fuzz targets (`cargo fuzz`, `docs/fuzzing.md`).
//!
//! Every decoder that takes bytes from outside — a client's HTTP/JSON request, gRPC frames and
//! gRPC-Web text, reflection requests, the request fields an entity key is read from, the
//! internal request a router sends a processor — or reads back what is stored — Avro records
//! and CRDT states replayed from Kafka on recovery — has a target here. The properties each
//! target checks live next to the code in the owning crate's `fuzzing` module
//! (`statehouse_gateway::fuzzing`, `statehouse_runtime::fuzzing`,
//! `statehouse_processor::fuzzing`), so no crate-private function has to become public; this
//! crate only names them ([`TARGETS`]).
//!
//! The seed corpus (`fuzz/corpus/<target>/`) holds real inputs made with the project's own
//! encoders (`seeds`, regenerated with `cargo test -p statehouse-fuzz -- --ignored
//! write_seed_corpus`) and every input that once crashed a target. `cargo test` replays all of
//! it through the same functions on the stable toolchain, so a fixed crash stays fixed without
//! libFuzzer.

/// One fuzz target: its name (the `fuzz_targets/<name>.rs` binary and the corpus directory)
/// and the function it runs on every input.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target.
pub const TARGETS: &[Target] = &[
    ("http_json", http_json),
    ("grpc_frame", grpc_frame),
    ("reflection", reflection),
    ("entity_key", entity_key),
    ("internal_request", internal_request),
    ("avro_record", avro_record),
];

/// HTTP/JSON transcoding of the shopping cart's rules (`statehouse_gateway::fuzzing::http_json`).
pub fn http_json(data: &[u8]) {
    statehouse_gateway::fuzzing::http_json(data);
}

/// gRPC frames, the streaming deframer, gRPC-Web text and `grpc-timeout`
/// (`statehouse_gateway::fuzzing::grpc_frame`).
pub fn grpc_frame(data: &[u8]) {
    statehouse_gateway::fuzzing::grpc_frame(data);
}

/// Server-reflection requests, v1 and v1alpha (`statehouse_gateway::fuzzing::reflection`).
pub fn reflection(data: &[u8]) {
    statehouse_gateway::fuzzing::reflection(data);
}

/// Entity-key extraction from a request message, wire scan against full decode
/// (`statehouse_runtime::fuzzing::entity_key`), over the shopping cart's methods.
pub fn entity_key(data: &[u8]) {
    statehouse_runtime::fuzzing::entity_key(
        statehouse_processor::fuzzing::shopping_cart_index(),
        data,
    );
}

/// The processor's internal request decode (`statehouse_processor::fuzzing::internal_request`).
pub fn internal_request(data: &[u8]) {
    statehouse_processor::fuzzing::internal_request(data);
}

/// Avro records, CRDT states and Kafka messages on the replay path
/// (`statehouse_processor::fuzzing::avro_record`).
pub fn avro_record(data: &[u8]) {
    statehouse_processor::fuzzing::avro_record(data);
}

#[cfg(test)]
mod seeds;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::TARGETS;

    fn corpus_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
    }

    /// Every file of every target's corpus (seeds and past crashes) runs through the target's
    /// function without a panic.
    #[test]
    fn corpus_replays_without_a_panic() {
        for (target, run) in TARGETS {
            let dir = corpus_dir(target);
            let mut files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|entry| entry.expect("a corpus entry").path())
                .collect();
            files.sort();
            assert!(!files.is_empty(), "{target}: the corpus is empty");
            for file in files {
                let data = std::fs::read(&file).expect("a corpus file");
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target}: {} panics", file.display());
            }
        }
    }

    /// Writes the seed corpus (`fuzz/corpus/<target>/seed-*`) from real inputs; run it after
    /// changing the seeds: `cargo test -p statehouse-fuzz -- --ignored write_seed_corpus`.
    #[test]
    #[ignore = "writes files into fuzz/corpus"]
    fn write_seed_corpus() {
        for (target, seeds) in super::seeds::all() {
            let dir = corpus_dir(target);
            std::fs::create_dir_all(&dir).expect("the corpus directory");
            for (name, bytes) in seeds {
                std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("a seed");
            }
        }
    }

    /// The seeds are in the corpus and every target has some: a changed seed generator is
    /// noticed.
    #[test]
    fn seeds_are_in_the_corpus() {
        for (target, seeds) in super::seeds::all() {
            assert!(!seeds.is_empty(), "{target} has seeds");
            for (name, bytes) in seeds {
                let path = corpus_dir(target).join(format!("seed-{name}"));
                let stored = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("{}: {e}; run `cargo test -p statehouse-fuzz -- --ignored write_seed_corpus`", path.display())
                });
                assert_eq!(stored, bytes, "{} is stale", path.display());
            }
        }
    }
}
