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
