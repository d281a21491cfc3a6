//! Telemetry, set up once per process: `tracing` logs (text or JSON) and, when
//! `telemetry.otlp-endpoint` is set, OpenTelemetry traces exported over OTLP/gRPC with the W3C
//! trace-context propagator.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
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

/// Install the global subscriber. `role` names the process in traces (`statehouse-<role>`).
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
            (
                Some(tracing_opentelemetry::layer().with_tracer(tracer)),
                Some(provider),
            )
        }
        None => (None, None),
    };

    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let result = match options.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(true))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            )
            .try_init(),
    };
    result.map_err(|e| format!("installing the tracing subscriber: {e}"))?;
    Ok(Guard { provider })
}
