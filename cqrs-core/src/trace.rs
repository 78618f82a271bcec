//! One trace per flow (feature `otel`): the W3C trace context a command carries
//! (`CommandMetadata::trace`, the `traceparent` header on NATS) becomes the parent of its
//! `cqrs.execute` span; each event stores the context of the span that wrote it; a process
//! manager handles an event in a `cqrs.react` span continuing the event's context, and its
//! follow-up commands carry that span's context; the JetStream runner's batch span
//! (`cqrs.nats.project`) links to the trace of each event it hands over. With
//! `tracing-opentelemetry`'s layer installed, one trace then shows request -> command -> append
//! -> reaction -> follow-up command -> its events, across processes.
//!
//! Without the feature (or without an OpenTelemetry layer) nothing changes: events carry the
//! caller's `traceparent` as they are given it.

/// Makes `span` continue the trace of the W3C `traceparent`, if there is one.
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
pub fn follow(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(context) = traceparent.map(extract) {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        // Fails only when the span is disabled: then there is nothing to continue.
        let _ = span.set_parent(context);
    }
}

/// Links `span` to the trace of the W3C `traceparent`, if there is one: for a span that
/// handles the events of several flows at once (a projection's batch), which cannot have them
/// all as its parent.
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
pub fn link(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otel")]
    if let Some(context) = traceparent.map(extract) {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let linked = context.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

/// The W3C `traceparent` of `span`, when it belongs to an OpenTelemetry trace.
#[cfg_attr(not(feature = "otel"), allow(unused_variables))]
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    #[cfg(feature = "otel")]
    {
        use opentelemetry::propagation::TextMapPropagator as _;
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let context = span.context();
        if !context.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = std::collections::HashMap::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&context, &mut carrier);
        carrier.remove("traceparent")
    }
    #[cfg(not(feature = "otel"))]
    None
}

/// The context a W3C `traceparent` names.
#[cfg(feature = "otel")]
fn extract(traceparent: &str) -> opentelemetry::Context {
    use opentelemetry::propagation::TextMapPropagator as _;
    let carrier =
        std::collections::HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
    opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier)
}
