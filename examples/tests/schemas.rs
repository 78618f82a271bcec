//! The examples' event schemas: one JSON Schema for every event type and schema version they can
//! read, and every body their walkthroughs store validates against the schema of its
//! `(type, version)` — an old version's body against that version's schema.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::schema::{EventJsonSchema, EventJsonSchemas};
use cqrs_core::{DomainEvent, EventStore, InMemoryEventStore, RecordedEvent};
use examples::bank_account::{AccountEvent, UsernameEvent};
use examples::graph_editor::GraphEvent;
use examples::host::{InMemoryHost, ProjectionHost};
use examples::order_fulfilment::OrderEvent;
use examples::task_tracker::TaskEvent;
use std::collections::BTreeMap;

type Schemas = BTreeMap<(String, u32), serde_json::Value>;

fn schemas() -> Schemas {
    let mut all = Schemas::new();
    let mut add = |schemas: Vec<EventJsonSchema>, catalog: &[cqrs_core::EventSchema]| {
        // Every type and every version it reads has a schema, and nothing else does.
        let mut expected: Vec<(&str, u32)> = catalog
            .iter()
            .flat_map(|e| e.readable_versions.iter().map(|v| (e.name, *v)))
            .collect();
        let mut got: Vec<(&str, u32)> = schemas.iter().map(|s| (s.event_type, s.version)).collect();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected);
        for schema in schemas {
            jsonschema::meta::validate(&schema.schema)
                .unwrap_or_else(|e| panic!("{} v{}: {e}", schema.event_type, schema.version));
            all.insert(
                (schema.event_type.to_owned(), schema.version),
                schema.schema,
            );
        }
    };
    add(AccountEvent::json_schemas(), AccountEvent::catalog());
    add(UsernameEvent::json_schemas(), UsernameEvent::catalog());
    add(TaskEvent::json_schemas(), TaskEvent::catalog());
    add(GraphEvent::json_schemas(), GraphEvent::catalog());
    add(OrderEvent::json_schemas(), OrderEvent::catalog());
    all
}

fn validate(schemas: &Schemas, event: &RecordedEvent) {
    let key = (
        event.payload.event_type.clone(),
        event.payload.schema_version,
    );
    let schema = schemas
        .get(&key)
        .unwrap_or_else(|| panic!("no schema for {key:?}"));
    let body: serde_json::Value = serde_json::from_slice(&event.payload.data).unwrap();
    let validator = jsonschema::validator_for(schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{key:?} {body}: {errors:?}");
}

#[tokio::test]
async fn every_stored_example_body_validates_against_its_schema() {
    let schemas = schemas();
    let mut stored = Vec::new();

    let bank = InMemoryEventStore::new();
    examples::bank_account::demo(bank.clone(), &mut String::new())
        .await
        .unwrap();
    stored.extend(stored_events(&bank).await);

    let tasks = InMemoryHost::new();
    Box::pin(examples::task_tracker::demo(&tasks, &mut String::new()))
        .await
        .unwrap();
    stored.extend(stored_events(tasks.store()).await);

    let graphs = InMemoryHost::new();
    Box::pin(examples::graph_editor::demo(&graphs, &mut String::new()))
        .await
        .unwrap();
    stored.extend(stored_events(graphs.store()).await);

    let orders = InMemoryEventStore::new();
    examples::order_flow::demo_on(orders.clone(), &mut String::new())
        .await
        .unwrap();
    stored.extend(stored_events(&orders).await);

    for event in &stored {
        validate(&schemas, event);
    }
    // The walkthroughs store every kind of event body there is, a v1 body among them.
    let kinds: std::collections::BTreeSet<(String, u32)> = stored
        .iter()
        .map(|e| (e.payload.event_type.clone(), e.payload.schema_version))
        .collect();
    assert!(kinds.contains(&("Created".to_owned(), 1)), "{kinds:?}");
    assert!(kinds.len() >= 15, "{kinds:?}");
}

/// A body of the wrong shape fails: the schemas constrain something.
#[test]
fn schemas_reject_bodies_of_another_shape() {
    let schemas = schemas();
    let deposited = &schemas[&("Deposited".to_owned(), 1)];
    let validator = jsonschema::validator_for(deposited).unwrap();
    assert!(validator.is_valid(&serde_json::json!({ "amount": 5 })));
    assert!(!validator.is_valid(&serde_json::json!({ "amount": "five" })));
    assert!(!validator.is_valid(&serde_json::json!({})));
    let created_v1 = jsonschema::validator_for(&schemas[&("Created".to_owned(), 1)]).unwrap();
    let created_v2 = jsonschema::validator_for(&schemas[&("Created".to_owned(), 2)]).unwrap();
    let v1_body = serde_json::json!({ "title": "Write docs", "assignee": "ana" });
    assert!(created_v1.is_valid(&v1_body));
    assert!(!created_v2.is_valid(&v1_body), "v2 names the owner `owner`");
}

async fn stored_events<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    use futures::TryStreamExt;
    store
        .read_all(&cqrs_core::EventFilter::all(), 0)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A client in another language: reads an event's type and version from its `Cqrs-Envelope`
/// header, fetches the schema under `<type>.<version>` from `SCHEMAS_<CONTEXT>` with a plain
/// KV get, and validates the body with it.
#[tokio::test]
async fn published_schemas_are_found_by_the_envelope_of_a_stored_event() {
    use cqrs_core::{CommandMetadata, Repository};
    use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let store =
        cqrs_nats::JetStreamEventStore::connect(server.url(), cqrs_nats::StoreConfig::new("sales"))
            .await
            .unwrap();
    let published = cqrs_nats::schemas::publish::<OrderEvent>(&store)
        .await
        .unwrap();
    assert_eq!(published, OrderEvent::json_schemas().len());
    let submit = OrderCommand::Submit {
        items: vec![Item {
            sku: "PEN-1".into(),
            quantity: 2,
        }],
        channel: Channel::Web,
    };
    Repository::<Order, _>::new(store.clone())
        .execute("o-1", submit, CommandMetadata::root())
        .await
        .unwrap();

    let client = cqrs_nats::async_nats::connect(server.url()).await.unwrap();
    let js = cqrs_nats::async_nats::jetstream::new(client);
    let message = js
        .get_stream("EVENTS_SALES")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    let envelope: serde_json::Value =
        serde_json::from_str(message.headers.get("Cqrs-Envelope").unwrap().as_str()).unwrap();
    let key = format!(
        "{}.{}",
        envelope["type"].as_str().unwrap(),
        envelope["schema"]
    );
    assert_eq!(key, "Submitted.3");
    let bytes = js
        .get_key_value("SCHEMAS_SALES")
        .await
        .unwrap()
        .get(&key)
        .await
        .unwrap()
        .expect("the schema is published under <type>.<version>");
    let schema: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
    assert!(
        jsonschema::validator_for(&schema).unwrap().is_valid(&body),
        "{body}"
    );
    let fetched = cqrs_nats::schemas::fetch(&js, "sales", "Submitted", 3)
        .await
        .unwrap();
    assert_eq!(fetched, Some(schema));
    let missing = cqrs_nats::schemas::fetch(&js, "sales", "Submitted", 9)
        .await
        .unwrap();
    assert_eq!(missing, None);
}
