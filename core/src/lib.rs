//! Statehouse core: the vocabulary every other crate shares, with no I/O.
//!
//! * [`partitioner`] — Kafka's default partitioner (murmur2), so Statehouse and any plain Kafka
//!   producer keyed by entity id agree on the partition of an entity.
//! * [`topics`] — the names of a service's topics, transactional ids and consumer groups.
//! * [`ids`] — validated service names and entity ids, and journal record keys.
//! * [`semconv`] — tracing span and field names, one place for all crates.
//! * [`metadata`] — the names of the metadata entries Statehouse sets on commands (verified
//!   JWT claims).

pub mod ids;
pub mod metadata;
pub mod partitioner;
pub mod semconv;
pub mod topics;

pub use ids::{EntityId, ServiceName};
pub use partitioner::partition_for;
pub use topics::Topics;
