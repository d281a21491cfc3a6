//! W3C trace context across Statehouse's hops: a span continues the trace of the
//! `traceparent` it was given (a client's header, the internal request's field, a journal
//! record's header), and hands its own context on as a `traceparent` string.
//!
//! Spans are ordinary `tracing` spans (names and attributes from
//! `statehouse_core::semconv`); the OpenTelemetry layer that [`crate::telemetry::init`]
//! installs when `telemetry.otlp-endpoint` is set turns them into exported spans. Without it
//! every function here is a no-op that costs one relaxed atomic load: the command path pays
//! nothing for tracing that is off.
//!
//! Why strings and not `tracing::Span`s travel with a command: a command crosses processes
//! (gateway → processor), tasks (the entity mailbox) and Kafka (the record's `traceparent`
//! header, read back by recovery, projections and eventing), and the W3C form is what all of
//! them can carry. A reader of the journal does not become a child of the writer's trace — it
//! runs later, for other reasons — it *links* to it ([`link`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once the OpenTelemetry layer is installed.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (`telemetry.otlp-endpoint` is set).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// The W3C header names.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Make `span` a child of the remote span `traceparent` (+ `tracestate`). Call it right after
/// creating the span, before entering it or creating children. A missing or malformed
/// `traceparent` leaves the span a root (a new trace).
pub fn continue_trace(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    if !enabled() {
        return;
    }
    if let Some(parent) = remote_context(traceparent, tracestate) {
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Record the span's trace id in its `trace_id` field (declared `Empty` at creation), so log
/// lines inside it carry the trace id.
fn record_trace_id(span: &Span) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

/// `span`'s context as a `traceparent` value; `None` when tracing is off (or the span is
/// disabled).
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Add a link from `span` to the span `traceparent` names (a record this reader handles).
/// Malformed values are ignored.
pub fn link(span: &Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    if let Some(context) = remote_context(Some(traceparent), None) {
        span.add_link(context.span().span_context().clone());
    }
}

/// The remote context of a `traceparent`, if it parses.
fn remote_context(
    traceparent: Option<&str>,
    tracestate: Option<&str>,
) -> Option<opentelemetry::Context> {
    let traceparent = traceparent?;
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_string(), traceparent.to_string());
    if let Some(state) = tracestate {
        carrier.insert(TRACESTATE.to_string(), state.to_string());
    }
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_contexts_parse_only_valid_traceparents() {
        let ok = remote_context(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("vendor=x"),
        )
        .expect("a valid traceparent");
        let span = ok.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
        for bad in [
            "",
            "00-trace-span-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(remote_context(Some(bad), None).is_none(), "{bad:?}");
        }
        assert!(remote_context(None, Some("vendor=x")).is_none());
    }

    #[test]
    fn everything_is_a_no_op_while_tracing_is_off() {
        // No OpenTelemetry layer in unit tests: spans have no context to hand on.
        let span = tracing::info_span!("test");
        continue_trace(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None,
        );
        link(
            &span,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        assert_eq!(traceparent(&span), None);
    }
}
