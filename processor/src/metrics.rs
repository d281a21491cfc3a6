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
/// Counter: CRDT changes written (label `consistency`: local | majority | all).
pub(crate) const CRDT_WRITES: &str = "statehouse_crdt_writes_total";
/// Histogram: bytes of one record on the CRDT broadcast topic (label `kind`: delta |
/// full_state | delete | prune | heartbeat).
pub(crate) const CRDT_RECORD_BYTES: &str = "statehouse_crdt_record_bytes";
/// Counter: CRDT records whose delivery failed (the entity's full state follows).
pub(crate) const CRDT_DELIVERY_FAILURES: &str = "statehouse_crdt_delivery_failures_total";
/// Counter: full CRDT states published after delivery failures.
pub(crate) const CRDT_FULL_STATES: &str = "statehouse_crdt_full_states_total";
/// Counter: departed replicas pruned from entities.
pub(crate) const CRDT_PRUNES: &str = "statehouse_crdt_prunes_total";
/// Gauge: live CRDT replicas of the service, this one included.
pub(crate) const CRDT_LIVE_REPLICAS: &str = "statehouse_crdt_live_replicas";
/// Counter: events of eventing subscriptions turned into commands.
pub(crate) const EVENTING_EVENTS: &str = "statehouse_eventing_events_total";
/// Counter: eventing commands retried after a failure.
pub(crate) const EVENTING_RETRIES: &str = "statehouse_eventing_retries_total";
/// Counter: records published to eventing output topics (entities' in their transaction).
pub(crate) const EVENTING_OUTPUTS: &str = "statehouse_eventing_outputs_total";
