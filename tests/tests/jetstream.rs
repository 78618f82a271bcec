//! JetStream-specific behaviour of `cqrs-nats`: the wire format as other clients see it,
//! subjects, provisioning, malformed messages and faults. Each test starts its own nats-server.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use cqrs_core::doc::{Counter, CounterCommand};
use cqrs_core::metadata::new_id;
use cqrs_core::{
    AppendTo, CommandError, CommandMetadata, DecodeError, EventFilter, EventStore, ExpectedVersion,
    NewEvent, Repository, SeenPosition, Snapshot, StoreError, StreamId, StreamPosition, UnitOfWork,
};
use cqrs_nats::async_nats::{self, HeaderMap, jetstream};
use cqrs_nats::{ConnectError, JetStreamEventStore, StoreConfig, Subjects};
use cqrs_test_server::NatsServer;
use cqrs_tests::{event, jetstream as fixture};
use futures::TryStreamExt;
use std::time::Duration;
use time::OffsetDateTime;

type Events = Vec<cqrs_core::RecordedEvent>;

async fn load_all<S: EventStore>(store: &S, stream: &StreamId) -> Result<Events, StoreError> {
    store.load(stream, 1).await?.try_collect().await
}

/// Publishes `headers` + `body` on `subject` with a plain JetStream client, as another language's
/// client would; returns the stream sequence.
async fn publish_plain(url: &str, subject: &str, headers: &[(&str, &str)], body: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(*name, *value);
    }
    js.publish_with_headers(subject.to_owned(), map, body.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

/// Every event read names its store, and the store tells an aggregate's version only from a
/// server that holds a given position: what keeps a process manager's command from being
/// refused by a state older than its cause.
#[tokio::test]
async fn events_name_their_store_which_answers_only_from_past_a_seen_position() {
    let f = fixture().await.expect("fixture");
    let stream = StreamId::new("Order", "o-1");
    let committed = f
        .store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Placed", 1), event("Paid", 2)],
            None,
        )
        .await
        .unwrap();
    let loaded = load_all(&f.store, &stream).await.unwrap();
    let read = cqrs_tests::all_events(&f.store).await;
    for event in committed.events.iter().chain(&loaded).chain(&read) {
        assert_eq!(event.store.as_deref(), Some("EVENTS_TEST"), "{event:?}");
    }
    let paid = SeenPosition::of(&loaded[1]).unwrap();
    let version_past = |seen| f.store.version_past(&stream, seen);
    assert_eq!(version_past(&paid).await.unwrap(), Some(2));
    let ahead = SeenPosition {
        position: paid.position + 1,
        ..paid.clone()
    };
    assert_eq!(version_past(&ahead).await.unwrap(), None);
    // A position in another context's stream says nothing about this one.
    let elsewhere = SeenPosition {
        store: "EVENTS_OTHER".to_owned(),
        position: 1_000,
    };
    assert_eq!(version_past(&elsewhere).await.unwrap(), Some(2));
    let unborn = StreamId::new("Order", "o-2");
    assert_eq!(f.store.version_past(&unborn, &paid).await.unwrap(), Some(0));

    // Through the repository: a refusal on a state older than what the caller saw is not
    // answered (a retryable error instead); with the floor reached, or in another store, it is.
    let counters = Repository::<Counter, _>::new(f.store.clone());
    let refused = |seen: SeenPosition| {
        counters.execute(
            "c-1",
            CounterCommand::Add(0),
            CommandMetadata::root().with_seen_position(seen),
        )
    };
    let err = refused(ahead).await.unwrap_err();
    assert!(
        matches!(&err, CommandError::Store(e @ StoreError::Unavailable { .. }) if e.is_retryable()),
        "{err}"
    );
    for seen in [paid, elsewhere] {
        let err = refused(seen).await.unwrap_err();
        assert!(matches!(err, CommandError::Rejected(_)), "{err}");
    }
}

/// A message in the first wire format, one header per field, as stores before the
/// `Cqrs-Envelope` header wrote them (and foreign clients may still write): still read.
#[tokio::test]
async fn plain_client_message_in_the_first_wire_format_is_loaded() {
    let f = fixture().await.expect("fixture");
    let subjects = Subjects::new("test").unwrap();
    let subject = subjects.aggregate(Some("acme"), "Order", "o.1").unwrap();
    assert_eq!(subject, "test.events.acme.Order.o_2E1");
    let (event_id, correlation, command) = (new_id(), new_id(), new_id());
    let (event_id_s, correlation_s, command_s) = (
        event_id.to_string(),
        correlation.to_string(),
        command.to_string(),
    );
    let sequence = publish_plain(
        &f.server.url(),
        &subject,
        &[
            ("Nats-Msg-Id", &event_id_s),
            ("Nats-Expected-Last-Subject-Sequence", "0"),
            ("Cqrs-Event-Type", "Submitted"),
            ("Cqrs-Schema-Version", "2"),
            ("Cqrs-Aggregate-Version", "1"),
            ("Cqrs-Correlation-Id", &correlation_s),
            ("Cqrs-Causation-Id", &command_s),
            ("Cqrs-Command-Id", &command_s),
            ("Cqrs-Actor", "service:legacy-importer"),
            ("Cqrs-Recorded-At", "2026-01-02T03:04:05.123456789Z"),
            ("Cqrs-Extra-source", "go"),
            ("Content-Type", "application/json"),
        ],
        r#"{"items":[1,2]}"#,
    )
    .await;
    let stream = StreamId::new("Order", "o.1").with_tenant("acme");
    let loaded = load_all(&f.store, &stream).await.expect("load");
    assert_eq!(loaded.len(), 1);
    let e = &loaded[0];
    assert_eq!(e.event_id, event_id);
    assert_eq!((e.version, e.position), (1, sequence));
    assert_eq!(e.payload.event_type, "Submitted");
    assert_eq!(e.payload.schema_version, 2);
    assert_eq!(e.payload.data, br#"{"items":[1,2]}"#);
    assert_eq!(e.metadata.correlation_id, correlation);
    assert_eq!(e.metadata.causation_id, Some(command));
    assert_eq!(e.metadata.command_id, Some(command));
    assert_eq!(e.metadata.command_causation_id, None);
    assert_eq!(e.metadata.tenant.as_deref(), Some("acme"));
    assert_eq!(e.metadata.actor.as_deref(), Some("service:legacy-importer"));
    assert_eq!(
        e.metadata.extra.get("source").map(String::as_str),
        Some("go")
    );
    assert_eq!(
        e.recorded_at,
        OffsetDateTime::parse(
            "2026-01-02T03:04:05.123456789Z",
            &time::format_description::well_known::Rfc3339
        )
        .unwrap()
    );
    // The store continues the aggregate the other client started.
    let c = f
        .store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![event("Paid", 1)],
            None,
        )
        .await
        .expect("append after the plain client");
    assert_eq!(c.events[0].version, 2);
}

/// What README's "Wire format" tells a client in another language, done with a plain client:
/// read the aggregate's last message by direct get, publish the next event with the expected
/// sequence and the `Cqrs-Envelope` header. The store loads it and continues the aggregate.
#[tokio::test]
async fn plain_client_following_the_readme_appends_an_event_the_store_loads() {
    let f = fixture().await.expect("fixture");
    let stream = StreamId::new("Order", "o.1").with_tenant("acme");
    // The framework starts the aggregate.
    let first = f
        .store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Added", 0)],
            None,
        )
        .await
        .expect("append");
    let client = async_nats::connect(f.server.url()).await.expect("connect");
    // README: the aggregate's subject, and the stored subject with its partition token.
    let subject = "test.events.acme.Order.o_2E1";
    // FNV-1a 32 of the tenant, type and id tokens concatenated, modulo the 8 default partitions.
    let hash = "acmeOrdero_2E1".bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let stored = format!("test.events.{}.acme.Order.o_2E1", hash % 8);
    assert_eq!(stored, f.store.stored_subject_for(&stream).unwrap());
    let last = client
        .request(
            "$JS.API.DIRECT.GET.EVENTS_TEST",
            format!(r#"{{"last_by_subj":"{stored}"}}"#).into(),
        )
        .await
        .expect("direct get");
    let headers = last.headers.expect("headers");
    let sequence = headers.get("Nats-Sequence").expect("sequence").to_string();
    let envelope: serde_json::Value =
        serde_json::from_str(headers.get("Cqrs-Envelope").expect("envelope").as_str())
            .expect("JSON");
    let version = envelope["version"].as_u64().expect("version");
    assert_eq!(
        (sequence.parse::<u64>().unwrap(), version),
        (first.events[0].position, 1)
    );
    let (event_id, command, trigger) = (new_id(), new_id(), new_id());
    let mut map = HeaderMap::new();
    map.insert("Nats-Msg-Id", event_id.to_string().as_str());
    map.insert("Nats-Expected-Last-Subject-Sequence", sequence.as_str());
    let body = serde_json::json!({
        "type": "Paid",
        "schema": 2,
        "version": version + 1,
        "command": command.to_string(),
        "causation": null,
        "command_causation": trigger.to_string(),
        "actor": "service:go-importer",
        "extra": {"source": "go"},
        "a_field_from_the_future": true,
    });
    map.insert("Cqrs-Envelope", body.to_string().as_str());
    let js = async_nats::jetstream::new(client);
    let position = js
        .publish_with_headers(subject, map, r#"{"amount":5}"#.into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence;
    let loaded = load_all(&f.store, &stream).await.expect("load");
    assert_eq!(loaded.len(), 2);
    let e = &loaded[1];
    assert_eq!((e.event_id, e.version, e.position), (event_id, 2, position));
    assert_eq!(e.payload.event_type, "Paid");
    assert_eq!(e.payload.schema_version, 2);
    assert_eq!(e.payload.data, br#"{"amount":5}"#);
    // Correlation absent: the command id; causation `null`: none.
    assert_eq!(e.metadata.correlation_id, command);
    assert_eq!(e.metadata.command_id, Some(command));
    assert_eq!(e.metadata.causation_id, None);
    assert_eq!(e.metadata.command_causation_id, Some(trigger));
    assert_eq!(e.metadata.tenant.as_deref(), Some("acme"));
    assert_eq!(e.metadata.actor.as_deref(), Some("service:go-importer"));
    assert_eq!(
        e.metadata.extra.get("source").map(String::as_str),
        Some("go")
    );
    // No recorded_at: the server's timestamp.
    assert!(e.recorded_at >= first.events[0].recorded_at - time::Duration::seconds(1));
    let c = f
        .store
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            vec![event("Paid", 1)],
            None,
        )
        .await
        .expect("append after the plain client");
    assert_eq!(c.events[0].version, 3);
}

#[tokio::test]
async fn appended_events_carry_the_documented_headers() {
    let f = fixture().await.expect("fixture");
    let stream = StreamId::new("Order", "o 1").with_tenant("t.1");
    let command = CommandMetadata::root()
        .with_tenant("t.1")
        .with_actor("user:42")
        .with_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .with_extra("channel", "web");
    let meta = command.event_metadata();
    let events: Vec<NewEvent> = (0..3)
        .map(|n| NewEvent {
            metadata: meta.clone(),
            ..event("Added", n)
        })
        .collect();
    let committed = f
        .store
        .append(&stream, ExpectedVersion::NoStream, events, None)
        .await
        .expect("append");
    let js_stream = f
        .store
        .jetstream()
        .get_stream("EVENTS_TEST")
        .await
        .expect("stream");
    for (i, recorded) in committed.events.iter().enumerate() {
        let message = js_stream
            .get_raw_message(recorded.position)
            .await
            .expect("get");
        // Published to `test.events.t_2E1.Order.o_201`, stored with its partition token.
        assert_eq!(
            message.subject.as_str(),
            f.store.stored_subject_for(&stream).unwrap()
        );
        assert!(
            message.subject.starts_with("test.events.")
                && message.subject.ends_with(".t_2E1.Order.o_201"),
            "{}",
            message.subject
        );
        let h = |name: &str| {
            message
                .headers
                .get_last(name)
                .map(|v| v.as_str().to_owned())
        };
        assert_eq!(h("Nats-Msg-Id"), Some(recorded.event_id.to_string()));
        assert_eq!(h("traceparent"), command.trace.clone());
        let envelope: serde_json::Value =
            serde_json::from_str(&h("Cqrs-Envelope").expect("envelope header")).expect("JSON");
        let at = envelope["recorded_at"]
            .as_str()
            .expect("recorded_at")
            .to_owned();
        assert_eq!(
            envelope,
            serde_json::json!({
                "type": "Added",
                "version": i + 1,
                // A root command: correlation and causation are the command id, left out.
                "command": command.command_id.to_string(),
                "actor": "user:42",
                "recorded_at": at,
                "extra": {"channel": "web"},
            })
        );
        // Nothing else: tenant, type and id are the subject's, the body is always JSON.
        let mut names: Vec<String> = message.headers.iter().map(|(n, _)| n.to_string()).collect();
        names.sort();
        let mut expected = vec![
            "Cqrs-Envelope",
            "Nats-Batch-Id",
            "Nats-Batch-Sequence",
            "Nats-Msg-Id",
            "traceparent",
        ];
        if i == 0 {
            expected.push("Nats-Expected-Last-Subject-Sequence");
        }
        if i == 2 {
            expected.push("Nats-Batch-Commit");
        }
        expected.sort_unstable();
        assert_eq!(names, expected);
        // Atomic batch headers; the expectation rides on the first message.
        assert_eq!(h("Nats-Batch-Sequence"), Some((i + 1).to_string()));
        assert_eq!(
            h("Nats-Expected-Last-Subject-Sequence").as_deref(),
            (i == 0).then_some("0")
        );
        assert_eq!(
            message.payload.as_ref(),
            format!("{{\"n\":{i}}}").as_bytes()
        );
    }
    let positions: Vec<u64> = committed.events.iter().map(|e| e.position).collect();
    assert_eq!(positions, [1, 2, 3], "a batch is contiguous");
}

const HOSTILE: &[&str] = &[
    "", ".", "*", ">", "a.b", "a.>", " ", "a b", "$SYS", "ünï", "🦀", "_", "__", "x\r\ny",
];

#[tokio::test]
async fn hostile_ids_land_on_their_own_subject_only() {
    let f = fixture().await.expect("fixture");
    for id in HOSTILE {
        for tenant in [None, Some("*"), Some("")] {
            let stream =
                StreamId::new("Order", *id).with_optional_tenant(tenant.map(str::to_owned));
            f.store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![event("Created", 0)],
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("{stream}: {e}"));
        }
    }
    let js_stream = f
        .store
        .jetstream()
        .get_stream("EVENTS_TEST")
        .await
        .expect("stream");
    let subjects: Vec<(String, usize)> = js_stream
        .info_with_subjects("test.events.>")
        .await
        .expect("info")
        .try_collect()
        .await
        .expect("subjects");
    assert_eq!(subjects.len(), HOSTILE.len() * 3, "{subjects:?}");
    let codec = Subjects::new("test").unwrap();
    for (subject, count) in &subjects {
        assert_eq!(*count, 1, "{subject} holds one aggregate's single event");
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(tokens.len(), 6, "{subject}");
        assert!(
            subject
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "{subject}"
        );
        // `parse` insists on the partition the client computes: the server's
        // `{{partition(..)}}` transform put every one of these where the client expects it.
        let (tenant, aggregate_type, id) = codec.parse(subject).expect("parse");
        let stream = StreamId::new(aggregate_type, id).with_optional_tenant(tenant);
        assert_eq!(f.store.stored_subject_for(&stream).unwrap(), *subject);
    }
}

#[tokio::test]
async fn invalid_names_and_oversized_events_are_refused_before_sending() {
    let f = fixture().await.expect("fixture");
    let bad_type = StreamId::new("Order.Line", "1");
    let err = f
        .store
        .append(
            &bad_type,
            ExpectedVersion::NoStream,
            vec![event("E", 0)],
            None,
        )
        .await
        .expect_err("dotted aggregate type");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    let stream = StreamId::new("Order", "big");
    let mut big = event("E", 0);
    big.payload.data = vec![b'x'; 2 * 1024 * 1024];
    let err = f
        .store
        .append(&stream, ExpectedVersion::NoStream, vec![big], None)
        .await
        .expect_err("oversized");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    let long_id = StreamId::new("Order", "é".repeat(600));
    let err = f
        .store
        .append(
            &long_id,
            ExpectedVersion::NoStream,
            vec![event("E", 0)],
            None,
        )
        .await
        .expect_err("subject too long");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    // Metadata travels JSON-escaped in `Cqrs-Envelope`: CR and LF cannot inject a header, and
    // come back as they were.
    let mut injecting = event("E", 0);
    injecting.metadata.actor = Some("evil\r\nNats-Msg-Id: x".to_owned());
    let injected = StreamId::new("Order", "injected");
    f.store
        .append(
            &injected,
            ExpectedVersion::NoStream,
            vec![injecting.clone()],
            None,
        )
        .await
        .expect("metadata with CR LF");
    let loaded = load_all(&f.store, &injected).await.expect("load");
    assert_eq!(
        (loaded[0].event_id, &loaded[0].metadata),
        (injecting.event_id, &injecting.metadata)
    );
    // Only `traceparent` is a header of its own, and refuses them.
    let mut bad_trace = event("E", 0);
    bad_trace.metadata.trace = Some("00-x\r\nNats-Msg-Id: x".to_owned());
    let err = f
        .store
        .append(&stream, ExpectedVersion::NoStream, vec![bad_trace], None)
        .await
        .expect_err("header injection");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    let too_many: Vec<_> = (0..1001).map(|n| event("E", n)).collect();
    let err = f
        .store
        .append(&stream, ExpectedVersion::NoStream, too_many, None)
        .await
        .expect_err("too many");
    assert!(
        matches!(
            err,
            StoreError::TooManyEvents {
                count: 1001,
                max: 1000,
                ..
            }
        ),
        "{err}"
    );
    let exactly_max: Vec<_> = (0..1000).map(|n| event("E", n)).collect();
    let c = f
        .store
        .append(&stream, ExpectedVersion::NoStream, exactly_max, None)
        .await
        .expect("1000 events commit atomically");
    assert_eq!(c.events.last().map(|e| e.version), Some(1000));
    assert_eq!(load_all(&f.store, &stream).await.expect("load").len(), 1000);
}

#[tokio::test]
async fn malformed_messages_are_typed_errors_with_their_position() {
    let f = fixture().await.expect("fixture");
    let subjects = Subjects::new("test").unwrap();
    let id = new_id().to_string();
    let (id2, id3) = (new_id().to_string(), new_id().to_string());
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no-headers", vec![("X", "y")]),
        (
            "bad-uuid",
            vec![
                ("Nats-Msg-Id", "not-a-uuid"),
                ("Cqrs-Event-Type", "E"),
                ("Cqrs-Schema-Version", "1"),
                ("Cqrs-Aggregate-Version", "1"),
                ("Cqrs-Correlation-Id", &id),
            ],
        ),
        (
            "bad-version",
            vec![
                ("Nats-Msg-Id", &id2),
                ("Cqrs-Event-Type", "E"),
                ("Cqrs-Schema-Version", "1"),
                ("Cqrs-Aggregate-Version", "one"),
                ("Cqrs-Correlation-Id", &id),
            ],
        ),
        (
            "gap",
            vec![
                ("Nats-Msg-Id", &id3),
                ("Cqrs-Event-Type", "E"),
                ("Cqrs-Schema-Version", "1"),
                ("Cqrs-Aggregate-Version", "7"),
                ("Cqrs-Correlation-Id", &id),
            ],
        ),
    ];
    for (aggregate, headers) in cases {
        let subject = subjects.aggregate(None, "Order", aggregate).unwrap();
        let sequence = publish_plain(&f.server.url(), &subject, &headers, "{}").await;
        let stream = StreamId::new("Order", aggregate);
        match load_all(&f.store, &stream).await {
            Err(StoreError::MalformedEnvelope { position, reason }) => {
                assert_eq!(position, sequence, "{aggregate}: {reason}");
            }
            other => panic!("{aggregate}: expected MalformedEnvelope, got {other:?}"),
        }
        if aggregate != "gap" {
            // The append reads the last message to learn the version: refused, nothing sent.
            let err = f
                .store
                .append(&stream, ExpectedVersion::Any, vec![event("E", 0)], None)
                .await
                .expect_err("append on a malformed aggregate");
            assert!(matches!(err, StoreError::MalformedEnvelope { .. }), "{err}");
        }
    }
    let all: Result<Events, _> = f
        .store
        .read_all(&EventFilter::all(), 0)
        .await
        .expect("read_all")
        .try_collect()
        .await;
    assert!(
        matches!(all, Err(StoreError::MalformedEnvelope { position: 1, .. })),
        "{all:?}"
    );
}

#[tokio::test]
async fn unknown_event_type_or_version_is_a_typed_decode_error() {
    let f = fixture().await.expect("fixture");
    let subjects = Subjects::new("test").unwrap();
    for (id, event_type, version) in [("c-type", "Bogus", "1"), ("c-version", "Added", "9")] {
        let subject = subjects.aggregate(None, "Counter", id).unwrap();
        let (event_id, correlation) = (new_id().to_string(), new_id().to_string());
        let sequence = publish_plain(
            &f.server.url(),
            &subject,
            &[
                ("Nats-Msg-Id", &event_id),
                ("Cqrs-Event-Type", event_type),
                ("Cqrs-Schema-Version", version),
                ("Cqrs-Aggregate-Version", "1"),
                ("Cqrs-Correlation-Id", &correlation),
            ],
            r#"{"Added":{"amount":1}}"#,
        )
        .await;
        let repo = Repository::<Counter, _>::new(f.store.clone());
        match repo.load(&StreamId::new("Counter", id)).await {
            Err(StoreError::Decode {
                stream,
                version: v,
                position,
                source,
            }) => {
                assert_eq!(stream, StreamId::new("Counter", id));
                assert_eq!((v, position), (1, sequence));
                match (event_type, source) {
                    ("Bogus", DecodeError::UnknownEventType { event_type }) => {
                        assert_eq!(event_type, "Bogus");
                    }
                    (
                        "Added",
                        DecodeError::UnsupportedVersion {
                            event_type,
                            version,
                            ..
                        },
                    ) => {
                        assert_eq!((event_type.as_str(), version), ("Added", 9));
                    }
                    (_, other) => panic!("unexpected decode error {other}"),
                }
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn loads_page_through_long_histories() {
    let server = NatsServer::start().await.expect("server");
    let store = JetStreamEventStore::connect(server.url(), StoreConfig::new("test").load_batch(3))
        .await
        .expect("connect");
    let stream = StreamId::new("Order", "long");
    let other = StreamId::new("Order", "other");
    for n in 0..10u64 {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(n),
                vec![event("E", n)],
                None,
            )
            .await
            .expect("append");
        store
            .append(&other, ExpectedVersion::Any, vec![event("O", n)], None)
            .await
            .expect("append other");
    }
    let loaded = load_all(&store, &stream).await.expect("load");
    assert_eq!(
        loaded.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let after: Events = store
        .load_after(&stream, loaded[6].stream_position())
        .await
        .expect("load_after")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(after, loaded[7..]);
}

/// A long aggregate's tail is read by an ordered consumer after the first page: it must give
/// exactly what paging gives, end on its own, and leave no consumer behind, also when the
/// reader stops early.
#[tokio::test]
async fn long_histories_read_by_a_consumer_match_the_pages() {
    let server = NatsServer::start().await.expect("server");
    let consumer_read = JetStreamEventStore::connect(server.url(), StoreConfig::new("test"))
        .await
        .expect("connect");
    // Pages of 1000: what follows the first page stays under the consumer threshold.
    let paged =
        JetStreamEventStore::connect(server.url(), StoreConfig::new("test").load_batch(1000))
            .await
            .expect("connect");
    let stream = StreamId::new("Order", "long");
    let other = StreamId::new("Order", "other");
    let mut version = 0;
    for round in 0..3u64 {
        let events: Vec<NewEvent> = (0..900).map(|n| event("E", round * 900 + n)).collect();
        consumer_read
            .append(&stream, ExpectedVersion::Exact(version), events, None)
            .await
            .expect("append");
        version += 900;
        consumer_read
            .append(&other, ExpectedVersion::Any, vec![event("O", round)], None)
            .await
            .expect("append other");
    }
    let by_consumer = load_all(&consumer_read, &stream).await.expect("load");
    let by_pages = load_all(&paged, &stream).await.expect("load");
    assert_eq!(
        by_consumer.iter().map(|e| e.version).collect::<Vec<_>>(),
        (1..=2700).collect::<Vec<_>>()
    );
    assert_eq!(by_consumer, by_pages);
    let after: Events = consumer_read
        .load_after(&stream, by_consumer[99].stream_position())
        .await
        .expect("load_after")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(after, by_consumer[100..]);
    let from: Events = consumer_read
        .load(&stream, 2600)
        .await
        .expect("load")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(from, by_consumer[2599..]);
    // A reader that stops in the middle of the tail.
    let mut partial = consumer_read.load(&stream, 1).await.expect("load");
    for _ in 0..600 {
        partial.try_next().await.expect("read").expect("event");
    }
    let js_stream = consumer_read
        .jetstream()
        .get_stream("EVENTS_TEST")
        .await
        .expect("stream");
    // Past the first page of 512, the rest comes from a consumer.
    let mut info = js_stream.clone();
    assert_eq!(info.info().await.expect("info").state.consumer_count, 1);
    drop(partial);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut info = js_stream.clone();
        let consumers = info.info().await.expect("info").state.consumer_count;
        if consumers == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{consumers} load consumers left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `StoreConfig::compressed` makes an S2-compressed stream that stores and loads events like
/// any other; the other setting on the same stream is a conflict, not a silent change.
#[tokio::test]
async fn compressed_streams_store_and_load_events() {
    let server = NatsServer::start().await.expect("server");
    let store =
        JetStreamEventStore::connect(server.url(), StoreConfig::new("zip").compressed(true))
            .await
            .expect("connect");
    let info = store
        .jetstream()
        .get_stream("EVENTS_ZIP")
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(
        info.config.compression,
        Some(jetstream::stream::Compression::S2)
    );
    let stream = StreamId::new("Order", "z");
    let events: Vec<NewEvent> = (0..20).map(|n| event("E", n)).collect();
    let committed = store
        .append(&stream, ExpectedVersion::NoStream, events, None)
        .await
        .expect("append");
    assert_eq!(
        load_all(&store, &stream).await.expect("load"),
        committed.events
    );
    let err = JetStreamEventStore::connect(server.url(), StoreConfig::new("zip"))
        .await
        .expect_err("uncompressed on a compressed stream");
    match err {
        ConnectError::StreamConflict { differences, .. } => {
            assert!(
                differences.iter().any(|d| d.starts_with("compression")),
                "{differences:?}"
            );
        }
        other => panic!("expected StreamConflict, got {other}"),
    }
}

#[tokio::test]
async fn provisioning_creates_verifies_and_refuses_conflicts() {
    let server = NatsServer::start().await.expect("server");
    let first = JetStreamEventStore::connect(server.url(), StoreConfig::new("sales"))
        .await
        .expect("create");
    let info = first
        .jetstream()
        .get_stream("EVENTS_SALES")
        .await
        .expect("stream");
    let config = &info.cached_info().config;
    assert_eq!(config.subjects, ["sales.events.*.*.*", "sales.guards.*"]);
    let transform = config
        .subject_transform
        .as_ref()
        .expect("partition transform");
    assert_eq!(transform.source, "sales.events.*.*.*");
    assert_eq!(
        transform.destination,
        "sales.events.{{partition(8,1,2,3)}}.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}"
    );
    assert!(
        config.allow_atomic_publish
            && config.allow_direct
            && config.allow_message_ttl
            && config.deny_delete
            && config.deny_purge
    );
    assert_eq!(config.duplicate_window, Duration::from_secs(120));
    assert_eq!(config.storage, jetstream::stream::StorageType::File);
    JetStreamEventStore::connect(server.url(), StoreConfig::new("sales"))
        .await
        .expect("an existing matching stream is verified, not recreated");
    let err = JetStreamEventStore::connect(
        server.url(),
        StoreConfig::new("sales").duplicate_window(Duration::from_secs(30)),
    )
    .await
    .expect_err("a different duplicate window conflicts");
    assert!(matches!(err, ConnectError::StreamConflict { .. }), "{err}");
    // The partition count is fixed at creation: another one is refused, not applied.
    let err = JetStreamEventStore::connect(server.url(), StoreConfig::new("sales").partitions(16))
        .await
        .expect_err("a different partition count conflicts");
    match &err {
        ConnectError::StreamConflict { differences, .. } => assert!(
            differences
                .iter()
                .any(|d| d.starts_with("subject_transform") && d.contains("fixed")),
            "{differences:?}"
        ),
        other => panic!("expected StreamConflict, got {other}"),
    }
    // A stream someone created by hand with deletes allowed is refused, and left unchanged.
    first
        .jetstream()
        .create_stream(jetstream::stream::Config {
            name: "EVENTS_BILLING".to_owned(),
            subjects: vec!["billing.events.>".to_owned()],
            ..Default::default()
        })
        .await
        .expect("create by hand");
    let err = JetStreamEventStore::connect(server.url(), StoreConfig::new("billing"))
        .await
        .expect_err("conflicting stream");
    match &err {
        ConnectError::StreamConflict {
            stream,
            differences,
        } => {
            assert_eq!(stream, "EVENTS_BILLING");
            assert!(
                differences.iter().any(|d| d.starts_with("deny_delete")),
                "{differences:?}"
            );
            assert!(
                differences.iter().any(|d| d.starts_with("allow_atomic")),
                "{differences:?}"
            );
        }
        other => panic!("expected StreamConflict, got {other}"),
    }
    let untouched = first
        .jetstream()
        .get_stream("EVENTS_BILLING")
        .await
        .expect("stream");
    assert!(
        !untouched.cached_info().config.deny_delete,
        "never reconfigured silently"
    );
    let err = JetStreamEventStore::connect(server.url(), StoreConfig::new("sales.eu"))
        .await
        .expect_err("invalid context");
    assert!(matches!(err, ConnectError::InvalidConfig(_)), "{err}");
}

/// A stream made before read guards (no carrier subject, no per-message TTLs): a store that may
/// not change it attaches and refuses guarded commits with a typed error saying what to do; one
/// that may updates it in place, keeping its events, and its guards' carriers then expire.
#[tokio::test]
async fn a_stream_made_before_read_guards_is_updated_in_place() {
    let server = NatsServer::start().await.expect("server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let mut earlier = StoreConfig::new("ledger").stream_config();
    earlier.subjects.truncate(1);
    earlier.allow_message_ttl = false;
    js.create_stream(earlier).await.expect("an earlier stream");
    let (a, b) = (StreamId::new("Account", "a"), StreamId::new("Account", "b"));
    let guarded = |expected_a| {
        vec![
            AppendTo::new(a.clone(), expected_a, vec![event("E", 1)]),
            AppendTo::guard(b.clone(), ExpectedVersion::NoStream),
        ]
    };

    let attached = JetStreamEventStore::from_client(
        client.clone(),
        StoreConfig::new("ledger").create_missing(false),
    )
    .await
    .expect("attach to the earlier stream");
    attached
        .append(&a, ExpectedVersion::NoStream, vec![event("E", 0)], None)
        .await
        .expect("plain appends work as before");
    match attached
        .append_all(guarded(ExpectedVersion::Exact(1)), None)
        .await
    {
        Err(StoreError::InvalidInput { stream, reason }) => {
            assert_eq!(stream, b);
            assert!(reason.contains("create_missing(true)"), "{reason}");
        }
        other => panic!("expected InvalidInput naming the guard, got {other:?}"),
    }

    let owner = JetStreamEventStore::from_client(client.clone(), StoreConfig::new("ledger"))
        .await
        .expect("update the earlier stream");
    let config = js
        .get_stream("EVENTS_LEDGER")
        .await
        .expect("stream")
        .cached_info()
        .config
        .clone();
    assert_eq!(config.subjects, ["ledger.events.*.*.*", "ledger.guards.*"]);
    assert!(config.allow_message_ttl && config.deny_delete && config.deny_purge);
    let committed = owner
        .append_all(guarded(ExpectedVersion::Exact(1)), None)
        .await
        .expect("a guarded commit");
    assert_eq!(committed[0].events[0].version, 2);
    assert_eq!(load_all(&owner, &a).await.expect("load").len(), 2);
    // Read while the carrier is still stored: readers see events only.
    let all: Vec<_> = owner
        .read_all(&EventFilter::all(), 1)
        .await
        .expect("read_all")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(all.len(), 2, "readers never see carriers");
    // The carrier is stored with the event and expires on its own: the stream ends up holding
    // the two events only.
    let mut stream = js.get_stream("EVENTS_LEDGER").await.expect("stream");
    let mut messages = u64::MAX;
    for _ in 0..100 {
        messages = stream.info().await.expect("info").state.messages;
        if messages == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(messages, 2, "the guard's carrier expired");
}

/// Stream names on the server, sorted.
async fn stream_names(js: &jetstream::Context) -> Vec<String> {
    let mut names: Vec<String> = js.stream_names().try_collect().await.expect("stream names");
    names.sort();
    names
}

#[tokio::test]
async fn attaching_with_create_missing_false_never_creates_anything() {
    let server = NatsServer::start().await.expect("server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    let attach = || StoreConfig::new("sales").create_missing(false);

    // Nothing there: a typed error naming the context and stream, and still nothing there.
    let err = JetStreamEventStore::from_client(client.clone(), attach())
        .await
        .expect_err("no stream to attach to");
    match &err {
        ConnectError::ContextNotFound { context, stream } => {
            assert_eq!(
                (context.as_str(), stream.as_str()),
                ("sales", "EVENTS_SALES")
            );
        }
        other => panic!("expected ContextNotFound, got {other}"),
    }
    assert!(err.to_string().contains("create_missing(true)"), "{err}");
    assert!(stream_names(&js).await.is_empty());

    // Provisioned once, then the snapshot bucket removed: attaching reads events and has no
    // snapshots, and does not bring the bucket back.
    let owner = JetStreamEventStore::from_client(client.clone(), StoreConfig::new("sales"))
        .await
        .expect("provision");
    let repo = Repository::<Counter, _>::new(owner.clone()).with_snapshots_every(1);
    repo.execute("c-1", CounterCommand::Add(3), CommandMetadata::root())
        .await
        .expect("execute");
    let stream = StreamId::new("Counter", "c-1");
    assert!(owner.load_snapshot(&stream).await.expect("load").is_some());
    assert_eq!(
        stream_names(&js).await,
        ["EVENTS_SALES", "KV_SNAPSHOTS_SALES"]
    );
    js.delete_key_value("SNAPSHOTS_SALES")
        .await
        .expect("delete bucket");
    let reader = JetStreamEventStore::from_client(client.clone(), attach())
        .await
        .expect("attach");
    assert_eq!(load_all(&reader, &stream).await.expect("load").len(), 1);
    assert!(reader.load_snapshot(&stream).await.expect("load").is_none());
    let snapshot = Snapshot {
        stream_position: StreamPosition {
            version: 1,
            position: 1,
        },
        state_version: 1,
        state: b"3".to_vec(),
        taken_at: OffsetDateTime::now_utc(),
    };
    let err = reader
        .save_snapshot(&stream, snapshot.clone())
        .await
        .expect_err("no bucket to save into");
    assert!(
        matches!(
            &err,
            StoreError::Backend {
                operation: "save snapshot",
                ..
            }
        ) && cqrs_core::error::report(&err).contains("SNAPSHOTS_SALES"),
        "{err}"
    );
    // Commands still work (a snapshot is an optimisation the repository only logs).
    Repository::<Counter, _>::new(reader.clone())
        .with_snapshots_every(1)
        .execute("c-1", CounterCommand::Add(1), CommandMetadata::root())
        .await
        .expect("execute without a snapshot bucket");
    assert_eq!(stream_names(&js).await, ["EVENTS_SALES"]);

    // An existing bucket is used when attaching.
    JetStreamEventStore::from_client(client.clone(), StoreConfig::new("sales"))
        .await
        .expect("provision the bucket again");
    let reader = JetStreamEventStore::from_client(client, attach())
        .await
        .expect("attach");
    reader
        .save_snapshot(&stream, snapshot)
        .await
        .expect("save into the existing bucket");
    assert!(reader.load_snapshot(&stream).await.expect("load").is_some());
}

#[tokio::test]
async fn a_server_without_jetstream_is_refused() {
    let server = NatsServer::builder()
        .without_jetstream()
        .start()
        .await
        .expect("server");
    let err = JetStreamEventStore::connect(server.url(), StoreConfig::new("sales"))
        .await
        .expect_err("no JetStream");
    assert!(
        matches!(err, ConnectError::JetStreamDisabled { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn snapshots_of_another_state_version_are_ignored() {
    let f = fixture().await.expect("fixture");
    let repo = Repository::<Counter, _>::new(f.store.clone()).with_snapshots_every(2);
    for n in 1..=5 {
        repo.execute("snap", CounterCommand::Add(n), CommandMetadata::root())
            .await
            .expect("execute");
    }
    let stream = StreamId::new("Counter", "snap");
    let taken = f
        .store
        .load_snapshot(&stream)
        .await
        .expect("load")
        .expect("a snapshot");
    assert_eq!(taken.stream_position.version, 4);
    // An incompatible snapshot (another state version, unreadable state) must not be misread.
    f.store
        .save_snapshot(
            &stream,
            Snapshot {
                stream_position: StreamPosition {
                    version: 5,
                    position: 99,
                },
                state_version: 99,
                state: b"not a counter".to_vec(),
                taken_at: OffsetDateTime::now_utc(),
            },
        )
        .await
        .expect("save");
    let loaded = repo.load(&stream).await.expect("load");
    assert_eq!(
        (loaded.state.value, loaded.version()),
        (15, 5),
        "rebuilt from events"
    );
}

/// A TCP proxy between a client and the server that stops forwarding server -> client traffic
/// the first time the client sends `trigger`, until `release` is called: the client's messages
/// reach the server, the answers do not.
struct Proxy {
    port: u16,
    release: std::sync::Arc<tokio::sync::Notify>,
    triggered: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn start(upstream: u16, trigger: &'static [u8]) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let triggered = std::sync::Arc::new(AtomicBool::new(false));
        let (rel, trig) = (release.clone(), triggered.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .expect("upstream");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let (rel, trig, trig2) = (rel.clone(), trig.clone(), trig.clone());
                tokio::spawn(async move {
                    let mut seen: Vec<u8> = Vec::new();
                    let mut fired = false;
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = client_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        if !fired && seen.windows(trigger.len()).any(|w| w == trigger) {
                            // One-shot: later publishes (retries) go through.
                            fired = true;
                            trig.store(true, Ordering::SeqCst);
                        }
                        let keep = seen.len().saturating_sub(trigger.len());
                        seen.drain(..keep);
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        if trig2.load(Ordering::SeqCst) {
                            rel.notified().await;
                        }
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Self {
            port,
            release,
            triggered,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn release(&self) {
        self.triggered
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.release.notify_waiters();
        self.release.notify_one();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_is_outcome_unknown_and_the_retry_finds_the_original() {
    let server = NatsServer::start().await.expect("server");
    let proxy = Proxy::start(server.port(), b"PUB test.events._.Order.lost-ack").await;
    let store = JetStreamEventStore::connect(
        proxy.url(),
        StoreConfig::new("test").request_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("connect");
    let stream = StreamId::new("Order", "lost-ack");
    let pending = event("Created", 0);
    // The publish reaches the server, its ack (and every later answer) does not.
    let err = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![pending.clone()],
            None,
        )
        .await
        .expect_err("no ack");
    match err {
        StoreError::OutcomeUnknown { event_id, .. } => assert_eq!(event_id, pending.event_id),
        other => panic!("expected OutcomeUnknown, got {other}"),
    }
    proxy.release();
    // The retry (same event id) finds the original instead of writing it twice.
    let retried = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![pending.clone()],
            None,
        )
        .await
        .expect("retry");
    assert!(retried.duplicate);
    assert_eq!(retried.events[0].event_id, pending.event_id);
    assert_eq!(retried.events[0].version, 1);
    assert_eq!(
        load_all(&store, &stream).await.expect("load").len(),
        1,
        "written once"
    );
}

/// The acknowledgement of a multi-aggregate commit is lost: the caller is told the outcome is
/// unknown, and the retry (same event ids) finds both parts instead of writing them again.
#[tokio::test]
async fn a_lost_ack_of_a_multi_aggregate_commit_is_resolved() {
    let server = NatsServer::start().await.expect("server");
    // The commit message goes to the last part's subject: answers stop from there on.
    let proxy = Proxy::start(server.port(), b"PUB test.events._.Account.lost-b").await;
    let store = JetStreamEventStore::connect(
        proxy.url(),
        StoreConfig::new("test").request_timeout(Duration::from_millis(300)),
    )
    .await
    .expect("connect");
    let (a, b) = (
        StreamId::new("Account", "lost-a"),
        StreamId::new("Account", "lost-b"),
    );
    let parts = vec![
        AppendTo::new(
            a.clone(),
            ExpectedVersion::NoStream,
            vec![event("Debited", 0)],
        ),
        AppendTo::new(
            b.clone(),
            ExpectedVersion::NoStream,
            vec![event("Credited", 0)],
        ),
    ];
    let err = store
        .append_all(parts.clone(), None)
        .await
        .expect_err("no ack");
    match err {
        StoreError::OutcomeUnknown { event_id, .. } => {
            assert_eq!(event_id, parts[0].events[0].event_id);
        }
        other => panic!("expected OutcomeUnknown, got {other}"),
    }
    proxy.release();
    let retried = store.append_all(parts.clone(), None).await.expect("retry");
    assert!(retried.iter().all(|c| c.duplicate));
    for (committed, part) in retried.iter().zip(&parts) {
        assert_eq!(committed.events[0].event_id, part.events[0].event_id);
        let stored = load_all(&store, &part.stream).await.expect("load");
        assert_eq!(stored, committed.events, "written once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_ack_is_resolved_by_looking_the_event_up() {
    let server = NatsServer::start().await.expect("server");
    let proxy =
        std::sync::Arc::new(Proxy::start(server.port(), b"PUB test.events._.Order.slow-ack").await);
    let store = JetStreamEventStore::connect(
        proxy.url(),
        StoreConfig::new("test").request_timeout(Duration::from_millis(400)),
    )
    .await
    .expect("connect");
    let stream = StreamId::new("Order", "slow-ack");
    let pending = event("Created", 0);
    // Answers resume after the ack timed out (400 ms) but before the lookup does (800 ms).
    let releaser = {
        let proxy = proxy.clone();
        tokio::spawn(async move {
            while !proxy.triggered.load(std::sync::atomic::Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(600)).await;
            proxy.release();
        })
    };
    let committed = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![pending.clone()],
            None,
        )
        .await
        .expect("resolved by the lookup");
    releaser.await.expect("releaser");
    assert!(!committed.duplicate, "it is this append's own write");
    assert_eq!(committed.events[0].event_id, pending.event_id);
    assert_eq!(load_all(&store, &stream).await.expect("load").len(), 1);
}

/// A fake NATS server that speaks just enough protocol for a client to connect, claiming to be
/// `version` with JetStream.
async fn fake_server(version: &'static str) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let info = format!(
                    "INFO {{\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"{version}\",\"go\":\"go1.24\",\"host\":\"127.0.0.1\",\"port\":{port},\"headers\":true,\"max_payload\":1048576,\"proto\":1,\"jetstream\":true}}\r\n"
                );
                if write.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && write.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn servers_older_than_2_12_1_are_refused_with_what_is_needed() {
    for version in ["2.9.10", "2.11.9", "2.12.0"] {
        let port = fake_server(version).await;
        let err = JetStreamEventStore::connect(
            format!("nats://127.0.0.1:{port}"),
            StoreConfig::new("sales"),
        )
        .await
        .expect_err("old server");
        match &err {
            ConnectError::ServerTooOld { found, required } => {
                assert_eq!((found.as_str(), *required), (version, "2.12.1"));
                assert!(
                    err.to_string()
                        .contains("needs nats-server 2.12.1 or newer"),
                    "{err}"
                );
            }
            other => panic!("expected ServerTooOld for {version}, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_server_crash_and_the_store_reconnects() {
    let mut f = fixture().await.expect("fixture");
    let stream = StreamId::new("Order", "durable");
    let committed = f
        .store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("A", 1), event("B", 2)],
            None,
        )
        .await
        .expect("append");
    f.server
        .restart()
        .await
        .expect("restart on the same store dir");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let loaded = loop {
        match load_all(&f.store, &stream).await {
            Ok(events) => break events,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("load after restart: {e}"),
        }
    };
    assert_eq!(loaded, committed.events);
    let next = f
        .store
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            vec![event("C", 3)],
            None,
        )
        .await
        .expect("append after restart");
    assert_eq!(next.events[0].version, 3);
}

/// The snapshot bucket refuses roll-ups: with async-nats' KV defaults, one message carrying
/// `Nats-Rollup: all` on any key purges every key, so a user allowed to write its own snapshots
/// could wipe everyone's. A bucket made before is hardened by the next store that may provision,
/// and left as it is by one that may not.
#[tokio::test]
async fn the_snapshot_bucket_refuses_roll_ups() {
    let server = NatsServer::start().await.expect("server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    // A bucket as an older version made it: async-nats' defaults, roll-ups allowed.
    js.create_key_value(jetstream::kv::Config {
        bucket: "SNAPSHOTS_SALES".to_owned(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("old bucket");
    let bucket_config = || async {
        js.get_stream("KV_SNAPSHOTS_SALES")
            .await
            .expect("bucket stream")
            .cached_info()
            .config
            .clone()
    };
    assert!(bucket_config().await.allow_rollup);

    let attach = StoreConfig::new("sales").create_missing(false);
    JetStreamEventStore::from_client(
        client.clone(),
        StoreConfig::new("sales").create_missing(true),
    )
    .await
    .expect("provision");
    let hardened = bucket_config().await;
    assert!(
        !hardened.allow_rollup && hardened.deny_purge,
        "{hardened:?}"
    );
    JetStreamEventStore::from_client(client.clone(), attach)
        .await
        .expect("attach");

    // A snapshot of one aggregate, then a roll-up on another key: refused, the snapshot stays.
    let store = JetStreamEventStore::from_client(client.clone(), StoreConfig::new("sales"))
        .await
        .expect("store");
    let repo = Repository::<Counter, _>::new(store.clone()).with_snapshots_every(1);
    repo.execute("c-1", CounterCommand::Add(3), CommandMetadata::root())
        .await
        .expect("execute");
    let stream = StreamId::of::<Counter>("c-1", None);
    assert!(store.load_snapshot(&stream).await.expect("load").is_some());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "all");
    let answer = client
        .request_with_headers("$KV.SNAPSHOTS_SALES._.Counter.other", headers, "{}".into())
        .await
        .expect("answer");
    let text = String::from_utf8_lossy(&answer.payload).to_string();
    assert!(text.contains("rollup"), "{text}");
    assert!(store.load_snapshot(&stream).await.expect("load").is_some());
}

/// A command repeated after the stream's duplicate window, when `Nats-Msg-Id` no longer answers
/// it, and decided again on the state its first attempt produced: the repository and a unit of
/// work look it up in the aggregate's history and answer with the original events, writing
/// nothing new. So does a command with an explicit idempotency key, whose age is unknown.
#[tokio::test]
async fn a_command_repeated_after_the_duplicate_window_writes_nothing_new() {
    let fixture = cqrs_tests::jetstream_with(
        StoreConfig::new("test").duplicate_window(Duration::from_secs(1)),
    )
    .await
    .expect("start nats-server and connect");
    let store = fixture.store.clone();
    let counters = Repository::<Counter, _>::new(store.clone());
    let command = CommandMetadata::root();
    let keyed = CommandMetadata::root().with_idempotency_key("deposit-7");
    let unit = CommandMetadata::root();
    let first = counters
        .execute("late", CounterCommand::Add(1), command.clone())
        .await
        .expect("first");
    let first_keyed = counters
        .execute("late-keyed", CounterCommand::Add(1), keyed.clone())
        .await
        .expect("first, keyed");
    let transfer = |metadata: CommandMetadata| {
        let counters = counters.clone();
        async move {
            let mut transfer = UnitOfWork::new(metadata);
            transfer
                .execute(&counters, "late-a", CounterCommand::Add(2))
                .await
                .expect("a");
            transfer
                .execute(&counters, "late-b", CounterCommand::Add(3))
                .await
                .expect("b");
            transfer
        }
    };
    let first_unit = transfer(unit.clone())
        .await
        .commit(&store)
        .await
        .expect("first unit");

    // Past the server's window (1 s) and past half of it (the repository's bound for ids that
    // carry their time).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = counters
        .execute("late", CounterCommand::Add(1), command)
        .await
        .expect("again");
    assert_eq!(again, first, "the original events");
    let again_keyed = counters
        .execute("late-keyed", CounterCommand::Add(1), keyed)
        .await
        .expect("again, keyed");
    assert_eq!(again_keyed, first_keyed);
    let again_unit = transfer(unit).await.commit(&store).await.expect("again");
    assert!(again_unit.iter().all(|c| c.duplicate));
    assert_eq!(
        again_unit.iter().map(|c| &c.events).collect::<Vec<_>>(),
        first_unit.iter().map(|c| &c.events).collect::<Vec<_>>()
    );
    for id in ["late", "late-keyed", "late-a", "late-b"] {
        let stream = StreamId::new("Counter", id);
        assert_eq!(
            store
                .stream_position(&stream)
                .await
                .expect("position")
                .version,
            1,
            "{id}: nothing new"
        );
    }
}

/// With the server gone, reading the stream is `Unavailable`: the message says what failed, in
/// the store's words, and the client's error is its source (not copied into the message).
#[tokio::test]
async fn an_unavailable_store_keeps_the_client_error_as_its_source() {
    let mut f = cqrs_tests::jetstream_with(
        StoreConfig::new("test").request_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap();
    let stream = StreamId::new("Counter", "gone");
    f.store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Added", 1)],
            None,
        )
        .await
        .unwrap();
    f.server.kill();
    let Err(error) = f.store.read_all(&EventFilter::all(), 0).await else {
        panic!("read_all without a server");
    };
    let StoreError::Unavailable {
        reason,
        source: Some(source),
        ..
    } = &error
    else {
        panic!("expected Unavailable with a source, got {error:?}");
    };
    let cause = source.to_string();
    assert!(!cause.is_empty());
    assert!(!reason.contains(&cause), "{reason} repeats {cause}");
    assert!(!error.to_string().contains(&cause), "{error}");
    let line = cqrs_core::error::report(&error);
    assert_eq!(line.matches(cause.as_str()).count(), 1, "{line}");
}
