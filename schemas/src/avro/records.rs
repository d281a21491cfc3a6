//! The Rust side of the Avro records in `schemas/avro/*.avsc`.
//!
//! Field names match the schema fields (timestamps carry a `_ms` suffix in
//! Rust only: they are `long` `timestamp-millis`, milliseconds since the Unix
//! epoch). Byte fields are [`Bytes`], so encoding borrows and decoding does
//! not copy twice.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cloudstate::crdt::CrdtWriteConsistency;

/// One journaled event (`dev.statehouse.v1.EventRecord`), the value of a
/// journal topic record keyed `<persistence_id>|<entity_id>#<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The Statehouse service that wrote the event.
    pub service: String,
    /// The persistence id of the entity type.
    pub persistence_id: String,
    /// The entity id.
    pub entity_id: String,
    /// Sequence number within the entity, contiguous from 1.
    pub seq: i64,
    /// The event's `Any` type URL.
    pub type_url: String,
    /// The event's `Any` value bytes.
    pub payload: Bytes,
    /// Id of the command that emitted the event.
    pub command_id: Option<String>,
    /// The client's idempotency key of that command.
    pub idempotency_key: Option<String>,
    /// When the event was written, milliseconds since the Unix epoch.
    #[serde(rename = "timestamp")]
    pub timestamp_ms: i64,
    /// Who wrote the event.
    pub writer: Writer,
    /// A snapshot of the state at `seq`, persisted atomically with the event.
    /// (Schema version 2; `None` when read from version 1.)
    pub snapshot: Option<Snapshot>,
    /// W3C trace context of the command. (Schema version 2.)
    pub traceparent: Option<String>,
    /// The reply the command gave its client, on the command's last event, so an idempotent
    /// retry gets the original reply after a restart. (Schema version 2.)
    pub reply: Option<Reply>,
}

/// A command's reply to its client (`dev.statehouse.v1.Reply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The reply's `Any` type URL.
    pub type_url: String,
    /// The reply message bytes.
    pub payload: Bytes,
}

/// The partition owner that wrote a record (`dev.statehouse.v1.Writer`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Writer {
    /// Id of the processor instance.
    pub processor_id: String,
    /// The owner's epoch for the partition.
    pub epoch: i64,
}

/// A snapshot of an entity's state (`dev.statehouse.v1.Snapshot`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The snapshot's `Any` type URL.
    pub type_url: String,
    /// The snapshot's `Any` value bytes.
    pub payload: Bytes,
}

/// The state of a value entity (`dev.statehouse.v1.ValueRecord`), the value
/// of a values topic record keyed `<persistence_id>|<entity_id>`. A delete is a
/// tombstone whose `statehouse-deletion` header holds a [`ValueDeletion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueRecord {
    /// The Statehouse service that wrote the state.
    pub service: String,
    /// The persistence id of the entity type.
    pub persistence_id: String,
    /// The entity id.
    pub entity_id: String,
    /// Version of the state, from 1, +1 per write (continuing after a delete).
    pub seq: i64,
    /// The state's `Any` type URL.
    pub type_url: String,
    /// The state's `Any` value bytes.
    pub payload: Bytes,
    /// Id of the command that wrote the state.
    pub command_id: Option<String>,
    /// The client's idempotency key of that command.
    pub idempotency_key: Option<String>,
    /// When the state was written, milliseconds since the Unix epoch.
    #[serde(rename = "timestamp")]
    pub timestamp_ms: i64,
    /// Who wrote the state.
    pub writer: Writer,
    /// The replies of the most recent state-changing commands that carried an
    /// idempotency key, oldest first, this one last (bounded). (Schema version 2;
    /// empty when read from version 1.)
    pub recent: Vec<RecentReply>,
    /// W3C trace context of the command. (Schema version 2.)
    pub traceparent: Option<String>,
}

/// The reply of a recent state-changing command with an idempotency key
/// (`dev.statehouse.v1.RecentReply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentReply {
    /// The client's idempotency key.
    pub idempotency_key: String,
    /// The reply message; `None` when the command replied without one.
    pub reply: Option<Reply>,
}

/// What deleted a value entity (`dev.statehouse.v1.ValueDeletion`): the
/// `statehouse-deletion` header of the tombstone a delete writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueDeletion {
    /// The Statehouse service that deleted the state.
    pub service: String,
    /// The persistence id of the entity type.
    pub persistence_id: String,
    /// The entity id.
    pub entity_id: String,
    /// Version of the entity after the delete.
    pub seq: i64,
    /// Id of the command that deleted the state.
    pub command_id: Option<String>,
    /// The client's idempotency key of that command.
    pub idempotency_key: Option<String>,
    /// When the state was deleted, milliseconds since the Unix epoch.
    #[serde(rename = "timestamp")]
    pub timestamp_ms: i64,
    /// Who deleted the state.
    pub writer: Writer,
    /// As [`ValueRecord::recent`], this delete last.
    pub recent: Vec<RecentReply>,
    /// W3C trace context of the command.
    pub traceparent: Option<String>,
}

/// A record of the CRDT broadcast topic (`dev.statehouse.v1.CrdtDeltaRecord`), keyed
/// `<entity_id>` (heartbeats: `~heartbeat/<replica_id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrdtDeltaRecord {
    /// The Statehouse service.
    pub service: String,
    /// The persistence id of the entity type (empty for heartbeats).
    pub persistence_id: String,
    /// The entity id (empty for heartbeats).
    pub entity_id: String,
    /// The replica that wrote the record.
    pub replica_id: String,
    /// Version 1 only: a protocol delta. Empty from version 2 on.
    pub delta: Bytes,
    /// The entity was deleted (kind [`CrdtRecordKind::Delete`]).
    pub deleted: bool,
    /// The write consistency of the command that made the change.
    pub write_consistency: WriteConsistency,
    /// When the record was written, milliseconds since the Unix epoch.
    #[serde(rename = "timestamp")]
    pub timestamp_ms: i64,
    /// What the record says.
    pub kind: CrdtRecordKind,
    /// Per replica, from 1.
    pub sequence: i64,
    /// DELTA and FULL_STATE: an encoded `statehouse.crdt.v1.State` (canonical).
    pub state: Bytes,
    /// PRUNE: the departed replica.
    pub pruned_replica: Option<String>,
    /// HEARTBEAT: per partition, the next offset the replica will read.
    pub applied: Vec<AppliedOffset>,
    /// W3C trace context of the command that made the change.
    pub traceparent: Option<String>,
}

/// What a [`CrdtDeltaRecord`] says (`dev.statehouse.v1.CrdtRecordKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CrdtRecordKind {
    /// A state fragment to join.
    #[default]
    Delta,
    /// The replica's whole state of the entity.
    FullState,
    /// The entity is deleted for good.
    Delete,
    /// `pruned_replica` departed: fold what it counted, drop its votes.
    Prune,
    /// The replica is alive, and how far it has read.
    Heartbeat,
}

/// How far a replica has applied one partition of the CRDT topic
/// (`dev.statehouse.v1.AppliedOffset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AppliedOffset {
    pub partition: i32,
    /// The next offset the replica will read.
    pub offset: i64,
}

/// CRDT write consistency (`dev.statehouse.v1.WriteConsistency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WriteConsistency {
    /// Reply after the local merge.
    #[default]
    Local,
    /// Reply once a majority would see it (Statehouse: Kafka acknowledged).
    Majority,
    /// Reply once all would see it (Statehouse: Kafka acknowledged).
    All,
}

impl From<CrdtWriteConsistency> for WriteConsistency {
    fn from(value: CrdtWriteConsistency) -> Self {
        match value {
            CrdtWriteConsistency::Local => Self::Local,
            CrdtWriteConsistency::Majority => Self::Majority,
            CrdtWriteConsistency::All => Self::All,
        }
    }
}

impl From<WriteConsistency> for CrdtWriteConsistency {
    fn from(value: WriteConsistency) -> Self {
        match value {
            WriteConsistency::Local => Self::Local,
            WriteConsistency::Majority => Self::Majority,
            WriteConsistency::All => Self::All,
        }
    }
}

/// A service as discovered from its user function
/// (`dev.statehouse.v1.ServiceRecord`), keyed by service name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// The Statehouse service name.
    pub service: String,
    /// The user function's encoded `google.protobuf.FileDescriptorSet`.
    pub descriptor_set: Bytes,
    /// The entities and actions of the service.
    pub entities: Vec<Entity>,
    /// The processors known to serve the service.
    pub processors: Vec<Processor>,
    /// Cloudstate protocol major version the user function reported.
    pub protocol_major: i32,
    /// Cloudstate protocol minor version the user function reported.
    pub protocol_minor: i32,
    /// The user function's SDK name.
    pub support_library_name: String,
    /// The user function's SDK version.
    pub support_library_version: String,
    /// When the record was written, milliseconds since the Unix epoch.
    #[serde(rename = "updated_at")]
    pub updated_at_ms: i64,
}

/// One entity or action of a service (`dev.statehouse.v1.Entity`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The protocol service full name, e.g. `cloudstate.eventsourced.EventSourced`.
    pub entity_type: String,
    /// The user's fully qualified gRPC service.
    pub service_name: String,
    /// The persistence id of the entity type.
    pub persistence_id: String,
    /// Idle time before passivation; `None` = the processor's default.
    pub passivation_timeout_ms: Option<i64>,
}

/// A processor instance of a service (`dev.statehouse.v1.Processor`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Processor {
    /// Id of the processor instance.
    pub processor_id: String,
    /// Its internal gRPC endpoint.
    pub endpoint: String,
}

/// The owner of one partition (`dev.statehouse.v1.RoutingRecord`), keyed
/// `<service>/<partition>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoutingRecord {
    /// The Statehouse service.
    pub service: String,
    /// The partition.
    pub partition: i32,
    /// Id of the owning processor instance.
    pub owner_processor_id: String,
    /// The owner's internal gRPC endpoint.
    pub owner_endpoint: String,
    /// The owner's epoch; increases on every takeover.
    pub epoch: i64,
    /// When the record was written, milliseconds since the Unix epoch.
    #[serde(rename = "updated_at")]
    pub updated_at_ms: i64,
}
