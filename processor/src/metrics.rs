//! Metric names of the processor.

/// Counter: events committed to the journal.
pub(crate) const EVENTS_PERSISTED: &str = "statehouse_events_persisted_total";
/// Counter: entity activations (stream opened, history replayed).
pub(crate) const ACTIVATIONS: &str = "statehouse_entity_activations_total";
/// Gauge: active entities.
pub(crate) const ACTIVE_ENTITIES: &str = "statehouse_active_entities";
/// Counter: commands handled (label `outcome`).
pub(crate) const COMMANDS: &str = "statehouse_commands_total";
/// Counter: events backed up to Cassandra.
pub(crate) const BACKUP_EVENTS: &str = "statehouse_backup_events_total";
/// Counter: failed backup rounds.
pub(crate) const BACKUP_FAILURES: &str = "statehouse_backup_failures_total";
/// Gauge: events committed but not yet backed up (last partition reporting).
pub(crate) const BACKUP_LAG_EVENTS: &str = "statehouse_backup_lag_events";
/// Gauge: partitions this processor serves.
pub(crate) const OWNED_PARTITIONS: &str = "statehouse_owned_partitions";
/// Counter: assigned partitions recovered after they stopped being served (label `cause`:
/// takeover-failed | writer-stopped | fenced).
pub(crate) const PARTITION_RECOVERIES: &str = "statehouse_partition_recoveries_total";
