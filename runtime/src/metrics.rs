//! Metric names of the runtime's shared parts (Prometheus, via the `metrics` facade).

/// Counter: routing attempts retried (label `reason`: no-owner | no-processor | unreachable |
/// not-owner). Counted by every role that routes (the gateway, processors running forwards and
/// side effects).
pub const ROUTER_RETRIES: &str = "statehouse_router_retries_total";
