//! Metric names of the Kafka layer (Prometheus, via the `metrics` facade). The table of every
//! Statehouse metric, its labels and the role that exports it is `docs/metrics.md`.

/// Counter: transactions committed by partition writers.
pub const WRITER_TRANSACTIONS: &str = "statehouse_writer_transactions_total";
/// Counter: transactions that failed (label `outcome`: aborted | fenced | indefinite). `fenced`
/// counts the fences this process's writers met (a newer owner, or a stale producer).
pub const WRITER_FAILURES: &str = "statehouse_writer_failures_total";
/// Counter: records committed by partition writers.
pub const WRITER_RECORDS: &str = "statehouse_writer_records_total";
/// Histogram: records per committed transaction (the group-commit batch size).
pub const WRITER_BATCH_RECORDS: &str = "statehouse_writer_batch_records";
/// Histogram: seconds from `begin_transaction` to a completed commit.
pub const WRITER_COMMIT_SECONDS: &str = "statehouse_writer_commit_seconds";
/// Counter: ownership lease renewals (accepted membership probes).
pub const LEASE_RENEWALS: &str = "statehouse_ownership_lease_renewals_total";
/// Counter: membership probes that failed (the lease was not renewed).
pub const LEASE_PROBE_FAILURES: &str = "statehouse_ownership_lease_probe_failures_total";
/// Counter: times the ownership lease ended while partitions were assigned (owned partitions
/// stop serving until a probe succeeds again).
pub const LEASE_LAPSES: &str = "statehouse_ownership_lease_lapses_total";

/// The outcomes of [`WRITER_FAILURES`].
const WRITER_OUTCOMES: [&str; 3] = ["aborted", "fenced", "indefinite"];

/// Describe the metrics of the writers and the ownership lease and export their counters at 0,
/// so a fresh processor shows them before anything happened (a counter that appears only with
/// its first failure breaks `rate()` and alerts on it). Histograms appear with their first
/// sample.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        WRITER_TRANSACTIONS,
        "Transactions committed by partition writers."
    );
    describe_counter!(
        WRITER_FAILURES,
        "Partition-writer transactions that failed, by outcome (aborted, fenced, indefinite)."
    );
    describe_counter!(WRITER_RECORDS, "Records committed by partition writers.");
    describe_histogram!(
        WRITER_BATCH_RECORDS,
        "Records per committed transaction (group-commit batch size)."
    );
    describe_histogram!(
        WRITER_COMMIT_SECONDS,
        Unit::Seconds,
        "Seconds from begin_transaction to a completed commit."
    );
    describe_counter!(LEASE_RENEWALS, "Ownership lease renewals.");
    describe_counter!(
        LEASE_PROBE_FAILURES,
        "Ownership membership probes that failed."
    );
    describe_counter!(
        LEASE_LAPSES,
        "Times the ownership lease ended while partitions were assigned."
    );
    for name in [
        WRITER_TRANSACTIONS,
        WRITER_RECORDS,
        LEASE_RENEWALS,
        LEASE_PROBE_FAILURES,
        LEASE_LAPSES,
    ] {
        metrics::counter!(name).increment(0);
    }
    for outcome in WRITER_OUTCOMES {
        metrics::counter!(WRITER_FAILURES, "outcome" => outcome).increment(0);
    }
}
