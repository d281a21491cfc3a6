//! Metric names of the processor.

/// Counter: records (journal events, value-entity states and deletes) committed by entities.
pub(crate) const RECORDS_PERSISTED: &str = "statehouse_records_persisted_total";
/// Counter: entity activations (stream opened, history replayed).
pub(crate) const ACTIVATIONS: &str = "statehouse_entity_activations_total";
/// Gauge: active entities.
pub(crate) const ACTIVE_ENTITIES: &str = "statehouse_active_entities";
/// Counter: commands handled (label `outcome`).
pub(crate) const COMMANDS: &str = "statehouse_commands_total";
/// Counter: records backed up to Cassandra.
pub(crate) const BACKUP_RECORDS: &str = "statehouse_backup_records_total";
/// Counter: failed backup rounds.
pub(crate) const BACKUP_FAILURES: &str = "statehouse_backup_failures_total";
/// Gauge: records committed but not yet backed up (last partition reporting).
pub(crate) const BACKUP_LAG_RECORDS: &str = "statehouse_backup_lag_records";
/// Gauge: partitions this processor serves.
pub(crate) const OWNED_PARTITIONS: &str = "statehouse_owned_partitions";
/// Counter: assigned partitions recovered after they stopped being served (label `cause`:
/// takeover-failed | writer-stopped | fenced).
pub(crate) const PARTITION_RECOVERIES: &str = "statehouse_partition_recoveries_total";
/// Counter: action calls (label `shape`: unary | streamed-in | streamed-out | streamed).
pub(crate) const ACTION_CALLS: &str = "statehouse_action_calls_total";
