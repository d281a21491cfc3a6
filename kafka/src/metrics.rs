//! Metric names of the Kafka layer (Prometheus, via the `metrics` facade).

/// Counter: transactions committed by partition writers.
pub const WRITER_TRANSACTIONS: &str = "statehouse_writer_transactions_total";
/// Counter: transactions that failed (label `outcome`: aborted | fenced | indefinite).
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
