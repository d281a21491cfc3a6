//! The gateway's span of one client call (`statehouse.gateway.call`, kind server): it
//! continues the client's W3C trace (`traceparent` / `tracestate` headers) and is the parent
//! of the router's span, whose context the processor receives (`runtime/src/trace.rs`).

use http::HeaderMap;
use statehouse_core::semconv;
use statehouse_runtime::method_index::MethodInfo;
use statehouse_runtime::trace;
use tracing::Span;
use tracing::field::Empty;

/// The span of a call of `method` over `protocol` with request `headers` (none while traces
/// are off: the command path then pays for no span at all).
pub(crate) fn call(protocol: &'static str, method: &MethodInfo, headers: &HeaderMap) -> Span {
    if !trace::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        semconv::SPAN_GATEWAY_CALL,
        { semconv::OTEL_KIND } = "server",
        { semconv::RPC_SYSTEM } = "grpc",
        { semconv::RPC_SERVICE } = %method.service,
        { semconv::RPC_METHOD } = %method.name,
        { semconv::PROTOCOL } = protocol,
        { semconv::RPC_CODE } = Empty,
        { semconv::OTEL_STATUS } = Empty,
        { semconv::TRACE_ID } = Empty,
    );
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    trace::continue_trace(&span, header(trace::TRACEPARENT), header(trace::TRACESTATE));
    span
}

/// Record the call's outcome on its span.
pub(crate) fn finish(span: &Span, code: tonic::Code) {
    span.record(semconv::RPC_CODE, tracing::field::debug(code));
    if code != tonic::Code::Ok {
        span.record(semconv::OTEL_STATUS, "error");
    }
}
