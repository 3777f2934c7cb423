//! Spans exported over OTLP, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; nothing is exported otherwise.
//!
//! The standard variables apply: `OTEL_SERVICE_NAME` (default: the service's name),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
//! (default: `parentbased_always_on`), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT` (default 10 s), `OTEL_SDK_DISABLED`. Spans go as OTLP
//! protobuf over HTTP (`…/v1/traces`), in batches, from a thread of their own.
//!
//! The spans are the flow's hops ([`events::spans`]), with the ids their `traceparent`
//! headers carry, so a collector sees the same tree the headers describe.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracerProvider};
use opentelemetry_sdk::Resource;

/// Bound on flushing the spans still queued at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Exports while it lives; flushes what is queued (within 5 s) when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        events::spans::set_exporting(false);
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "flushing the last spans failed");
        }
    }
}

/// Whether the environment asks for spans to be exported.
pub fn wanted() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim() == "true")
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Starts exporting spans as `service` if the environment asks for it (see the module).
pub fn init(service: &'static str) -> anyhow::Result<Option<Telemetry>> {
    if !wanted() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| anyhow::anyhow!("OTLP span exporter (OTEL_EXPORTER_OTLP_*): {e}"))?;
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| v.contains("service.name="));
    let resource = if named {
        Resource::builder().build()
    } else {
        Resource::builder().with_service_name(service).build()
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(HopIds::default())
        .with_resource(resource)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    events::spans::set_exporting(true);
    tracing::info!(service, "exporting spans over OTLP");
    Ok(Some(Telemetry { provider }))
}

/// Hands out the ids a hop's span must have (its `traceparent`'s), random ones otherwise.
#[derive(Debug, Default)]
struct HopIds {
    random: RandomIdGenerator,
}

impl IdGenerator for HopIds {
    fn new_trace_id(&self) -> TraceId {
        events::spans::planned_trace_id().unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        events::spans::planned_span_id().unwrap_or_else(|| self.random.new_span_id())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        // The test runner's environment has no OTLP endpoint.
        assert!(std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").is_err());
        assert!(!super::wanted());
        assert!(super::init("test").expect("init").is_none());
        assert!(!events::spans::exporting());
    }
}
