//! Metric names of the gateway (Prometheus, via the `metrics` facade).

/// Counter: client calls of user methods (labels `protocol`: grpc | grpc-web | http, and
/// `code`: the gRPC status code name of the outcome).
pub const CALLS: &str = "statehouse_gateway_calls_total";
/// Histogram: seconds from a call's request head to its response (label `protocol`).
pub const CALL_SECONDS: &str = "statehouse_gateway_call_seconds";
