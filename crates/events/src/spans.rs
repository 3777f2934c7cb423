//! Each hop of a flow as an OpenTelemetry span, when spans are exported.
//!
//! A hop's ids are its [`TraceContext`]'s: the span id it gives the next hop in
//! `traceparent`, and as parent the span id it came with. So the exported spans form the
//! same tree the headers describe: `POST /orders` → the relay's publish → payment-service's
//! consume → its charge → its relay's publish → order-service's consume.
//!
//! Spans go through the global tracer provider, which `service_kit` installs only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; until then [`exporting`] is false and recording
//! costs one atomic load.

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{global, Context, KeyValue};

use crate::TraceContext;

pub use opentelemetry::trace::SpanKind as Kind;
pub use opentelemetry::KeyValue as Attribute;

static EXPORTING: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// The ids of the span being started on this thread, for the id generator.
    static PLANNED: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The trace id the span being started on this thread must have, if it is a hop's: what
/// the exporting provider's id generator hands out (a random one otherwise).
pub fn planned_trace_id() -> Option<TraceId> {
    PLANNED.with(|p| p.get().map(|(trace, _)| trace))
}

/// The span id the span being started on this thread must have, if it is a hop's.
pub fn planned_span_id() -> Option<SpanId> {
    PLANNED.with(|p| p.get().map(|(_, span)| span))
}

/// Called once a tracer provider that exports is installed (or removed).
pub fn set_exporting(on: bool) {
    EXPORTING.store(on, Ordering::Release);
}

/// Whether hops are exported.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Acquire)
}

/// A hop's span, started; ended (and exported) by [`Hop::end`] or when dropped.
pub struct Hop {
    span: Option<global::BoxedSpan>,
}

impl Hop {
    /// Adds attributes.
    pub fn set(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        if let Some(span) = &mut self.span {
            span.set_attributes(attributes);
        }
    }

    /// Whether the sampler kept it (always false when nothing is exported).
    pub fn sampled(&self) -> bool {
        self.span
            .as_ref()
            .is_some_and(|s| s.span_context().is_sampled())
    }

    pub fn end(mut self) {
        if let Some(mut span) = self.span.take() {
            span.end();
        }
    }
}

impl TraceContext {
    /// Starts this hop's span, named `name`, at `start`. It is a child of the hop this
    /// one continues; with no parent it is a root, and the sampler decides.
    pub fn begin(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start: SystemTime,
        attributes: Vec<KeyValue>,
    ) -> Hop {
        if !exporting() {
            return Hop { span: None };
        }
        let (Ok(trace_id), Ok(span_id)) = (
            TraceId::from_hex(&self.trace_id),
            SpanId::from_hex(&self.span_id),
        ) else {
            return Hop { span: None };
        };
        let parent = match self
            .parent_span_id
            .as_deref()
            .and_then(|p| SpanId::from_hex(p).ok())
        {
            Some(parent) => {
                let flags = if self.sampled() {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                Context::new().with_remote_span_context(SpanContext::new(
                    trace_id,
                    parent,
                    flags,
                    true,
                    TraceState::default(),
                ))
            }
            None => Context::new(),
        };
        let tracer = global::tracer("order-platform");
        let builder = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_start_time(start)
            .with_attributes(attributes);
        PLANNED.with(|p| p.set(Some((trace_id, span_id))));
        let span = builder.start_with_context(&tracer, &parent);
        PLANNED.with(|p| p.set(None));
        Hop { span: Some(span) }
    }

    /// Records this hop, which ran from `start` until now, as one span.
    pub fn record(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        start: SystemTime,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) {
        if exporting() && self.sampled() {
            self.begin(name, kind, start, attributes()).end();
        }
    }
}
