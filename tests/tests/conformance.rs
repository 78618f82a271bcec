//! The store conformance suite: the same behavioural tests against `InMemoryEventStore` and
//! `JetStreamEventStore` (each JetStream test on its own freshly started nats-server).
#![allow(clippy::expect_used, clippy::unwrap_used)]

use cqrs_core::doc::{Counter, CounterCommand};
use cqrs_core::metadata::new_id;
use cqrs_core::{
    AppendTo, CommandError, CommandMetadata, Committed, EventFilter, EventStore, ExpectedVersion,
    IdempotencyKey, Metadata, NewEvent, Repository, Snapshot, StoreError, StreamId, StreamPosition,
    UnitOfWork,
};
use cqrs_tests::event;
use futures::TryStreamExt;
use std::collections::BTreeSet;
use time::OffsetDateTime;

/// Writes each test once and instantiates it for both stores; the tests of the second list read
/// across tenants, which a tenant-scoped store refuses, so they skip that variant.
macro_rules! conformance {
    ($($name:ident),* $(,)?; across_tenants: $($across:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(cqrs_core::InMemoryEventStore::new()).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $across() {
                    super::$across(cqrs_core::InMemoryEventStore::new()).await;
                }
            )*
        }
        mod jetstream {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let fixture = cqrs_tests::jetstream().await.expect("start nats-server and connect");
                    super::$name(fixture.store.clone()).await;
                    drop(fixture);
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $across() {
                    let fixture = cqrs_tests::jetstream().await.expect("start nats-server and connect");
                    super::$across(fixture.store.clone()).await;
                    drop(fixture);
                }
            )*
        }
        /// The JetStream store reading through subject-scoped API subjects only (the read path
        /// for per-tenant permissions: heads by direct get, pages through the tenant read
        /// service), with small pages so that loads span several.
        mod jetstream_scoped {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let config = cqrs_nats::StoreConfig::new("test")
                        .tenant_scoped_reads(true)
                        .load_batch(2);
                    let fixture = cqrs_tests::jetstream_with(config)
                        .await
                        .expect("start nats-server and connect");
                    super::$name(fixture.store.clone()).await;
                    drop(fixture);
                }
            )*
        }
    };
}

conformance!(
    append_and_load_roundtrip,
    expected_version_is_checked,
    racing_writers_exactly_one_wins,
    concurrent_creates_exactly_one_wins,
    racing_batches_are_all_or_nothing,
    retried_append_with_same_key_stores_nothing_new,
    retry_is_recognised_after_the_stream_moved_on,
    key_reused_on_another_stream_is_refused,
    tenants_are_separate_streams,
    load_from_version_and_after_position,
    stream_position_tracks_the_last_event,
    empty_and_oversized_appends_are_refused,
    any_version_appends_stay_gapless,
    snapshots_roundtrip_and_keep_the_newest,
    find_commit_finds_the_original,
    repository_retries_conflicts,
    a_stale_pinned_version_is_a_conflict_before_deciding,
    multi_aggregate_commits_are_all_or_nothing,
    racing_multi_aggregate_commits_are_all_or_nothing,
    retried_multi_aggregate_commit_writes_nothing_new,
    malformed_multi_aggregate_commits_are_refused,
    read_guards_hold_or_conflict_naming_the_guard,
    racing_read_guards_never_commit_after_the_guard_moved,
    a_unit_of_work_transfers_atomically_and_once,
    a_unit_of_work_reads_under_a_guard,
    read_all_of_one_tenant,
    ;
    across_tenants:
    conflicting_batch_stores_none_of_its_events,
    hostile_ids_are_stored_safely,
    versions_are_gapless_and_positions_increase,
    read_all_filters,
    read_all_ends_at_the_head_of_the_call,
);

type Events = Vec<cqrs_core::RecordedEvent>;

async fn load_all<S: EventStore>(store: &S, stream: &StreamId) -> Events {
    store
        .load(stream, 1)
        .await
        .expect("load")
        .try_collect()
        .await
        .expect("read events")
}

async fn read_all<S: EventStore>(store: &S, filter: &EventFilter, from: u64) -> Events {
    store
        .read_all(filter, from)
        .await
        .expect("read_all")
        .try_collect()
        .await
        .expect("read events")
}

fn keyed(key: &IdempotencyKey, count: usize, meta: &Metadata) -> Vec<NewEvent> {
    (0..count)
        .map(|i| NewEvent {
            event_id: key.event_id(i),
            metadata: meta.clone(),
            ..event("Added", i as u64)
        })
        .collect()
}

fn versions(events: &[cqrs_core::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.version).collect()
}

async fn append_and_load_roundtrip<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "o-1").with_tenant("acme");
    let command = CommandMetadata::root()
        .with_tenant("acme")
        .with_actor("user:42")
        .with_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .with_extra("channel", "web");
    let mut meta = command.event_metadata();
    meta.command_causation_id = Some(new_id());
    let events: Vec<NewEvent> = (1..=3)
        .map(|n| NewEvent {
            metadata: meta.clone(),
            ..event("Submitted", n)
        })
        .collect();
    let committed = store
        .append(&stream, ExpectedVersion::NoStream, events.clone(), None)
        .await
        .expect("append");
    assert!(!committed.duplicate);
    assert_eq!(versions(&committed.events), [1, 2, 3]);
    let loaded = load_all(&store, &stream).await;
    assert_eq!(
        loaded, committed.events,
        "load returns what append reported"
    );
    for (stored, sent) in loaded.iter().zip(&events) {
        assert_eq!(stored.event_id, sent.event_id);
        assert_eq!(stored.payload, sent.payload);
        assert_eq!(stored.metadata, sent.metadata);
        assert_eq!(stored.aggregate_type, "Order");
        assert_eq!(stored.aggregate_id, "o-1");
        assert_eq!(stored.stream_id(), stream);
    }
}

async fn versions_are_gapless_and_positions_increase<S: EventStore>(store: S) {
    let a = StreamId::new("Order", "a");
    let b = StreamId::new("Order", "b");
    let mut expected_a = 0;
    for round in 0..3u64 {
        for (stream, expected) in [(&a, &mut expected_a)] {
            let c = store
                .append(
                    stream,
                    ExpectedVersion::Exact(*expected),
                    vec![event("E", round), event("E", round)],
                    None,
                )
                .await
                .expect("append a");
            *expected += 2;
            assert_eq!(c.stream_position().map(|p| p.version), Some(*expected));
        }
        store
            .append(
                &b,
                ExpectedVersion::Exact(round),
                vec![event("E", round)],
                None,
            )
            .await
            .expect("append b");
    }
    let loaded_a = load_all(&store, &a).await;
    assert_eq!(versions(&loaded_a), [1, 2, 3, 4, 5, 6]);
    let all = read_all(&store, &EventFilter::all(), 0).await;
    assert_eq!(all.len(), 9);
    assert!(
        all.windows(2).all(|w| w[0].position < w[1].position),
        "positions increase"
    );
}

async fn expected_version_is_checked<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "o-2");
    let err = store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![event("E", 1)],
            None,
        )
        .await
        .expect_err("no stream yet");
    assert!(err.is_conflict(), "{err}");
    store
        .append(
            &stream,
            ExpectedVersion::Exact(0),
            vec![event("E", 1)],
            None,
        )
        .await
        .expect("create with Exact(0)");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
    ] {
        let err = store
            .append(&stream, expected, vec![event("E", 2)], None)
            .await
            .expect_err("stale expectation");
        match err {
            StoreError::Conflict {
                stream: s,
                expected: e,
                actual,
            } => {
                assert_eq!(s, stream);
                assert_eq!(e, expected);
                assert_eq!(actual, Some(1));
            }
            other => panic!("expected a conflict, got {other}"),
        }
    }
    store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![event("E", 2)],
            None,
        )
        .await
        .expect("right expectation");
    assert_eq!(load_all(&store, &stream).await.len(), 2);
}

/// Runs `writers` concurrent appends of `per_writer` events each with `expected`; returns the
/// outcomes.
async fn race<S: EventStore + Clone>(
    store: &S,
    stream: &StreamId,
    expected: ExpectedVersion,
    writers: usize,
    per_writer: usize,
) -> Vec<Result<Committed, StoreError>> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            let stream = stream.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let events = (0..per_writer)
                    .map(|i| event("Raced", (w * 100 + i) as u64))
                    .collect();
                barrier.wait().await;
                store.append(&stream, expected, events, None).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

fn one_winner(outcomes: &[Result<Committed, StoreError>]) -> &Committed {
    let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one writer wins: {outcomes:?}");
    for outcome in outcomes {
        if let Err(e) = outcome {
            assert!(e.is_conflict(), "losers get Conflict, got {e}");
        }
    }
    winners[0]
}

async fn racing_writers_exactly_one_wins<S: EventStore + Clone>(store: S) {
    let stream = StreamId::new("Account", "acc-1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Opened", 0)],
            None,
        )
        .await
        .expect("create");
    for round in 1..=3u64 {
        let outcomes = race(&store, &stream, ExpectedVersion::Exact(round), 8, 1).await;
        let winner = one_winner(&outcomes);
        assert_eq!(versions(&winner.events), [round + 1]);
    }
    let loaded = load_all(&store, &stream).await;
    assert_eq!(versions(&loaded), [1, 2, 3, 4]);
}

async fn concurrent_creates_exactly_one_wins<S: EventStore + Clone>(store: S) {
    for i in 0..3 {
        let stream = StreamId::new("Account", format!("new-{i}"));
        let outcomes = race(&store, &stream, ExpectedVersion::NoStream, 8, 1).await;
        let winner = one_winner(&outcomes);
        assert_eq!(load_all(&store, &stream).await, winner.events);
    }
}

async fn conflicting_batch_stores_none_of_its_events<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "batch");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Created", 0)],
            None,
        )
        .await
        .expect("create");
    let batch = vec![event("A", 1), event("B", 2), event("C", 3)];
    let err = store
        .append(&stream, ExpectedVersion::Exact(0), batch.clone(), None)
        .await
        .expect_err("stale batch");
    assert!(err.is_conflict(), "{err}");
    let loaded = load_all(&store, &stream).await;
    assert_eq!(
        loaded.len(),
        1,
        "no event of the conflicting batch is stored"
    );
    let all = read_all(&store, &EventFilter::all(), 0).await;
    assert!(
        all.iter()
            .all(|e| batch.iter().all(|b| b.event_id != e.event_id))
    );
}

async fn racing_batches_are_all_or_nothing<S: EventStore + Clone>(store: S) {
    let stream = StreamId::new("Order", "raced-batch");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("Created", 0)],
            None,
        )
        .await
        .expect("create");
    let outcomes = race(&store, &stream, ExpectedVersion::Exact(1), 8, 3).await;
    let winner = one_winner(&outcomes);
    let loaded = load_all(&store, &stream).await;
    assert_eq!(versions(&loaded), [1, 2, 3, 4]);
    assert_eq!(
        loaded[1..],
        winner.events[..],
        "only the winner's three events are stored"
    );
}

async fn retried_append_with_same_key_stores_nothing_new<S: EventStore>(store: S) {
    let meta = Metadata::standalone();
    for count in [1, 3] {
        let stream = StreamId::new("Order", format!("retry-{count}"));
        let key = IdempotencyKey::new(format!("cmd-{count}"));
        let first = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                keyed(&key, count, &meta),
                Some(&key),
            )
            .await
            .expect("first append");
        assert!(!first.duplicate);
        let again = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                keyed(&key, count, &meta),
                Some(&key),
            )
            .await
            .expect("retry");
        assert!(again.duplicate, "the retry is reported as a duplicate");
        assert_eq!(
            again.events, first.events,
            "same versions, positions and ids"
        );
        assert_eq!(
            load_all(&store, &stream).await,
            first.events,
            "nothing new stored"
        );
    }
}

async fn retry_is_recognised_after_the_stream_moved_on<S: EventStore>(store: S) {
    let meta = Metadata::standalone();
    let stream = StreamId::new("Order", "moved-on");
    let key = IdempotencyKey::new("cmd-moved");
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            keyed(&key, 2, &meta),
            Some(&key),
        )
        .await
        .expect("first append");
    store
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            vec![event("Later", 3)],
            None,
        )
        .await
        .expect("another command");
    let again = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            keyed(&key, 2, &meta),
            Some(&key),
        )
        .await
        .expect("retry answers with the original");
    assert!(again.duplicate);
    assert_eq!(again.events, first.events);
    assert_eq!(load_all(&store, &stream).await.len(), 3);
}

async fn key_reused_on_another_stream_is_refused<S: EventStore>(store: S) {
    let meta = Metadata::standalone();
    let key = IdempotencyKey::new("shared-key");
    let a = StreamId::new("Order", "key-a");
    let b = StreamId::new("Order", "key-b");
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            keyed(&key, 1, &meta),
            Some(&key),
        )
        .await
        .expect("first use");
    let err = store
        .append(
            &b,
            ExpectedVersion::NoStream,
            keyed(&key, 1, &meta),
            Some(&key),
        )
        .await
        .expect_err("reuse on another stream");
    match err {
        StoreError::IdempotencyKeyReused {
            key: reused,
            stream,
            original,
        } => {
            assert_eq!(reused, "shared-key");
            assert_eq!(stream, b);
            assert_eq!(original, a);
        }
        other => panic!("expected IdempotencyKeyReused, got {other}"),
    }
    assert!(load_all(&store, &b).await.is_empty());
}

const HOSTILE_IDS: &[&str] = &[
    "",
    ".",
    "..",
    "*",
    ">",
    "a.b",
    "a.*",
    "a.>",
    " ",
    "a b",
    "\t",
    "line\r\nbreak",
    "$SYS",
    "$JS.API",
    "ünïcødé",
    "日本",
    "🦀",
    "_",
    "__",
    "_2E",
    "-",
    "a_b",
    "%2E",
    "\\",
    "/",
    "\0",
];

async fn hostile_ids_are_stored_safely<S: EventStore>(store: S) {
    for (n, id) in HOSTILE_IDS.iter().enumerate() {
        let stream = StreamId::new("Order", *id);
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event("Created", n as u64)],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("append to {id:?}: {e}"));
    }
    for (n, id) in HOSTILE_IDS.iter().enumerate() {
        let stream = StreamId::new("Order", *id);
        let loaded = load_all(&store, &stream).await;
        assert_eq!(loaded.len(), 1, "{id:?} has exactly its own event");
        assert_eq!(loaded[0].aggregate_id, *id);
        assert_eq!(
            loaded[0].payload.data,
            format!("{{\"n\":{n}}}").into_bytes()
        );
    }
    let all = read_all(&store, &EventFilter::all(), 0).await;
    let ids: BTreeSet<_> = all.iter().map(|e| e.aggregate_id.as_str()).collect();
    assert_eq!(
        ids.len(),
        HOSTILE_IDS.len(),
        "every id is its own aggregate"
    );
}

async fn tenants_are_separate_streams<S: EventStore>(store: S) {
    let streams = [
        StreamId::new("Order", "1"),
        StreamId::new("Order", "1").with_tenant(""),
        StreamId::new("Order", "1").with_tenant("acme"),
        StreamId::new("Order", "1").with_tenant("ac.me"),
        StreamId::new("Order", "1").with_tenant("*"),
    ];
    for stream in &streams {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                vec![event("Created", 0)],
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("append to {stream}: {e}"));
    }
    for stream in &streams {
        let loaded = load_all(&store, stream).await;
        assert_eq!(loaded.len(), 1, "{stream}");
        assert_eq!(loaded[0].metadata.tenant, stream.tenant);
        assert_eq!(&loaded[0].stream_id(), stream);
    }
}

async fn load_from_version_and_after_position<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "paged");
    let other = StreamId::new("Order", "interleaved");
    for n in 0..5u64 {
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
            .append(&other, ExpectedVersion::Exact(n), vec![event("O", n)], None)
            .await
            .expect("append other");
    }
    let all = load_all(&store, &stream).await;
    let from3: Events = store
        .load(&stream, 3)
        .await
        .expect("load")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(versions(&from3), [3, 4, 5]);
    let after2: Events = store
        .load_after(&stream, all[1].stream_position())
        .await
        .expect("load_after")
        .try_collect()
        .await
        .expect("read");
    assert_eq!(after2, all[2..]);
    let after_last: Events = store
        .load_after(&stream, all[4].stream_position())
        .await
        .expect("load_after")
        .try_collect()
        .await
        .expect("read");
    assert!(after_last.is_empty());
    let none: Events = store
        .load(&StreamId::new("Order", "missing"), 1)
        .await
        .expect("load")
        .try_collect()
        .await
        .expect("read");
    assert!(none.is_empty());
}

async fn stream_position_tracks_the_last_event<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "pos");
    assert_eq!(
        store.stream_position(&stream).await.expect("position"),
        StreamPosition::default()
    );
    let c = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("E", 1), event("E", 2)],
            None,
        )
        .await
        .expect("append");
    assert_eq!(
        store.stream_position(&stream).await.expect("position"),
        c.events[1].stream_position()
    );
}

async fn empty_and_oversized_appends_are_refused<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "limits");
    let err = store
        .append(&stream, ExpectedVersion::Any, Vec::new(), None)
        .await
        .expect_err("empty append");
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    let too_many: Vec<_> = (0..1001).map(|n| event("E", n)).collect();
    match store
        .append(&stream, ExpectedVersion::Any, too_many, None)
        .await
    {
        // The in-memory store has no batch limit; JetStream refuses before sending.
        Ok(c) => assert_eq!(c.events.len(), 1001),
        Err(StoreError::TooManyEvents { count, max, .. }) => {
            assert_eq!((count, max), (1001, 1000));
            assert!(load_all(&store, &stream).await.is_empty(), "nothing sent");
        }
        Err(other) => panic!("unexpected {other}"),
    }
}

async fn any_version_appends_stay_gapless<S: EventStore + Clone>(store: S) {
    let stream = StreamId::new("Log", "shared");
    let outcomes = race(&store, &stream, ExpectedVersion::Any, 6, 1).await;
    for outcome in &outcomes {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    let loaded = load_all(&store, &stream).await;
    assert_eq!(versions(&loaded), [1, 2, 3, 4, 5, 6]);
}

async fn read_all_filters<S: EventStore>(store: S) {
    let specs = [
        (None, "Order", "1", "Created"),
        (Some("t1"), "Order", "2", "Created"),
        (Some("t2"), "Order", "3", "Shipped"),
        (Some("t1"), "Invoice", "1", "Issued"),
        (None, "Invoice", "2", "Issued"),
    ];
    let mut committed = Vec::new();
    for (tenant, aggregate_type, id, event_type) in specs {
        let stream =
            StreamId::new(aggregate_type, id).with_optional_tenant(tenant.map(str::to_owned));
        let c = store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event(event_type, 0)],
                None,
            )
            .await
            .expect("append");
        committed.extend(c.events);
    }
    let pick = |idx: &[usize]| {
        idx.iter()
            .map(|&i| committed[i].clone())
            .collect::<Events>()
    };
    assert_eq!(read_all(&store, &EventFilter::all(), 0).await, committed);
    assert_eq!(
        read_all(&store, &EventFilter::all().aggregate_type("Order"), 0).await,
        pick(&[0, 1, 2])
    );
    assert_eq!(
        read_all(&store, &EventFilter::all().tenant("t1"), 0).await,
        pick(&[1, 3])
    );
    assert_eq!(
        read_all(
            &store,
            &EventFilter::all()
                .tenant("t1")
                .tenant("t2")
                .aggregate_type("Order"),
            0
        )
        .await,
        pick(&[1, 2])
    );
    assert_eq!(
        read_all(&store, &EventFilter::all().event_type("Issued"), 0).await,
        pick(&[3, 4])
    );
    assert_eq!(
        read_all(
            &store,
            &EventFilter::all().aggregate_type("No.Such.Type"),
            0
        )
        .await,
        Vec::new()
    );
    assert_eq!(
        read_all(&store, &EventFilter::all(), committed[2].position).await,
        pick(&[2, 3, 4])
    );
    assert_eq!(
        read_all(&store, &EventFilter::all(), committed[4].position + 1).await,
        Vec::new()
    );
    let from = committed[3].recorded_at;
    let by_time = read_all(
        &store,
        &EventFilter::all().recorded_between(Some(from), None),
        0,
    )
    .await;
    assert!(by_time.iter().all(|e| e.recorded_at >= from) && by_time.ends_with(&pick(&[3, 4])));
    let until = read_all(
        &store,
        &EventFilter::all().recorded_between(None, Some(OffsetDateTime::UNIX_EPOCH)),
        0,
    )
    .await;
    assert!(until.is_empty());
}

/// `read_all` of one tenant (the read a tenant-scoped store can make): only that tenant's
/// events, narrowed by type, from a position on, ending at the head as of the call.
async fn read_all_of_one_tenant<S: EventStore>(store: S) {
    let mine = StreamId::new("Order", "o-1").with_tenant("t1");
    let other_type = StreamId::new("Invoice", "i-1").with_tenant("t1");
    let theirs = StreamId::new("Order", "o-1").with_tenant("t2");
    let mut committed = Vec::new();
    for (stream, n) in [
        (&mine, 1),
        (&theirs, 2),
        (&other_type, 3),
        (&mine, 4),
        (&mine, 5),
    ] {
        let c = store
            .append(stream, ExpectedVersion::Any, vec![event("E", n)], None)
            .await
            .expect("append");
        committed.push(c.events[0].clone());
    }
    let t1 = EventFilter::all().tenant("t1");
    let pick = |i: &[usize]| i.iter().map(|&i| committed[i].clone()).collect::<Events>();
    assert_eq!(read_all(&store, &t1, 0).await, pick(&[0, 2, 3, 4]));
    assert_eq!(
        read_all(&store, &t1.clone().aggregate_type("Order"), 0).await,
        pick(&[0, 3, 4])
    );
    assert_eq!(
        read_all(&store, &t1, committed[2].position + 1).await,
        pick(&[3, 4])
    );
    let mut reader = store.read_all(&t1, 0).await.expect("read_all");
    let first = reader.try_next().await.expect("first").expect("an event");
    assert_eq!(first, committed[0]);
    store
        .append(&mine, ExpectedVersion::Any, vec![event("E", 6)], None)
        .await
        .expect("append during the read");
    let rest: Events = reader.try_collect().await.expect("rest");
    assert_eq!(
        rest,
        pick(&[2, 3, 4]),
        "the read ends at the head as of the call"
    );
}

async fn read_all_ends_at_the_head_of_the_call<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "head");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("E", 1), event("E", 2)],
            None,
        )
        .await
        .expect("append");
    let mut reader = store
        .read_all(&EventFilter::all(), 0)
        .await
        .expect("read_all");
    let first = reader.try_next().await.expect("first").expect("an event");
    assert_eq!(first.version, 1);
    store
        .append(
            &stream,
            ExpectedVersion::Exact(2),
            vec![event("E", 3)],
            None,
        )
        .await
        .expect("append during the read");
    let rest: Events = reader.try_collect().await.expect("rest");
    assert_eq!(
        versions(&rest),
        [2],
        "the read ends at the head as of the call"
    );
    // A filter that matches nothing ends too.
    assert!(
        read_all(&store, &EventFilter::all().event_type("Nothing"), 0)
            .await
            .is_empty()
    );
}

async fn snapshots_roundtrip_and_keep_the_newest<S: EventStore>(store: S) {
    let stream = StreamId::new("Order", "snap.shot").with_tenant("t 1");
    assert_eq!(store.load_snapshot(&stream).await.expect("load"), None);
    let snapshot = |version: u64, state_version: u32| Snapshot {
        stream_position: StreamPosition {
            version,
            position: version * 10,
        },
        state_version,
        state: format!("{{\"v\":{version}}}").into_bytes(),
        taken_at: OffsetDateTime::UNIX_EPOCH,
    };
    // (saved, then loaded, why): a snapshot replaces an older one of the same state version,
    // never a newer one; one of another state version always replaces it.
    for (saved, loaded, why) in [
        ((5, 1), (5, 1), "the first snapshot is kept"),
        (
            (3, 1),
            (5, 1),
            "an older snapshot does not replace a newer one",
        ),
        ((7, 1), (7, 1), "a newer snapshot replaces an older one"),
        ((2, 2), (2, 2), "a new state version replaces the old one"),
    ] {
        store
            .save_snapshot(&stream, snapshot(saved.0, saved.1))
            .await
            .expect("save");
        assert_eq!(
            store.load_snapshot(&stream).await.expect("load"),
            Some(snapshot(loaded.0, loaded.1)),
            "{why}"
        );
    }
    let other = StreamId::new("Order", "snap.shot");
    assert_eq!(
        store.load_snapshot(&other).await.expect("load"),
        None,
        "tenants do not share snapshots"
    );
}

async fn find_commit_finds_the_original<S: EventStore>(store: S) {
    let meta = Metadata::standalone();
    let stream = StreamId::new("Order", "find");
    let key = IdempotencyKey::new("find-me");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![event("First", 0)],
            None,
        )
        .await
        .expect("append");
    let c = store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            keyed(&key, 2, &meta),
            Some(&key),
        )
        .await
        .expect("append keyed");
    let found = store
        .find_commit(&stream, &key)
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.events, c.events);
    assert!(
        store
            .find_commit(&stream, &IdempotencyKey::new("other"))
            .await
            .expect("find")
            .is_none()
    );
}

/// `with_expected_version` pins the version a command is based on: a stale pin is a conflict
/// even where the newer state would refuse the command (it must not read as a refusal), a pin
/// ahead of the aggregate is one too, and a retry of the pinned command that succeeded gets
/// its original events.
async fn a_stale_pinned_version_is_a_conflict_before_deciding<S: EventStore + Clone>(store: S) {
    use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
    let repo = Repository::<Order, _>::new(store.clone());
    let submit = OrderCommand::Submit {
        items: vec![Item {
            sku: "book".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    };
    repo.execute("o-pin", submit, CommandMetadata::root())
        .await
        .expect("submit");
    let pay = |id: &str| OrderCommand::Pay {
        payment_id: id.into(),
    };
    // Desk A pays, based on version 1.
    let desk_a = CommandMetadata::root().with_expected_version(1);
    let paid = repo
        .execute("o-pin", pay("a"), desk_a.clone())
        .await
        .expect("desk A pays");
    // Desk B, also based on version 1: a paid order refuses `Pay`, but B's answer is a conflict.
    let stale = repo
        .execute(
            "o-pin",
            pay("b"),
            CommandMetadata::root().with_expected_version(1),
        )
        .await
        .expect_err("stale pin");
    match stale {
        CommandError::Store(StoreError::Conflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (ExpectedVersion::Exact(1), Some(2))),
        other => panic!("expected a conflict, got {other}"),
    }
    // A pin ahead of the aggregate.
    let ahead = repo
        .execute(
            "o-pin",
            pay("c"),
            CommandMetadata::root().with_expected_version(5),
        )
        .await
        .expect_err("pin ahead");
    assert!(
        matches!(&ahead, CommandError::Store(e) if e.is_conflict()),
        "{ahead}"
    );
    // Desk A's retry: its original events, nothing new.
    let again = repo
        .execute("o-pin", pay("a"), desk_a)
        .await
        .expect("retry");
    assert_eq!(again, paid);
    assert_eq!(
        repo.load(&StreamId::new("Order", "o-pin"))
            .await
            .expect("load")
            .version(),
        2
    );
}

/// The events of a commit to `a` and `b` whose ids derive from `key`: `n_a` for `a`, then `n_b`
/// for `b`.
fn two_parts(
    key: &IdempotencyKey,
    (a, expected_a, n_a): (&StreamId, ExpectedVersion, usize),
    (b, expected_b, n_b): (&StreamId, ExpectedVersion, usize),
) -> Vec<AppendTo> {
    let ids: Vec<NewEvent> = keyed(key, n_a + n_b, &Metadata::standalone());
    vec![
        AppendTo::new(a.clone(), expected_a, ids[..n_a].to_vec()),
        AppendTo::new(b.clone(), expected_b, ids[n_a..].to_vec()),
    ]
}

/// Accounts `a` and `b`, each opened with one event.
async fn open_two<S: EventStore>(store: &S, a: &str, b: &str) -> (StreamId, StreamId) {
    let (a, b) = (StreamId::new("Account", a), StreamId::new("Account", b));
    for stream in [&a, &b] {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                vec![event("Opened", 0)],
                None,
            )
            .await
            .expect("open");
    }
    (a, b)
}

/// Events for two aggregates go in together, each guarded by its own version; when one version
/// does not hold, the conflict names that aggregate and neither gets anything.
async fn multi_aggregate_commits_are_all_or_nothing<S: EventStore>(store: S) {
    let (a, b) = open_two(&store, "multi-a", "multi-b").await;
    let key = IdempotencyKey::new("transfer-1");
    let committed = store
        .append_all(
            two_parts(
                &key,
                (&a, ExpectedVersion::Exact(1), 1),
                (&b, ExpectedVersion::Exact(1), 2),
            ),
            Some(&key),
        )
        .await
        .expect("commit");
    assert_eq!(committed.len(), 2);
    assert!(committed.iter().all(|c| !c.duplicate));
    assert_eq!(versions(&committed[0].events), [2]);
    assert_eq!(versions(&committed[1].events), [2, 3]);
    let positions: Vec<u64> = committed
        .iter()
        .flat_map(|c| c.events.iter().map(|e| e.position))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[1] == w[0] + 1),
        "one batch, contiguous in the parts' order: {positions:?}"
    );
    assert_eq!(load_all(&store, &a).await[1..], committed[0].events[..]);
    assert_eq!(load_all(&store, &b).await[1..], committed[1].events[..]);

    // `b` moved on: the commit is refused as a whole, and the conflict names `b`.
    let stale = IdempotencyKey::new("transfer-2");
    let err = store
        .append_all(
            two_parts(
                &stale,
                (&a, ExpectedVersion::Exact(2), 1),
                (&b, ExpectedVersion::Exact(1), 1),
            ),
            Some(&stale),
        )
        .await
        .expect_err("stale part");
    match err {
        StoreError::Conflict {
            stream,
            expected,
            actual,
        } => assert_eq!(
            (stream, expected, actual),
            (b.clone(), ExpectedVersion::Exact(1), Some(3))
        ),
        other => panic!("expected a conflict naming {b}, got {other}"),
    }
    assert_eq!(
        versions(&load_all(&store, &a).await),
        [1, 2],
        "nothing for a"
    );
    assert_eq!(
        versions(&load_all(&store, &b).await),
        [1, 2, 3],
        "nothing for b"
    );
}

/// Transfers between two hot accounts race each other and single appends to one of them:
/// whatever wins, every transfer is on both accounts or on neither, and versions stay gapless.
async fn racing_multi_aggregate_commits_are_all_or_nothing<S: EventStore + Clone>(store: S) {
    let (a, b) = open_two(&store, "race-a", "race-b").await;
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let (transfer_store, transfer_a, transfer_b) = (store.clone(), a.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            let (store, a, b) = (transfer_store, transfer_a, transfer_b);
            let key = IdempotencyKey::new(format!("race-transfer-{n}"));
            let mut parts = two_parts(
                &key,
                (&a, ExpectedVersion::Exact(1), 1),
                (&b, ExpectedVersion::Exact(1), 1),
            );
            for part in &mut parts {
                part.events[0].payload.data = format!("{{\"transfer\":{n}}}").into_bytes();
            }
            store.append_all(parts, Some(&key)).await.map(|_| ())
        }));
        let (store, b) = (store.clone(), b.clone());
        tasks.push(tokio::spawn(async move {
            store
                .append(
                    &b,
                    ExpectedVersion::Exact(1),
                    vec![event("Single", n)],
                    None,
                )
                .await
                .map(|_| ())
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(()) => won += 1,
            Err(e) if e.is_conflict() => {}
            Err(other) => panic!("racing writers get conflicts, not {other}"),
        }
    }
    assert_eq!(won, 1, "every writer expected version 1 of b: one wins");
    let (on_a, on_b) = (load_all(&store, &a).await, load_all(&store, &b).await);
    assert_eq!(versions(&on_b), [1, 2]);
    let transfers = |events: &[cqrs_core::RecordedEvent]| -> Vec<Vec<u8>> {
        events
            .iter()
            .filter(|e| e.payload.data.starts_with(b"{\"transfer\""))
            .map(|e| e.payload.data.clone())
            .collect()
    };
    assert_eq!(
        transfers(&on_a),
        transfers(&on_b),
        "a transfer is on both or on neither"
    );
    assert_eq!(on_a.len(), 1 + transfers(&on_a).len());
}

/// A multi-aggregate commit retried with the same key and event ids writes nothing new: with
/// its original versions (now stale) and with current ones.
async fn retried_multi_aggregate_commit_writes_nothing_new<S: EventStore>(store: S) {
    let (a, b) = (
        StreamId::new("Account", "retry-a"),
        StreamId::new("Account", "retry-b"),
    );
    let key = IdempotencyKey::new("open-both");
    let parts = || {
        two_parts(
            &key,
            (&a, ExpectedVersion::NoStream, 2),
            (&b, ExpectedVersion::NoStream, 1),
        )
    };
    let first = store.append_all(parts(), Some(&key)).await.expect("commit");
    let again = store.append_all(parts(), Some(&key)).await.expect("retry");
    assert!(again.iter().all(|c| c.duplicate), "reported as duplicates");
    let strip = |c: &[Committed]| c.iter().map(|c| c.events.clone()).collect::<Vec<_>>();
    assert_eq!(strip(&again), strip(&first));
    assert_eq!(load_all(&store, &a).await, first[0].events);
    assert_eq!(load_all(&store, &b).await, first[1].events);
}

/// Bad shapes are refused before anything is written.
async fn malformed_multi_aggregate_commits_are_refused<S: EventStore>(store: S) {
    let a = StreamId::new("Account", "shape-a");
    let b = StreamId::new("Account", "shape-b");
    let one = || vec![event("E", 0)];
    let cases = [
        vec![],
        // Read guards only: nothing to write.
        vec![
            AppendTo::guard(a.clone(), ExpectedVersion::NoStream),
            AppendTo::guard(b.clone(), ExpectedVersion::NoStream),
        ],
        // A guard needs the version that was read.
        vec![
            AppendTo::new(a.clone(), ExpectedVersion::NoStream, one()),
            AppendTo::guard(b.clone(), ExpectedVersion::Any),
        ],
        // An aggregate both written and guarded.
        vec![
            AppendTo::new(a.clone(), ExpectedVersion::NoStream, one()),
            AppendTo::guard(a.clone(), ExpectedVersion::NoStream),
        ],
        vec![
            AppendTo::new(a.clone(), ExpectedVersion::NoStream, one()),
            AppendTo::new(b.clone(), ExpectedVersion::Any, one()),
        ],
        vec![
            AppendTo::new(a.clone(), ExpectedVersion::NoStream, one()),
            AppendTo::new(a.clone(), ExpectedVersion::NoStream, one()),
        ],
    ];
    for parts in cases {
        let err = store
            .append_all(parts, None)
            .await
            .expect_err("malformed commit");
        assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    }
    assert!(load_all(&store, &a).await.is_empty());
    assert!(load_all(&store, &b).await.is_empty());
}

/// A transfer through a `UnitOfWork`: both accounts move or neither; a unit decided on a state
/// that moved before the commit is a conflict naming that account; a unit run again with the
/// same metadata writes nothing new, also when the new state refuses its commands.
async fn a_unit_of_work_transfers_atomically_and_once<S: EventStore + Clone>(store: S) {
    use examples::bank_account::{AccountCommand, BankAccount};
    let accounts = Repository::<BankAccount, _>::new(store.clone());
    let balances = || async {
        let mut out = Vec::new();
        for id in ["uow-a", "uow-b"] {
            let loaded = accounts
                .load(&StreamId::new("BankAccount", id))
                .await
                .expect("load");
            out.push(loaded.state.balance().expect("open"));
        }
        out
    };
    for id in ["uow-a", "uow-b"] {
        let open = AccountCommand::Open {
            owner: id.into(),
            overdraft_limit: 0,
        };
        accounts
            .execute(id, open, CommandMetadata::root())
            .await
            .expect("open");
    }
    accounts
        .execute(
            "uow-a",
            AccountCommand::Deposit { amount: 100 },
            CommandMetadata::root(),
        )
        .await
        .expect("deposit");
    let transfer = |metadata: CommandMetadata, amount| {
        let accounts = accounts.clone();
        async move {
            let mut unit = UnitOfWork::new(metadata);
            unit.execute(&accounts, "uow-a", AccountCommand::Withdraw { amount })
                .await?;
            unit.execute(&accounts, "uow-b", AccountCommand::Deposit { amount })
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(unit)
        }
    };
    let first = CommandMetadata::root();
    let unit = transfer(first.clone(), 30).await.expect("decide");
    assert_eq!(unit.aggregates().len(), 2);
    let committed = unit.commit(&store).await.expect("commit");
    assert!(committed.iter().all(|c| !c.duplicate));
    assert_eq!(balances().await, [70, 30]);

    // Decided, then `uow-b` moves before the commit: nothing is stored.
    let stale = transfer(CommandMetadata::root(), 10).await.expect("decide");
    accounts
        .execute(
            "uow-b",
            AccountCommand::Deposit { amount: 5 },
            CommandMetadata::root(),
        )
        .await
        .expect("another writer");
    match stale.commit(&store).await.expect_err("stale unit") {
        StoreError::Conflict { stream, .. } => {
            assert_eq!(stream, StreamId::new("BankAccount", "uow-b"));
        }
        other => panic!("expected a conflict naming uow-b, got {other}"),
    }
    assert_eq!(balances().await, [70, 35]);

    // The first transfer again: the same events, nothing new.
    let again = transfer(first, 30).await.expect("decide again");
    let retried = again.commit(&store).await.expect("retry");
    assert!(retried.iter().all(|c| c.duplicate));
    assert_eq!(
        retried.iter().map(|c| c.events.clone()).collect::<Vec<_>>(),
        committed
            .iter()
            .map(|c| c.events.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(balances().await, [70, 35]);

    // Emptying `uow-a`, then the same unit again: `uow-a` now refuses the withdrawal, and the
    // retry still answers with the original commit.
    let all = CommandMetadata::root();
    let unit = transfer(all.clone(), 70).await.expect("decide");
    let emptied = unit.commit(&store).await.expect("commit");
    assert_eq!(balances().await, [0, 105]);
    let again = transfer(all, 70).await.expect("a retry is not refused");
    let retried = again.commit(&store).await.expect("retry");
    assert_eq!(
        retried.iter().map(|c| c.events.clone()).collect::<Vec<_>>(),
        emptied.iter().map(|c| c.events.clone()).collect::<Vec<_>>()
    );
    assert_eq!(balances().await, [0, 105]);
}

async fn repository_retries_conflicts<S: EventStore + Clone>(store: S) {
    let repo = Repository::<Counter, _>::new(store.clone()).with_conflict_retries(20);
    let tasks: Vec<_> = (1..=6u64)
        .map(|n| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.execute("c-1", CounterCommand::Add(n), CommandMetadata::root())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("task")
            .expect("command applied despite conflicts");
    }
    let loaded = repo
        .load(&StreamId::new("Counter", "c-1"))
        .await
        .expect("load");
    assert_eq!(loaded.state.value, 21);
    assert_eq!(loaded.version(), 6);
    // A retried command (same command id) is answered with its original events.
    let command = CommandMetadata::root();
    let first = repo
        .execute("c-2", CounterCommand::Add(5), command.clone())
        .await
        .expect("first");
    let again = repo
        .execute("c-2", CounterCommand::Add(5), command)
        .await
        .expect("retry");
    assert_eq!(first, again);
    assert_eq!(
        repo.load(&StreamId::new("Counter", "c-2"))
            .await
            .expect("load")
            .state
            .value,
        5
    );
}

/// What an append outcome looks like, minus what legitimately differs between stores (the
/// recording time).
#[derive(Debug, PartialEq)]
enum Outcome {
    Committed {
        duplicate: bool,
        events: Vec<(uuid::Uuid, u64, u64, String, Vec<u8>, Metadata)>,
    },
    Conflict {
        expected: ExpectedVersion,
        actual: Option<u64>,
    },
    KeyReused {
        original: StreamId,
    },
    Other(String),
}

fn outcome(result: Result<Committed, StoreError>) -> Outcome {
    match result {
        Ok(c) => Outcome::Committed {
            duplicate: c.duplicate,
            events: c
                .events
                .into_iter()
                .map(|e| {
                    (
                        e.event_id,
                        e.version,
                        e.position,
                        e.payload.event_type,
                        e.payload.data,
                        e.metadata,
                    )
                })
                .collect(),
        },
        Err(StoreError::Conflict {
            expected, actual, ..
        }) => Outcome::Conflict { expected, actual },
        Err(StoreError::IdempotencyKeyReused { original, .. }) => Outcome::KeyReused { original },
        Err(other) => Outcome::Other(other.to_string()),
    }
}

/// A small deterministic generator (no shrinking is needed: a failure prints the operation).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        let index = usize::try_from(self.below(items.len() as u64)).unwrap_or_default();
        &items[index]
    }
}

/// Random sequences of appends (fresh, stale, retried with the same key, the same key on another
/// aggregate) applied to both stores give the same outcomes, positions included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_stores_agree_on_random_operation_sequences() {
    // How often each kind of outcome came up: the sequences must exercise all of them.
    let (mut fresh, mut duplicates, mut conflicts, mut reused) = (0, 0, 0, 0);
    for seed in [1u64, 7, 42] {
        let memory = cqrs_core::InMemoryEventStore::new();
        let fixture = cqrs_tests::jetstream().await.expect("fixture");
        let jetstream = fixture.store.clone();
        let mut rng = Lcg(seed);
        let aggregates: Vec<StreamId> = ["a", "b.c", "*", ""]
            .iter()
            .map(|id| StreamId::new("Order", *id))
            .collect();
        let mut history: Vec<(StreamId, IdempotencyKey, Vec<NewEvent>)> = Vec::new();
        for op in 0..120u64 {
            let (stream, key, events) = if !history.is_empty() && rng.below(4) == 0 {
                // Retry an earlier command, on its own aggregate or (rarely) on another.
                let (stream, key, events) = rng.pick(&history).clone();
                if events.len() == 1 && rng.below(4) == 0 {
                    let other = rng.pick(&aggregates).clone();
                    (other, key, events)
                } else {
                    (stream, key, events)
                }
            } else {
                let stream = rng.pick(&aggregates).clone();
                let key = IdempotencyKey::new(format!("seed{seed}-op{op}"));
                let meta = Metadata::standalone();
                let events = keyed(&key, *rng.pick(&[1, 2, 3]), &meta);
                history.push((stream.clone(), key.clone(), events.clone()));
                (stream, key, events)
            };
            let current = memory
                .stream_position(&stream)
                .await
                .expect("position")
                .version;
            let expected = match rng.below(6) {
                0 => ExpectedVersion::Any,
                1 => ExpectedVersion::NoStream,
                2 => ExpectedVersion::Exact(current + 1),
                3 => ExpectedVersion::Exact(current.saturating_sub(1)),
                _ => ExpectedVersion::Exact(current),
            };
            let on_memory = outcome(
                memory
                    .append(&stream, expected, events.clone(), Some(&key))
                    .await,
            );
            let on_jetstream = outcome(
                jetstream
                    .append(&stream, expected, events, Some(&key))
                    .await,
            );
            assert_eq!(
                on_jetstream, on_memory,
                "seed {seed}, op {op}: append to {stream} expecting {expected} with key {key}"
            );
            match on_memory {
                Outcome::Committed {
                    duplicate: false, ..
                } => fresh += 1,
                Outcome::Committed {
                    duplicate: true, ..
                } => duplicates += 1,
                Outcome::Conflict { .. } => conflicts += 1,
                Outcome::KeyReused { .. } => reused += 1,
                Outcome::Other(_) => {}
            }
        }
        for stream in &aggregates {
            let m: Vec<_> = load_all(&memory, stream)
                .await
                .into_iter()
                .map(|e| (e.event_id, e.version, e.position))
                .collect();
            let j: Vec<_> = load_all(&jetstream, stream)
                .await
                .into_iter()
                .map(|e| (e.event_id, e.version, e.position))
                .collect();
            assert_eq!(j, m, "seed {seed}: history of {stream}");
        }
        drop(fixture);
    }
    assert!(
        fresh > 20 && duplicates > 5 && conflicts > 20 && reused > 0,
        "fresh {fresh}, duplicates {duplicates}, conflicts {conflicts}, reused {reused}"
    );
}

/// A read guard: the commit holds only while the guarded aggregate is at the version that was
/// read, and writes nothing to it. When it moved, the conflict names the guard and nothing is
/// stored; a guarded commit that landed, retried after its guard moved, answers with the
/// originals and writes nothing new.
async fn read_guards_hold_or_conflict_naming_the_guard<S: EventStore>(store: S) {
    use ExpectedVersion::{Exact, NoStream};
    let (a, b) = open_two(&store, "guard-a", "guard-b").await;
    let name = StreamId::new("Username", "guard-name");
    let parts = |key: &IdempotencyKey, on_a, on_b, on_name| {
        vec![
            AppendTo::guard(b.clone(), on_b),
            AppendTo::new(a.clone(), on_a, keyed(key, 1, &Metadata::standalone())),
            AppendTo::guard(name.clone(), on_name),
        ]
    };
    let key = IdempotencyKey::new("guarded-1");
    let committed = store
        .append_all(parts(&key, Exact(1), Exact(1), NoStream), Some(&key))
        .await
        .expect("the guards hold");
    assert_eq!(committed.len(), 3, "one commit per part, guards included");
    assert!(committed[0].events.is_empty() && committed[2].events.is_empty());
    assert_eq!(versions(&committed[1].events), [2]);
    assert_eq!(load_all(&store, &a).await[1..], committed[1].events[..]);
    assert_eq!(
        versions(&load_all(&store, &b).await),
        [1],
        "a guard writes nothing"
    );
    assert!(load_all(&store, &name).await.is_empty());

    // `b` moves on: a commit guarded by `b` at version 1 is refused, naming `b`.
    store
        .append(&b, Exact(1), vec![event("Moved", 0)], None)
        .await
        .expect("b moves");
    let stale = IdempotencyKey::new("guarded-2");
    let attempt = parts(&stale, Exact(2), Exact(1), NoStream);
    assert_refused(&store, attempt, &stale, (&b, Exact(1), 2)).await;
    // The name gets claimed: a commit guarded by its absence is refused, naming it.
    store
        .append(&name, NoStream, vec![event("Claimed", 0)], None)
        .await
        .expect("claim");
    let late = IdempotencyKey::new("guarded-3");
    let attempt = parts(&late, Exact(2), Exact(2), NoStream);
    assert_refused(&store, attempt, &late, (&name, NoStream, 1)).await;
    assert_eq!(
        versions(&load_all(&store, &a).await),
        [1, 2],
        "nothing more for a"
    );

    // The first commit again, though both its guards have moved: the originals, nothing new.
    let again = store
        .append_all(parts(&key, Exact(1), Exact(1), NoStream), Some(&key))
        .await
        .expect("a retry");
    assert!(again.iter().all(|c| c.duplicate), "{again:?}");
    assert_eq!(again[1].events, committed[1].events);
    assert!(again[0].events.is_empty() && again[2].events.is_empty());
    assert_eq!(versions(&load_all(&store, &a).await), [1, 2]);
}

/// Asserts that `parts` are refused with a conflict naming `guard`, expecting `expected`,
/// finding `actual`.
async fn assert_refused<S: EventStore>(
    store: &S,
    parts: Vec<AppendTo>,
    key: &IdempotencyKey,
    (guard, expected, actual): (&StreamId, ExpectedVersion, u64),
) {
    match store.append_all(parts, Some(key)).await {
        Err(StoreError::Conflict {
            stream,
            expected: e,
            actual: a,
        }) => assert_eq!((&stream, e, a), (guard, expected, Some(actual))),
        other => panic!("expected a conflict naming {guard}, got {other:?}"),
    }
}

/// Guarded commits race a writer of the aggregate they guard: every commit that lands was
/// stored before the guarded aggregate moved, every one refused names it and wrote nothing.
async fn racing_read_guards_never_commit_after_the_guard_moved<S: EventStore + Clone>(store: S) {
    let (_, b) = open_two(&store, "race-guard-x", "race-guard-b").await;
    // The guard moves once every writer has made its first commit; they go on until refused.
    let started = std::sync::Arc::new(tokio::sync::Barrier::new(5));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (store, b, started) = (store.clone(), b.clone(), started.clone());
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            for n in 0u64.. {
                let a = StreamId::new("Account", format!("race-guarded-{w}-{n}"));
                let key = IdempotencyKey::new(format!("race-guarded-{w}-{n}"));
                let parts = vec![
                    AppendTo::new(
                        a.clone(),
                        ExpectedVersion::NoStream,
                        keyed(&key, 1, &Metadata::standalone()),
                    ),
                    AppendTo::guard(b.clone(), ExpectedVersion::Exact(1)),
                ];
                let outcome = store.append_all(parts, Some(&key)).await;
                let refused = outcome.is_err();
                outcomes.push((a, outcome));
                if n == 0 {
                    started.wait().await;
                }
                if refused || tokio::time::Instant::now() > deadline {
                    break;
                }
                tokio::task::yield_now().await;
            }
            outcomes
        }));
    }
    let mover = {
        let (store, b) = (store.clone(), b.clone());
        tokio::spawn(async move {
            started.wait().await;
            // A guard being checked may hold the subject for a moment (a clustered stream
            // refuses a second check in flight): try again while `b` is still where it was.
            for _ in 0..100 {
                match store
                    .append(&b, ExpectedVersion::Exact(1), vec![event("Moved", 0)], None)
                    .await
                {
                    Ok(committed) => return committed.events[0].position,
                    Err(e) if e.is_conflict() => tokio::task::yield_now().await,
                    Err(other) => panic!("moving b: {other}"),
                }
            }
            panic!("b never moved");
        })
    };
    let moved_at = mover.await.expect("mover");
    let (mut landed, mut refused) = (0, 0);
    for writer in writers {
        for (a, outcome) in writer.await.expect("writer") {
            match outcome {
                Ok(committed) => {
                    landed += 1;
                    let position = committed[0].events[0].position;
                    assert!(
                        position < moved_at,
                        "{a} landed at {position}, after its guard moved at {moved_at}"
                    );
                }
                Err(StoreError::Conflict { stream, .. }) => {
                    refused += 1;
                    assert_eq!(stream, b, "the conflict names the guard");
                    assert!(load_all(&store, &a).await.is_empty(), "{a} got nothing");
                }
                Err(other) => panic!("guarded writers get conflicts, not {other}"),
            }
        }
    }
    assert!(
        landed >= 4,
        "every writer landed a commit before the guard moved"
    );
    assert_eq!(refused, 4, "every writer ran until its guard refused it");
    assert_eq!(versions(&load_all(&store, &b).await), [1, 2]);
}

/// A unit of work that reads an aggregate it does not change: the commit holds while the
/// aggregate stays as read and is a conflict naming it once it moved; a read aggregate cannot
/// also be commanded in the same unit.
async fn a_unit_of_work_reads_under_a_guard<S: EventStore + Clone>(store: S) {
    let counters = Repository::<Counter, _>::new(store.clone());
    counters
        .execute("uow-limit", CounterCommand::Add(5), CommandMetadata::root())
        .await
        .expect("limit");
    let decide = || async {
        let mut unit = UnitOfWork::new(CommandMetadata::root());
        let limit = unit.read(&counters, "uow-limit").await.expect("read");
        unit.execute(
            &counters,
            "uow-total",
            CounterCommand::Add(limit.state.value),
        )
        .await
        .expect("decide");
        assert_eq!(
            unit.guards().collect::<Vec<_>>(),
            [&StreamId::new("Counter", "uow-limit")]
        );
        unit
    };
    let committed = decide().await.commit(&store).await.expect("commit");
    assert_eq!(committed.len(), 1, "one commit per aggregate with events");
    let total = |counters: &Repository<Counter, S>| {
        let counters = counters.clone();
        async move {
            counters
                .load(&StreamId::new("Counter", "uow-total"))
                .await
                .expect("load")
                .state
                .value
        }
    };
    assert_eq!(total(&counters).await, 5);

    let stale = decide().await;
    counters
        .execute("uow-limit", CounterCommand::Add(1), CommandMetadata::root())
        .await
        .expect("the limit moves");
    match stale.commit(&store).await {
        Err(StoreError::Conflict { stream, .. }) => {
            assert_eq!(stream, StreamId::new("Counter", "uow-limit"));
        }
        other => panic!("expected a conflict naming the read aggregate, got {other:?}"),
    }
    assert_eq!(total(&counters).await, 5, "nothing stored");

    let mut unit = UnitOfWork::new(CommandMetadata::root());
    unit.read(&counters, "uow-limit").await.expect("read");
    let both = unit
        .execute(&counters, "uow-limit", CounterCommand::Add(1))
        .await;
    assert!(
        matches!(
            both,
            Err(CommandError::Store(StoreError::InvalidInput { .. }))
        ),
        "{both:?}"
    );
}
