//! Metric names of the gateway (Prometheus, via the `metrics` facade), and the one place a
//! client call is counted. The table of every Statehouse metric, its labels and the role that
//! exports it is `docs/metrics.md`.

use statehouse_runtime::method_index::MethodInfo;

/// Counter: client calls of user methods (labels `service`: the gRPC service `pkg.Service`,
/// `method`: the method name — both `unknown` for a path no registered service has —,
/// `protocol`: grpc | grpc-web | http, and `code`: the gRPC status code name of the outcome).
pub const CALLS: &str = "statehouse_gateway_calls_total";
/// Histogram: seconds from a call's request head to its response (for streams: to the first
/// response) (labels `service`, `method`, `protocol`).
pub const CALL_SECONDS: &str = "statehouse_gateway_call_seconds";

/// The `service` and `method` labels of a call to a path no registered service has. Only
/// methods of registered services get labels of their own, so the label sets stay bounded by
/// what the user functions declare, whatever clients send.
const UNKNOWN: &str = "unknown";

/// Count a finished call of `method` (`None`: an unknown path) with its code and duration.
pub(crate) fn call(
    protocol: &'static str,
    method: Option<&MethodInfo>,
    code: tonic::Code,
    started: std::time::Instant,
) {
    let (service, name) = method.map_or((UNKNOWN, UNKNOWN), |m| {
        (m.service.as_str(), m.name.as_str())
    });
    metrics::counter!(
        CALLS,
        "service" => service.to_string(),
        "method" => name.to_string(),
        "protocol" => protocol,
        "code" => format!("{code:?}"),
    )
    .increment(1);
    metrics::histogram!(
        CALL_SECONDS,
        "service" => service.to_string(),
        "method" => name.to_string(),
        "protocol" => protocol,
    )
    .record(started.elapsed().as_secs_f64());
}

/// Describe the gateway's metrics (and the router's, which it routes with); at start.
pub(crate) fn describe() {
    statehouse_runtime::admin_server::prometheus();
    metrics::describe_counter!(
        CALLS,
        "Client calls of user methods, by service, method, protocol and gRPC code."
    );
    metrics::describe_histogram!(
        CALL_SECONDS,
        metrics::Unit::Seconds,
        "Seconds from a client call's request head to its response."
    );
    statehouse_runtime::metrics::describe();
}
