use bytes::Bytes;

/// One event of an entity's journal, as backed up from the Kafka journal topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRow {
    pub service: String,
    pub entity_id: String,
    /// Sequence number within the entity, from 1.
    pub seq: i64,
    pub type_url: String,
    pub payload: Bytes,
    pub command_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Event time, ms since the epoch.
    pub timestamp_ms: i64,
    pub writer_id: String,
    pub writer_epoch: i64,
    /// The reply the command gave, on the command's last event (for idempotent retries).
    pub reply: Option<(String, Bytes)>,
    /// Where the event is in Kafka.
    pub partition: i32,
    pub offset: i64,
}

/// An immutable snapshot of an entity at `seq` (= the fold of events 1..=seq).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub service: String,
    pub entity_id: String,
    pub seq: i64,
    pub type_url: String,
    pub snapshot: Bytes,
    pub timestamp_ms: i64,
}

/// The current state of a value entity (`None` payload = deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRow {
    pub service: String,
    pub entity_id: String,
    pub seq: i64,
    pub type_url: String,
    pub value: Option<Bytes>,
    pub partition: i32,
    /// Offset of the value record in Kafka: newer offsets always win.
    pub offset: i64,
    /// The whole record (Avro `ValueRecord`, or `ValueDeletion` for a delete), so recovery
    /// gets what the row's columns do not hold (the recent idempotent replies). `None` in rows
    /// written before migration 2.
    pub record: Option<Bytes>,
}

/// The full state of a CRDT entity, as the owner of its broadcast-topic partition backed it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdtRow {
    pub service: String,
    /// The partition of the broadcast topic the entity's records go to.
    pub partition: i32,
    /// `<persistence_id>|<entity_id>`.
    pub entity_key: String,
    pub persistence_id: String,
    pub entity_id: String,
    /// An encoded `statehouse.crdt.v1.State` (`None`: deleted, or no state yet).
    pub state: Option<Bytes>,
    pub deleted: bool,
    /// Replicas pruned from the state.
    pub pruned: Vec<String>,
    /// The state includes every record of the partition before this offset.
    pub offset: i64,
}
