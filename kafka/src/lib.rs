//! Statehouse's Kafka layer — the only crate that configures rdkafka.
//!
//! * [`Options`] — typed client options plus a librdkafka passthrough map; builds the producer,
//!   consumer and admin configurations every other part uses (so the safety settings —
//!   idempotence, `acks=all`, `read_committed` — cannot be forgotten or overridden).
//! * [`admin`] — creates a service's topics with their policies, idempotently
//!   (`ARCHITECTURE.md`, "Topics of a service").
//! * [`partition_writer`] — the fenced, transactional writer of one partition, with group commit.
//! * [`ownership`] — partition ownership through the service's consumer group.
//! * [`publisher`] — idempotent publishing of registry and routing records.
//! * [`broadcast`] — the producer of a CRDT broadcast topic (queue now, learn the delivery later).
//! * [`group`] — a consumer-group member that commits what its owner says is done (eventing,
//!   projections).
//! * [`reader`] — reads a partition to its end with `read_committed` (recovery, checkers, tests).
//! * [`ends`] — the last stable offset and high watermark of partitions (the hanging-transaction
//!   gauge).
//! * [`diagnose`] — librdkafka's own reason when the brokers cannot be reached (a refused
//!   login, a failed handshake), which a bare transport failure hides.
//! * The partitioner itself is Kafka's murmur2 in `statehouse_core::partitioner`.

pub mod admin;
pub mod broadcast;
mod context;
pub mod diagnose;
pub mod ends;
mod error;
pub mod group;
pub mod headers;
pub mod metrics;
mod options;
pub mod ownership;
pub mod partition_writer;
pub mod publisher;
pub mod reader;

pub use error::Error;
pub use options::{BATCH_OVERHEAD_BYTES, DEFAULT_MAX_RECORD_BYTES, Options, WriterOptions};
