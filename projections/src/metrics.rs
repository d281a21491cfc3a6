//! Metric names of the projector (Prometheus, via the `metrics` facade). Labels: `projection`,
//! and where it says so `generation` and `partition`.

/// Counter: events folded into rows — not the replayed ones a row already held — or handed to
/// an external projection (`projection`).
pub const EVENTS: &str = "statehouse_projection_events_total";
/// Counter: batches whose handler call failed and was retried (`projection`).
pub const RETRIES: &str = "statehouse_projection_retries_total";
/// Histogram: seconds from an event's commit to its row being written (`projection`): the
/// end-to-end lag of each event.
pub const DELAY: &str = "statehouse_projection_delay_seconds";
/// Gauge: journal records (offsets, transaction markers included) between a generation's
/// progress and the partition's last stable offset (`projection`, `generation`, `partition`).
pub const LAG_RECORDS: &str = "statehouse_projection_lag_records";
/// Gauge: seconds the generation is behind in the partition: 0 when caught up, else the age of
/// the last event it folded (`projection`, `generation`, `partition`).
pub const LAG_SECONDS: &str = "statehouse_projection_lag_seconds";
/// Gauge: events parked now, each holding its partition back (`projection`, `generation`).
pub const PARKED: &str = "statehouse_projection_parked";
/// Gauge: the generation served (`projection`).
pub const GENERATION: &str = "statehouse_projection_generation";

/// Describe the projector's metrics; at start.
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    statehouse_runtime::admin_server::prometheus();
    describe_counter!(
        EVENTS,
        "Events folded into rows or handed to an external projection."
    );
    describe_counter!(
        RETRIES,
        "Batches whose handler call failed and was retried."
    );
    describe_histogram!(
        DELAY,
        Unit::Seconds,
        "Seconds from an event's commit to its row being written."
    );
    describe_gauge!(
        LAG_RECORDS,
        "Journal records between a generation's progress and the partition's last stable offset."
    );
    describe_gauge!(
        LAG_SECONDS,
        Unit::Seconds,
        "Seconds a generation is behind in a partition."
    );
    describe_gauge!(PARKED, "Events parked now.");
    describe_gauge!(GENERATION, "The generation served.");
}

/// Export `projection`'s counters and its parked gauge for `generation` at 0, so they show
/// before anything happened (alerts on `rate()` or on parked events need the series).
pub(crate) fn touch(projection: &str, generation: i32) {
    metrics::counter!(EVENTS, "projection" => projection.to_string()).increment(0);
    metrics::counter!(RETRIES, "projection" => projection.to_string()).increment(0);
    metrics::gauge!(PARKED, "projection" => projection.to_string(), "generation" => generation.to_string())
        .increment(0.0);
}
