//! Telemetry, set up once per process: `tracing` logs (text or JSON) and, when
//! `telemetry.otlp-endpoint` is set, OpenTelemetry traces exported over OTLP/gRPC with the W3C
//! trace-context propagator (parent-based sampling at `telemetry.sampling-ratio`).
//!
//! The two outputs filter separately: `telemetry.log-filter` (or `RUST_LOG`) decides which
//! log lines are written; the trace exporter takes Statehouse's own spans (target
//! `statehouse…`, INFO and above) whatever the log filter says, so quieting the logs never
//! breaks a trace. Log lines inside a traced command carry its `trace_id` (a field of the
//! command's span, in text and in JSON). Colours only when standard output is a terminal.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryOptions};

/// Keeps the trace exporter alive; flushes pending spans when dropped.
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Install the global subscriber. `role` names the process in traces (`statehouse-<role>`);
/// `admin` (a command, not a server) logs to standard error.
/// `RUST_LOG`, if set, replaces `telemetry.log-filter`.
pub fn init(options: &TelemetryOptions, role: &str) -> Result<Guard, String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive),
        _ => EnvFilter::try_new(&options.log_filter),
    }
    .map_err(|e| format!("bad log filter: {e}"))?;

    let (otel_layer, provider) = match &options.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
            let name = options
                .service_name
                .clone()
                .unwrap_or_else(|| format!("statehouse-{role}"));
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    options.sampling_ratio,
                ))))
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(name)
                        .build(),
                )
                .build();
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            let tracer = provider.tracer("statehouse");
            crate::trace::set_enabled();
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };

    // A command's standard output is its answer (`statehouse admin … --json`): its logs go to
    // standard error. A role's logs go to standard output, as container platforms expect.
    let (writer, ansi) = if role == "admin" {
        (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        )
    } else {
        (
            BoxMakeWriter::new(std::io::stdout),
            std::io::stdout().is_terminal(),
        )
    };
    let gate = Gate {
        logs: filter,
        spans: provider.is_some(),
    };
    let registry = tracing_subscriber::registry().with(gate).with(otel_layer);
    let result = match options.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_target(true)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(true),
            )
            .try_init(),
    };
    result.map_err(|e| format!("installing the tracing subscriber: {e}"))?;
    Ok(Guard { provider })
}

/// The one filter of the process: what the log filter enables, and — when traces are exported —
/// Statehouse's own spans (target `statehouse…`, INFO and above) whatever the log filter says,
/// so quieting the logs never breaks a trace. Spans are not log lines: the text and JSON
/// formatters only show them as the context of events.
///
/// A single global filter rather than a filter per layer: with the exporter's layer filtered
/// on its own (`with_filter`), the processor's span of a command was now and then missing from
/// the exporter's view (no context to hand on; seen in 2 of 3 runs of the tracing test, its
/// children exported under the router's span). With this filter the test passed every run; I
/// did not pin the cause down inside `tracing-subscriber`.
struct Gate {
    logs: EnvFilter,
    spans: bool,
}

impl Gate {
    fn traced(&self, meta: &tracing::Metadata<'_>) -> bool {
        self.spans
            && meta.is_span()
            && meta.target().starts_with("statehouse")
            && *meta.level() <= tracing::Level::INFO
    }
}

impl<S> Layer<S> for Gate
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if self.traced(meta) {
            tracing::subscriber::Interest::always()
        } else {
            <EnvFilter as Layer<S>>::register_callsite(&self.logs, meta)
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        self.traced(meta) || <EnvFilter as Layer<S>>::enabled(&self.logs, meta, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let logs = <EnvFilter as Layer<S>>::max_level_hint(&self.logs);
        if self.spans {
            Some(logs.map_or(tracing::level_filters::LevelFilter::INFO, |l| {
                l.max(tracing::level_filters::LevelFilter::INFO)
            }))
        } else {
            logs
        }
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        <EnvFilter as Layer<S>>::on_new_span(&self.logs, attrs, id, ctx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        <EnvFilter as Layer<S>>::on_record(&self.logs, id, values, ctx)
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        <EnvFilter as Layer<S>>::on_enter(&self.logs, id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        <EnvFilter as Layer<S>>::on_exit(&self.logs, id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        <EnvFilter as Layer<S>>::on_close(&self.logs, id, ctx)
    }
}
