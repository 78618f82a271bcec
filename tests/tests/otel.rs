//! One trace per flow (feature `otel`): a request's trace context reaches the command service,
//! the append, the process manager's reaction and its follow-up command, with each span the
//! child of the one before — seen by an in-memory OpenTelemetry exporter.
//!
//! Its own test binary: the subscriber is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{CommandMetadata, EventStore, ProcessManagerProjection, StreamId};
use cqrs_nats::command::{CommandClient, CommandService};
use cqrs_nats::{JetStreamProjectionRunner, ProjectionConfig};
use examples::order_flow::Shipping;
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use futures::TryStreamExt;
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt as _;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

fn find<'s>(spans: &'s [SpanData], name: &str, key: &str, value: &str) -> &'s SpanData {
    spans
        .iter()
        .find(|s| s.name == name && attribute(s, key).as_deref() == Some(value))
        .unwrap_or_else(|| {
            let seen: Vec<_> = spans.iter().map(|s| (&s.name, &s.attributes)).collect();
            panic!("no span {name} with {key} = {value} among {seen:#?}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_joins_request_command_append_reaction_and_follow_up() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("cqrs-test"));
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).unwrap();

    let f = cqrs_tests::jetstream_with(cqrs_nats::StoreConfig::new("sales"))
        .await
        .unwrap();
    let repository = cqrs_core::Repository::<Order, _>::new(f.store.clone());
    let service = CommandService::new(f.store.client().clone(), "sales", repository)
        .spawn()
        .await
        .unwrap();
    let client = CommandClient::new(f.store.client().clone(), "sales");
    let saga =
        ProcessManagerProjection::new(Shipping, InMemoryReadModelStore::new(), client.clone());
    let config = ProjectionConfig::new().heartbeat(Duration::from_millis(200));
    let runner = JetStreamProjectionRunner::spawn(&f.store, saga, config)
        .await
        .unwrap();

    let submit = OrderCommand::Submit {
        items: vec![Item {
            sku: "PEN-1".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    };
    client
        .send::<Order>("o-1", &submit, &CommandMetadata::root())
        .await
        .unwrap();
    // The request: a span of the caller's, its context sent with the command.
    let request = tracing::info_span!("request");
    let traceparent = cqrs_core::trace::traceparent(&request).expect("an OpenTelemetry span");
    let pay = OrderCommand::Pay {
        payment_id: "p-1".into(),
    };
    client
        .send::<Order>(
            "o-1",
            &pay,
            &CommandMetadata::root().with_trace(traceparent),
        )
        .await
        .unwrap();
    drop(request);

    // The saga ships the order.
    let stream = StreamId::new("Order", "o-1");
    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events: Vec<_> = f
            .store
            .load(&stream, 1)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        if events.len() >= 3 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(events.len(), 3, "submitted, paid, shipped");
    runner.stop().await.unwrap();
    service.stop().await;
    provider.force_flush().unwrap();

    check_one_trace(&exporter.get_finished_spans().unwrap(), &events);
}

/// The spans of the flow: one trace, each the parent of the next, the append under its command,
/// the runner's batch linked to the event it handled, and each event carrying its writer's
/// context.
fn check_one_trace(spans: &[SpanData], events: &[cqrs_core::RecordedEvent]) {
    let request = spans.iter().find(|s| s.name == "request").unwrap();
    let paid = find(spans, "cqrs.execute", "command", "Pay");
    let reaction = find(spans, "cqrs.react", "process", "shipping");
    let shipped = find(spans, "cqrs.execute", "command", "Ship");
    let trace_id = request.span_context.trace_id();
    for span in [paid, reaction, shipped] {
        assert_eq!(span.span_context.trace_id(), trace_id, "{}", span.name);
    }
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "the request is the root"
    );
    assert_eq!(paid.parent_span_id, request.span_context.span_id());
    assert_eq!(reaction.parent_span_id, paid.span_context.span_id());
    assert_eq!(shipped.parent_span_id, reaction.span_context.span_id());
    // The append happened inside the command's span.
    let append = spans
        .iter()
        .find(|s| s.name == "cqrs.append" && s.parent_span_id == paid.span_context.span_id());
    assert!(append.is_some(), "no cqrs.append under the Pay command");
    // The runner's batch span links to the trace of the event it handled.
    let batch = spans.iter().find(|s| {
        s.name == "cqrs.nats.project"
            && attribute(s, "projection").as_deref() == Some("shipping")
            && s.links
                .iter()
                .any(|link| link.span_context.span_id() == paid.span_context.span_id())
    });
    assert!(
        batch.is_some(),
        "no batch span linked to the paid event's trace"
    );
    // Each event carries the context of the span that wrote it.
    let written_by = |i: usize| events[i].metadata.trace.clone().unwrap_or_default();
    assert!(written_by(1).contains(&paid.span_context.span_id().to_string()));
    assert!(written_by(2).contains(&shipped.span_context.span_id().to_string()));
}
