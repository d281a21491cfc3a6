//! Metric names of the runtime's shared parts (Prometheus, via the `metrics` facade), and how
//! the process-wide exporter renders histograms. The table of every Statehouse metric, its
//! labels and the role that exports it is `docs/metrics.md`.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Counter: routing attempts retried (label `reason`: no-owner | no-processor | unreachable |
/// not-owner). Counted by every role that routes (the gateway, processors running forwards and
/// side effects).
pub const ROUTER_RETRIES: &str = "statehouse_router_retries_total";

/// Gauge: the concurrency limit adaptive admission learned (label `role`: gateway | processor;
/// `crate::admission`).
pub const ADMISSION_LIMIT: &str = "statehouse_admission_limit";
/// Counter: calls refused by adaptive admission (RESOURCE_EXHAUSTED, HTTP 429) (label `role`).
pub const ADMISSION_REFUSED: &str = "statehouse_admission_refused_total";

/// The reasons of [`ROUTER_RETRIES`].
const RETRY_REASONS: [&str; 4] = ["no-owner", "no-processor", "unreachable", "not-owner"];

/// Counter: connections a TLS port refused before any request (label `reason`: plaintext — the
/// caller spoke plaintext and was answered 400; handshake — the TLS handshake failed, e.g. a
/// client certificate of an unknown CA or a peer name not allowed; timeout — no handshake in
/// time). The gateway counts its client port, processors their internal port (`docs/tls.md`);
/// at 0 while TLS is off.
pub const TLS_REFUSED: &str = "statehouse_tls_refused_total";

/// Gauge: when a certificate Statehouse serves or presents stops being valid, seconds since the
/// epoch (its `notAfter`; label `file`: the certificate file), set when it is read or reloaded
/// (`docs/tls.md`). Exported only by roles with TLS configured.
pub const TLS_CERT_EXPIRY: &str = "statehouse_tls_certificate_expiry_timestamp_seconds";

/// The reasons of [`TLS_REFUSED`].
pub const TLS_REFUSED_REASONS: [&str; 3] = ["plaintext", "handshake", "timeout"];

/// Buckets of every `*_seconds` histogram: half a millisecond (a commit on a local broker) to
/// five minutes (a projection that fell behind).
const SECONDS: [f64; 18] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];
/// Buckets of `*_records` histograms (records per transaction): powers of two.
const RECORDS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];
/// Buckets of `*_bytes` histograms (record sizes): 64 B to 4 MiB.
const BYTES: [f64; 9] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
];

/// Histograms render as Prometheus histograms (`_bucket` series with `le`), not as summaries:
/// buckets add up across processes, so a dashboard can take quantiles over every pod of a
/// service (`histogram_quantile`).
pub(crate) fn buckets(builder: PrometheusBuilder) -> PrometheusBuilder {
    [
        ("_seconds", &SECONDS[..]),
        ("_records", &RECORDS[..]),
        ("_bytes", &BYTES[..]),
    ]
    .into_iter()
    .fold(builder, |builder, (suffix, buckets)| {
        builder
            .set_buckets_for_metric(Matcher::Suffix(suffix.into()), buckets)
            .expect("bucket lists are not empty")
    })
}

/// Describe the runtime's metrics and export the router's retry counter at 0 for every reason:
/// called by each role that routes, at start.
pub fn describe() {
    metrics::describe_counter!(
        ROUTER_RETRIES,
        "Routing attempts retried, by reason (no-owner, no-processor, unreachable, not-owner)."
    );
    for reason in RETRY_REASONS {
        metrics::counter!(ROUTER_RETRIES, "reason" => reason).increment(0);
    }
    metrics::describe_gauge!(
        ADMISSION_LIMIT,
        "Concurrent calls adaptive admission admits, learned from latency, by role."
    );
    metrics::describe_counter!(
        ADMISSION_REFUSED,
        "Calls refused by adaptive admission (RESOURCE_EXHAUSTED, HTTP 429), by role."
    );
    metrics::describe_counter!(
        TLS_REFUSED,
        "Connections a TLS port refused before any request, by reason (plaintext, handshake, timeout)."
    );
    for reason in TLS_REFUSED_REASONS {
        metrics::counter!(TLS_REFUSED, "reason" => reason).increment(0);
    }
    metrics::describe_gauge!(
        TLS_CERT_EXPIRY,
        "When a certificate this process serves or presents expires (notAfter), seconds since the epoch, by file."
    );
}
