//! Statehouse's Cassandra / ScyllaDB store — the only crate that uses the `scylla` driver.
//!
//! Kafka is the source of truth; this store is a rebuildable, durable index that bounds
//! recovery time (`ARCHITECTURE.md`, "Backup" and "Backup index"):
//! * [`migrations`] — creates the keyspace and tables, idempotently, recording what ran;
//! * [`Store`] — the journal (rows per `(service, entity_id)` ordered by `seq`), immutable
//!   snapshots (newest first), value-entity state, full CRDT states per broadcast-topic
//!   partition, and per-partition checkpoints ("everything before this offset is in
//!   Cassandra");
//! * erasure — every row of one entity, read and removed (`statehouse admin erase`).
//!
//! Writes are idempotent: a journal row is keyed by `(service, entity_id, seq)`, a snapshot by
//! `(service, entity_id, seq)`; checkpoints and values are written `USING TIMESTAMP <offset>`, so a
//! late write of an older offset can never replace a newer one, whatever the order of arrival.

mod erase;
mod error;
pub mod migrations;
mod options;
pub mod projections;
mod rows;
mod store;

pub use erase::EntityRows;
pub use error::Error;
pub use options::{Options, TlsOptions};
pub use rows::{CrdtRow, JournalRow, SnapshotRow, ValueRow};
pub use store::Store;
