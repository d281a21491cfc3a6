//! Metric names of the processor (Prometheus, via the `metrics` facade), and the gauges that
//! several places keep. The table of every Statehouse metric, its labels and the role that
//! exports it is `docs/metrics.md`.

use std::time::Instant;

/// Counter: records (journal events, value-entity states and deletes) committed by entities.
pub(crate) const RECORDS_PERSISTED: &str = "statehouse_records_persisted_total";
/// Counter: commands refused because a record they would write exceeds
/// `kafka.max-record-bytes` (nothing of them was written).
pub(crate) const RECORDS_REFUSED: &str = "statehouse_records_refused_total";
/// Counter: records of the journal or values topic that did not decode when a partition was
/// recovered, skipped and quarantined (label `topic`: journal | values); their entity refuses
/// commands until an operator resolves it (`docs/runbooks.md`).
pub(crate) const RECORDS_QUARANTINED: &str = "statehouse_records_quarantined_total";
/// Counter: entity activations (stream opened, history replayed).
pub(crate) const ACTIVATIONS: &str = "statehouse_entity_activations_total";
/// Gauge: active entities.
pub(crate) const ACTIVE_ENTITIES: &str = "statehouse_active_entities";
/// Counter: commands handled (label `outcome`: ok | failure | error).
pub(crate) const COMMANDS: &str = "statehouse_commands_total";
/// Counter: records backed up to Cassandra.
pub(crate) const BACKUP_RECORDS: &str = "statehouse_backup_records_total";
/// Counter: failed backup rounds.
pub(crate) const BACKUP_FAILURES: &str = "statehouse_backup_failures_total";
/// Gauge: records committed but not yet backed up (label `partition`).
pub(crate) const BACKUP_LAG_RECORDS: &str = "statehouse_backup_lag_records";
/// Gauge: seconds the partition's backup checkpoint has not advanced while records waited for
/// it (label `partition`); 0 while nothing waits.
pub(crate) const BACKUP_CHECKPOINT_AGE: &str = "statehouse_backup_checkpoint_age_seconds";
/// Gauge: partitions of the service's journal topic (label `service`).
pub(crate) const SERVICE_PARTITIONS: &str = "statehouse_service_partitions";
/// Gauge: partitions the ownership group assigned to this processor (label `service`).
pub(crate) const PARTITIONS_OWNED: &str = "statehouse_partitions_owned";
/// Gauge: owned partitions that serve: taken over, writer running, ownership lease held
/// (label `service`).
pub(crate) const PARTITIONS_SERVING: &str = "statehouse_partitions_serving";
/// Gauge: owned partitions being taken over or repaired (label `service`).
pub(crate) const PARTITIONS_RECOVERING: &str = "statehouse_partitions_recovering";
/// Counter: assigned partitions recovered after they stopped being served (label `cause`:
/// takeover-failed | writer-stopped | fenced).
pub(crate) const PARTITION_RECOVERIES: &str = "statehouse_partition_recoveries_total";
/// Gauge: seconds the last stable offset of an owned partition has not moved while its high
/// watermark is above it — a transaction open that long (labels `topic`: journal | values,
/// `partition`); 0 when the two meet or the offset moves.
pub(crate) const LSO_STUCK: &str = "statehouse_partition_lso_stuck_seconds";
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

/// Describe the processor's metrics (the Kafka layer's and the router's too) and export every
/// counter and gauge at 0, so a fresh processor of `service` (with `partitions` partitions)
/// shows them all before anything happened. Histograms appear with their first sample.
pub(crate) fn describe(service: &str, partitions: u32) {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    statehouse_runtime::admin_server::prometheus();
    statehouse_kafka::metrics::describe();
    statehouse_runtime::metrics::describe();
    // (name, help, label key, its values): every label value is exported at 0.
    let counters: [(&str, &str, &str, &[&str]); 16] = [
        (RECORDS_PERSISTED, "Records committed by entities.", "", &[]),
        (
            RECORDS_REFUSED,
            "Commands refused because their record exceeds kafka.max-record-bytes.",
            "",
            &[],
        ),
        (
            RECORDS_QUARANTINED,
            "Records that did not decode on recovery, skipped and quarantined, by topic.",
            "topic",
            &["journal", "values"],
        ),
        (ACTIVATIONS, "Entity activations.", "", &[]),
        (
            COMMANDS,
            "Commands handled, by outcome.",
            "outcome",
            &["ok", "failure", "error"],
        ),
        (BACKUP_RECORDS, "Records backed up to Cassandra.", "", &[]),
        (BACKUP_FAILURES, "Failed backup rounds.", "", &[]),
        (
            PARTITION_RECOVERIES,
            "Assigned partitions recovered after they stopped being served, by cause.",
            "cause",
            &["takeover-failed", "writer-stopped", "fenced"],
        ),
        (
            ACTION_CALLS,
            "Action calls, by shape.",
            "shape",
            &["unary", "streamed-in", "streamed-out", "streamed"],
        ),
        (
            CRDT_WRITES,
            "CRDT changes written, by write consistency.",
            "consistency",
            &["local", "majority", "all"],
        ),
        (
            CRDT_DELIVERY_FAILURES,
            "CRDT broadcast records whose delivery failed.",
            "",
            &[],
        ),
        (
            CRDT_FULL_STATES,
            "Full CRDT states published after delivery failures.",
            "",
            &[],
        ),
        (CRDT_PRUNES, "Departed replicas pruned from CRDTs.", "", &[]),
        (
            EVENTING_EVENTS,
            "Eventing subscription events turned into commands.",
            "",
            &[],
        ),
        (
            EVENTING_RETRIES,
            "Eventing commands retried after a failure.",
            "",
            &[],
        ),
        (
            EVENTING_OUTPUTS,
            "Records published to eventing output topics.",
            "",
            &[],
        ),
    ];
    for (name, help, key, values) in counters {
        describe_counter!(name, help);
        if values.is_empty() {
            metrics::counter!(name).increment(0);
        }
        for value in values {
            metrics::counter!(name, key => *value).increment(0);
        }
    }
    describe_gauge!(ACTIVE_ENTITIES, "Active entities.");
    metrics::gauge!(ACTIVE_ENTITIES).increment(0.0);
    describe_gauge!(CRDT_LIVE_REPLICAS, "Live CRDT replicas of the service.");
    metrics::gauge!(CRDT_LIVE_REPLICAS).increment(0.0);
    describe_histogram!(
        CRDT_RECORD_BYTES,
        Unit::Bytes,
        "Bytes of one CRDT broadcast record, by kind."
    );
    describe_gauge!(
        BACKUP_LAG_RECORDS,
        "Records committed but not yet backed up, per partition."
    );
    describe_gauge!(
        BACKUP_CHECKPOINT_AGE,
        Unit::Seconds,
        "Seconds the backup checkpoint has not advanced while records waited, per partition."
    );
    describe_gauge!(
        LSO_STUCK,
        Unit::Seconds,
        "Seconds an owned partition's last stable offset has not moved while the high watermark is above it."
    );
    describe_gauge!(SERVICE_PARTITIONS, "Partitions of the service.");
    describe_gauge!(
        PARTITIONS_OWNED,
        "Partitions the ownership group assigned to this processor."
    );
    describe_gauge!(
        PARTITIONS_SERVING,
        "Owned partitions serving (writer running, lease held)."
    );
    describe_gauge!(
        PARTITIONS_RECOVERING,
        "Owned partitions being taken over or repaired."
    );
    metrics::gauge!(SERVICE_PARTITIONS, "service" => service.to_string()).set(partitions as f64);
    self::partitions(service, 0, 0, 0);
}

/// This processor's partitions of `service`: `owned` by it, `serving` of those, `recovering`.
pub(crate) fn partitions(service: &str, owned: usize, serving: usize, recovering: usize) {
    for (name, value) in [
        (PARTITIONS_OWNED, owned),
        (PARTITIONS_SERVING, serving),
        (PARTITIONS_RECOVERING, recovering),
    ] {
        metrics::gauge!(name, "service" => service.to_string()).set(value as f64);
    }
}

/// The backup gauges of one partition: its lag, and how long its checkpoint has not advanced
/// while there was lag.
pub(crate) struct BackupProgress {
    lag: metrics::Gauge,
    age: metrics::Gauge,
    /// Since when records wait without the checkpoint advancing.
    since: Instant,
}

impl BackupProgress {
    pub(crate) fn new(partition: u32) -> Self {
        let label = partition.to_string();
        Self {
            lag: metrics::gauge!(BACKUP_LAG_RECORDS, "partition" => label.clone()),
            age: metrics::gauge!(BACKUP_CHECKPOINT_AGE, "partition" => label),
            since: Instant::now(),
        }
    }

    /// `pending` records wait for the backup; `advanced`: its checkpoints just moved.
    pub(crate) fn observe(&mut self, pending: usize, advanced: bool) {
        let now = Instant::now();
        if advanced || pending == 0 {
            self.since = now;
        }
        self.lag.set(pending as f64);
        self.age.set(now.duration_since(self.since).as_secs_f64());
    }

    /// The partition's backup ended (released): nothing of it waits here any more.
    pub(crate) fn ended(&self) {
        self.lag.set(0.0);
        self.age.set(0.0);
    }
}
