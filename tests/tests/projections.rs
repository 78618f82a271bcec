//! Projections, process managers and read models on JetStream: checkpoints, parking, malformed
//! messages, rebuilds and time travel, two workers of one projection, sagas, read-your-writes
//! and the KV read-model store. Each test starts its own nats-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::items_after_statements,
    clippy::unnecessary_literal_bound,
    clippy::too_many_lines
)]

use cqrs_core::doc::{Counter, CounterCommand, CounterEvent};
use cqrs_core::projection::catch_up;
use cqrs_core::read_model::{
    Applied, InMemoryReadModelStore, ReadModelError, Write, apply_once, apply_once_batch,
};
use cqrs_core::{
    CommandDispatcher, CommandMetadata, EventFilter, EventStore, ExpectedVersion, HandlerError,
    ProcessManager, ProcessManagerProjection, Projection, ReadModelStore, RecordedEvent,
    Repository, RetryPolicy, StoreError, StreamId,
};
use cqrs_nats::async_nats::{self, HeaderMap, jetstream};
use cqrs_nats::projection::{
    Checkpoint, ReplayFrom, StartFrom, SwitchOver, read_checkpoints, replay,
};
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, KvReadModelStore,
    ProjectionConfig,
};
use cqrs_tests::{event, jetstream as fixture};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

const PATIENT: Duration = Duration::from_secs(10);

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

fn config(max_attempts: u32) -> ProjectionConfig {
    ProjectionConfig::new()
        .retry(fast_retry(max_attempts))
        .heartbeat(Duration::from_millis(200))
}

/// The `n` of an event body `{"n": n}`.
fn amount(event: &RecordedEvent) -> Result<u64, HandlerError> {
    #[derive(serde::Deserialize)]
    struct Body {
        n: u64,
    }
    let body: Body =
        serde_json::from_slice(&event.payload.data).map_err(HandlerError::from_error)?;
    Ok(body.n)
}

/// Per aggregate id: the versions applied, with the worker that applied each.
type Seen = HashMap<String, Vec<(u64, usize)>>;

/// Sum of `n` per counter id; fails on purpose for a configured amount (a poison event) while
/// `poison_on` is set; records the versions it applied per aggregate and who applied them.
#[derive(Clone)]
struct Sums<S> {
    name: &'static str,
    model: S,
    poison: Option<u64>,
    poison_on: Arc<AtomicBool>,
    worker: usize,
    seen: Arc<Mutex<Seen>>,
    applied: Arc<AtomicU32>,
    /// Every delivery, those `apply_once` found applied already included.
    deliveries: Arc<AtomicU32>,
}

impl<S> Sums<S> {
    fn new(name: &'static str, model: S) -> Self {
        Self {
            name,
            model,
            poison: None,
            poison_on: Arc::new(AtomicBool::new(true)),
            worker: 0,
            seen: Arc::default(),
            applied: Arc::default(),
            deliveries: Arc::default(),
        }
    }
}

impl<S: ReadModelStore<u64> + Clone> Projection for Sums<S> {
    fn name(&self) -> &str {
        self.name
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Counter")
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let n = amount(event)?;
        if Some(n) == self.poison && self.poison_on.load(Ordering::SeqCst) {
            return Err(HandlerError::new(format!("cannot book {n}")));
        }
        self.deliveries.fetch_add(1, Ordering::SeqCst);
        if apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            old.unwrap_or(0) + n
        })
        .await?
            != Applied::AlreadyApplied
        {
            self.seen
                .lock()
                .unwrap()
                .entry(event.aggregate_id.clone())
                .or_default()
                .push((event.version, self.worker));
            self.applied.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

/// The checkpoints of projection `name`, by partition.
async fn checkpoints(store: &JetStreamEventStore, name: &str) -> BTreeMap<u32, Checkpoint> {
    read_checkpoints(store.jetstream(), store.subjects())
        .await
        .unwrap()
        .remove(name)
        .unwrap_or_default()
}

async fn snapshot<S: ReadModelStore<u64>>(model: &S) -> BTreeMap<String, u64> {
    model
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect()
}

/// Appends `rounds` events to each of `counters` counters, `n` = round * 10 + counter index.
async fn write_history(store: &JetStreamEventStore, counters: usize, rounds: u64) -> u64 {
    let mut last = 0;
    for round in 1..=rounds {
        for c in 0..counters {
            let committed = store
                .append(
                    &StreamId::new("Counter", format!("c{c}")),
                    ExpectedVersion::Any,
                    vec![event("Added", round * 10 + c as u64)],
                    None,
                )
                .await
                .unwrap();
            last = committed.events[0].position;
        }
    }
    last
}

#[tokio::test]
async fn restarted_projection_resumes_from_its_checkpoint() {
    let f = fixture().await.unwrap();
    let head = write_history(&f.store, 3, 10).await;
    assert_eq!(head, 30);

    // Uninterrupted run.
    let reference = Sums::new("sums", InMemoryReadModelStore::new());
    let outcome = catch_up(&f.store, &reference, 0, &fast_retry(1))
        .await
        .unwrap();
    assert_eq!(outcome.checkpoint, head);

    // A run whose handler blocks on event 16; it is stopped while it holds it: the stop
    // finishes the batch holding that event, commits, and reads no more on its partition. The other partitions
    // run on meanwhile.
    struct Blocks {
        inner: Sums<KvReadModelStore<u64>>,
        entered: Arc<Semaphore>,
        gate: Arc<Semaphore>,
    }
    impl Projection for Blocks {
        fn name(&self) -> &str {
            "sums"
        }
        fn filter(&self) -> EventFilter {
            self.inner.filter()
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            if event.position == 16 {
                self.entered.add_permits(1);
                self.gate.acquire().await.unwrap().forget();
            }
            self.inner.apply(event).await
        }
    }
    let model = KvReadModelStore::<u64>::open(f.store.jetstream(), "sums", 1)
        .await
        .unwrap();
    let interrupted = Sums::new("sums", model.clone());
    let (entered, gate) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
    let handle = JetStreamProjectionRunner::spawn(
        &f.store,
        Blocks {
            inner: interrupted.clone(),
            entered: entered.clone(),
            gate: gate.clone(),
        },
        // Small batches: the stop finishes the batch holding event 16, not the partition.
        config(1).max_batch(2),
    )
    .await
    .unwrap();
    tokio::time::timeout(PATIENT, entered.acquire())
        .await
        .unwrap()
        .unwrap()
        .forget();
    // `join!` polls the stop first (it signals at once), then opens the gate.
    let (checkpoint, ()) = tokio::join!(handle.stop(), async { gate.add_permits(1) });
    assert!(checkpoint.unwrap() >= 16);
    let applied_before = interrupted.applied.load(Ordering::SeqCst);
    assert!(
        (16..30).contains(&applied_before),
        "stopped midway: {applied_before}"
    );
    assert_ne!(snapshot(&model).await, snapshot(&reference.model).await);
    // Event 16 was finished and committed before the stop returned.
    let stream_16 = f
        .store
        .jetstream()
        .get_stream("EVENTS_TEST")
        .await
        .unwrap()
        .get_raw_message(16)
        .await
        .unwrap();
    let id_16 = stream_16.subject.rsplit('.').next().unwrap().to_owned();
    assert!(interrupted.seen.lock().unwrap()[&id_16].len() >= 2);

    // Resumed: only the events after the checkpoints arrive, and it ends where the reference
    // did, every aggregate's events once and in order across both runs.
    let resumed = Sums::new("sums", model.clone());
    let handle = JetStreamProjectionRunner::spawn(&f.store, resumed.clone(), config(1))
        .await
        .unwrap();
    handle.wait_for(head, PATIENT).await.unwrap();
    assert_eq!(
        applied_before + resumed.applied.load(Ordering::SeqCst),
        30,
        "every event once over both runs"
    );
    assert_eq!(snapshot(&model).await, snapshot(&reference.model).await);
    for c in 0..3 {
        let id = format!("c{c}");
        let mut versions: Vec<u64> = interrupted
            .seen
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        versions.extend(resumed.seen.lock().unwrap()[&id].iter().map(|(v, _)| *v));
        assert_eq!(versions, (1..=10).collect::<Vec<_>>(), "{id}");
    }

    // Live appends keep flowing, and read-your-writes sees them.
    let live = write_history(&f.store, 1, 1).await;
    handle.wait_for(live, PATIENT).await.unwrap();
    assert_eq!(
        snapshot(&model).await["c0"],
        snapshot(&reference.model).await["c0"] + 10
    );
    assert_eq!(handle.stop().await.unwrap(), live);
}

#[tokio::test]
async fn poison_event_is_parked_and_later_events_still_project() {
    let f = fixture().await.unwrap();
    let append = |id: &'static str, n: u64| add(&f.store, id, n);
    // The poison event between two events of another aggregate of its partition, all written
    // before the runner starts: one batch.
    let partition = |id: &str| {
        f.store
            .stored_subject_for(&StreamId::new("Counter", id))
            .unwrap()
            .split('.')
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let sibling: &'static str = ["c0", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
        .into_iter()
        .find(|id| partition(id) == partition("c1"))
        .unwrap_or_else(|| panic!("no id shares a partition with c1"));
    append(sibling, 1).await;
    let poison_position = append("c1", 13).await;
    append(sibling, 5).await;
    let head = append(sibling, 7).await;

    let mut sums = Sums::new("balances", InMemoryReadModelStore::new());
    sums.poison = Some(13);
    /// Counts the deliveries of the poison event and the largest batch.
    struct Counting(
        Sums<InMemoryReadModelStore<u64>>,
        Arc<AtomicU32>,
        Arc<AtomicU32>,
    );
    impl Projection for Counting {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn filter(&self) -> EventFilter {
            self.0.filter()
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            if amount(event)? == 13 {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
            self.0.apply(event).await
        }
        async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
            self.2
                .fetch_max(u32::try_from(events.len()).unwrap(), Ordering::SeqCst);
            for event in events {
                self.apply(event).await?;
            }
            Ok(())
        }
    }
    let (attempts, largest) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let handle = JetStreamProjectionRunner::spawn(
        &f.store,
        Counting(sums.clone(), attempts.clone(), largest.clone()),
        config(3),
    )
    .await
    .unwrap();
    handle.wait_for(head, PATIENT).await.unwrap();
    assert!(
        largest.load(Ordering::SeqCst) >= 3,
        "delivered in one batch"
    );
    // Once in the batch, then three times on its own after the batch failed.
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    // Parked alone: its neighbours are applied.
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([(sibling.into(), 13)])
    );

    // Listed from the dead-letter stream, with the error, attempts and original position.
    let parked = handle.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].projection, "balances");
    assert_eq!(parked[0].event.position, poison_position);
    assert_eq!(parked[0].event.aggregate_id, "c1");
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].error, "cannot book 13");
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(
        letters[0].subject,
        f.store
            .stored_subject_for(&StreamId::new("Counter", "c1"))
            .unwrap()
    );
    // It sits on `<context>.deadletter.<projection>`, as a plain client sees it.
    let client = async_nats::connect(f.server.url()).await.unwrap();
    let raw = jetstream::new(client)
        .get_stream("DEADLETTER_TEST")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("test.deadletter.balances")
        .await
        .unwrap();
    assert_eq!(
        raw.headers.get("Cqrs-Parked-Error").unwrap().as_str(),
        "cannot book 13"
    );
    assert_eq!(
        raw.headers.get("Cqrs-Parked-Sequence").unwrap().as_str(),
        poison_position.to_string()
    );

    // Replayed while still failing: it stays parked.
    assert_eq!(handle.replay_parked().await.unwrap(), 0);
    assert_eq!(handle.parked().await.unwrap().len(), 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 7);
    // After the fix it succeeds and leaves the dead-letter stream.
    sums.poison_on.store(false, Ordering::SeqCst);
    assert_eq!(handle.replay_parked().await.unwrap(), 1);
    assert!(handle.parked().await.unwrap().is_empty());
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([(sibling.into(), 13), ("c1".into(), 13)])
    );
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_message_is_parked_not_looped_on() {
    let f = fixture().await.unwrap();
    // Another client writes garbage headers on an event subject.
    let client = async_nats::connect(f.server.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "not-a-uuid");
    headers.insert("Cqrs-Aggregate-Version", "zero");
    let bad = js
        .publish_with_headers("test.events._.Counter.bad", headers, "{\"n\":1}".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let head = write_history(&f.store, 2, 1).await;

    let sums = Sums::new("sums", InMemoryReadModelStore::new());
    let handle = JetStreamProjectionRunner::spawn(&f.store, sums.clone(), config(5))
        .await
        .unwrap();
    handle.wait_for(head, PATIENT).await.unwrap();
    assert_eq!(sums.applied.load(Ordering::SeqCst), 2);
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([("c0".into(), 10), ("c1".into(), 11)])
    );
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, bad);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(
        letters[0].subject,
        f.store
            .stored_subject_for(&StreamId::new("Counter", "bad"))
            .unwrap()
    );
    assert!(
        matches!(letters[0].event, Err(StoreError::MalformedEnvelope { position, .. }) if position == bad),
        "{:?}",
        letters[0].event
    );
    assert!(
        letters[0].error.contains("Nats-Msg-Id"),
        "{}",
        letters[0].error
    );
    // Not a readable event: not among the parked events, and a replay skips it.
    assert!(handle.parked().await.unwrap().is_empty());
    assert_eq!(handle.replay_parked().await.unwrap(), 0);
    // Passed once: nothing behind on any partition.
    assert_eq!(handle.lag().await.unwrap().total, 0);
    handle.stop().await.unwrap();

    // A projection name must be usable as a consumer name and a subject token.
    let bad = JetStreamProjectionRunner::spawn(
        &f.store,
        Sums::new("bad.name", InMemoryReadModelStore::new()),
        config(1),
    )
    .await;
    assert!(bad.is_err());
}

#[tokio::test]
async fn rebuild_from_scratch_equals_the_live_read_model() {
    let f = fixture().await.unwrap();
    let live = Sums::new("sums", InMemoryReadModelStore::new());
    let handle = JetStreamProjectionRunner::spawn(&f.store, live.clone(), config(1))
        .await
        .unwrap();
    let head = write_history(&f.store, 4, 6).await;
    handle.wait_for(head, PATIENT).await.unwrap();
    handle.stop().await.unwrap();
    let live_model = snapshot(&live.model).await;
    assert_eq!(live_model.len(), 4);

    // Recreate the consumer from the start, into a fresh read model.
    let rebuilt = Sums::new("sums", InMemoryReadModelStore::new());
    let handle = JetStreamProjectionRunner::rebuild(&f.store, rebuilt.clone(), config(1))
        .await
        .unwrap();
    assert_eq!(handle.checkpoint(), 0);
    handle.wait_for(head, PATIENT).await.unwrap();
    assert_eq!(snapshot(&rebuilt.model).await, live_model);
    assert_eq!(rebuilt.applied.load(Ordering::SeqCst), 24);

    // Time travel through an ordered consumer leaves the live checkpoints alone.
    let before = checkpoints(&f.store, "sums").await;
    let from_start = Sums::new("other", InMemoryReadModelStore::new());
    let outcome = replay(
        &f.store,
        &from_start,
        ReplayFrom::Position(1),
        &fast_retry(1),
    )
    .await
    .unwrap();
    assert_eq!((outcome.checkpoint, outcome.applied), (head, 24));
    assert_eq!(snapshot(&from_start.model).await, live_model);
    let tail = Sums::new("other", InMemoryReadModelStore::new());
    let outcome = replay(&f.store, &tail, ReplayFrom::Position(21), &fast_retry(1))
        .await
        .unwrap();
    assert_eq!(outcome.applied, 4);
    assert_eq!(
        snapshot(&tail.model).await,
        (0..4).map(|c| (format!("c{c}"), 60 + c)).collect()
    );
    // From a point in time: the server's storage time of position 21.
    let stored = f
        .store
        .jetstream()
        .get_stream("EVENTS_TEST")
        .await
        .unwrap()
        .get_raw_message(21)
        .await
        .unwrap();
    let since = Sums::new("other", InMemoryReadModelStore::new());
    let outcome = replay(
        &f.store,
        &since,
        ReplayFrom::Time(stored.time),
        &fast_retry(1),
    )
    .await
    .unwrap();
    assert_eq!(outcome.checkpoint, head);
    assert!((4..=24).contains(&outcome.applied), "{}", outcome.applied);
    assert_eq!(checkpoints(&f.store, "sums").await, before);
    handle.stop().await.unwrap();

    // A new projection built from history by a replay goes live where the replay ended.
    let fresh = Sums::new("fresh", InMemoryReadModelStore::new());
    let outcome = replay(&f.store, &fresh, ReplayFrom::Position(0), &fast_retry(1))
        .await
        .unwrap();
    let live_from = outcome.checkpoint + 1;
    let next = write_history(&f.store, 1, 1).await;
    let going = JetStreamProjectionRunner::spawn(
        &f.store,
        fresh.clone(),
        config(1).start_from(StartFrom::Position(live_from)),
    )
    .await
    .unwrap();
    going.wait_for(next, PATIENT).await.unwrap();
    assert_eq!(fresh.applied.load(Ordering::SeqCst), 24 + 1);
    let mut expected = live_model.clone();
    *expected.get_mut("c0").unwrap() += 10;
    assert_eq!(snapshot(&fresh.model).await, expected);
    going.stop().await.unwrap();
}

/// Appends `n` = from..to to each of 8 counters, concurrently per counter; the last position.
async fn write_concurrently(store: &JetStreamEventStore, from: u64, to: u64) -> u64 {
    let writers = (0..8).map(|c| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for n in from..to {
                last = add(&store, &format!("c{c}"), n).await;
            }
            last
        })
    });
    let mut head = 0;
    for writer in writers {
        head = head.max(writer.await.unwrap());
    }
    head
}

/// How many events `worker` applied.
fn applied_by(seen: &Arc<Mutex<Seen>>, worker: usize) -> usize {
    seen.lock()
        .unwrap()
        .values()
        .flatten()
        .filter(|(_, w)| *w == worker)
        .count()
}

/// Every counter's versions were applied once each, in order.
fn assert_in_order(seen: &Arc<Mutex<Seen>>, counters: usize, versions: u64) {
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), counters);
    for (counter, applied) in &seen {
        let applied: Vec<u64> = applied.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            applied,
            (1..=versions).collect::<Vec<_>>(),
            "{counter}: every event once, in order"
        );
    }
}

/// Workers joining, leaving and crashing while events keep coming, each handling batches: every
/// aggregate's events are applied once each, in order, and a stopped worker gets nothing more.
#[tokio::test]
async fn workers_joining_leaving_and_crashing_never_reorder_one_aggregates_events() {
    let f = fixture().await.unwrap();
    let model = InMemoryReadModelStore::<u64>::new();
    let first = Sums::new("ordered", model.clone());
    let worker = |n: usize| {
        let mut sums = first.clone();
        sums.worker = n;
        sums
    };
    // Batches of up to 8, lingering a little so that they fill under a trickle.
    let batched = || {
        config(1)
            .max_batch(8)
            .batch_linger(Duration::from_millis(2))
    };
    // Each worker on its own connection, as separate processes would be.
    let worker_store = || async {
        JetStreamEventStore::connect(f.server.url(), cqrs_nats::StoreConfig::new("test"))
            .await
            .unwrap()
    };
    let a = JetStreamProjectionRunner::spawn(&worker_store().await, worker(0), batched())
        .await
        .unwrap();
    let b = JetStreamProjectionRunner::spawn(&worker_store().await, worker(1), batched())
        .await
        .unwrap();
    // Both have seen each other: each owns half of the partitions.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let head = write_concurrently(&f.store, 0, 10).await;
    a.wait_for(head, PATIENT).await.unwrap();
    b.wait_for(head, PATIENT).await.unwrap();
    let (by_a, by_b) = (applied_by(&first.seen, 0), applied_by(&first.seen, 1));
    assert_eq!(by_a + by_b, 80);
    assert!(by_a >= 20 && by_b >= 20, "shared: {by_a} + {by_b}");
    // Each counter stayed with one worker.
    for (counter, applied) in first.seen.lock().unwrap().iter() {
        assert!(
            applied.iter().all(|(_, w)| *w == applied[0].1),
            "{counter} moved between workers: {applied:?}"
        );
    }

    // While events keep coming, a third worker joins (partitions move to it) and the first
    // stops (its partitions move to the others): handovers that hand every event over once.
    let writing = {
        let store = f.store.clone();
        tokio::spawn(async move { write_concurrently(&store, 10, 30).await })
    };
    let c = JetStreamProjectionRunner::spawn(&worker_store().await, worker(2), batched())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.stop().await.unwrap();
    let by_a_at_stop = applied_by(&first.seen, 0);
    let head = writing.await.unwrap();
    for runner in [&b, &c] {
        if let Err(e) = runner.wait_for(head, PATIENT).await {
            let info = checkpoints(&f.store, "ordered").await;
            panic!("{e:?}; checkpoints: {info:?}");
        }
    }
    assert_eq!(
        first.deliveries.load(Ordering::SeqCst),
        8 * 30,
        "a graceful handover delivers no event twice"
    );

    // The second crashes while events keep coming: the third takes its partitions once its
    // heartbeats are missed, from their last committed checkpoints.
    let writing = {
        let store = f.store.clone();
        tokio::spawn(async move { write_concurrently(&store, 30, 50).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.abort();
    let head = writing.await.unwrap();
    if let Err(e) = c.wait_for(head, PATIENT).await {
        let info = checkpoints(&f.store, "ordered").await;
        panic!("{e:?}; checkpoints: {info:?}");
    }
    c.stop().await.unwrap();

    assert_in_order(&first.seen, 8, 50);
    assert!(applied_by(&first.seen, 2) > 0, "the new worker got a share");
    assert_eq!(
        applied_by(&first.seen, 0),
        by_a_at_stop,
        "nothing reaches a stopped worker"
    );
    let expected: u64 = (0..50).sum();
    assert!(
        snapshot(&model).await.values().all(|v| *v == expected),
        "{:?}",
        snapshot(&model).await
    );
}

#[tokio::test]
async fn crashed_worker_fails_over_without_reordering() {
    let f = fixture().await.unwrap();
    // A short heartbeat, so that the takeover happens within the test.
    let quick = || config(1).heartbeat(Duration::from_millis(100));
    /// Blocks for ever on the first event after `after` it gets, noting which one it was.
    struct BlocksAfter {
        inner: Sums<InMemoryReadModelStore<u64>>,
        after: u64,
        held: Arc<Mutex<Option<(String, u64)>>>,
        entered: Arc<Semaphore>,
    }
    impl Projection for BlocksAfter {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn filter(&self) -> EventFilter {
            self.inner.filter()
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            if event.position > self.after {
                let first = {
                    let mut held = self.held.lock().unwrap();
                    let first = held.is_none();
                    if first {
                        *held = Some((event.aggregate_id.clone(), event.version));
                    }
                    first
                };
                if first {
                    self.entered.add_permits(1);
                    std::future::pending::<()>().await;
                }
            }
            self.inner.apply(event).await
        }
    }
    let first = Sums::new("failover", InMemoryReadModelStore::new());
    let mut second = first.clone();
    second.worker = 1;
    let head = write_concurrently(&f.store, 0, 2).await;
    let (entered, blocked_on) = (Arc::new(Semaphore::new(0)), Arc::new(Mutex::new(None)));
    let a = JetStreamProjectionRunner::spawn(
        &f.store,
        BlocksAfter {
            inner: first.clone(),
            after: head,
            held: blocked_on.clone(),
            entered: entered.clone(),
        },
        quick(),
    )
    .await
    .unwrap();
    a.wait_for(head, PATIENT).await.unwrap();
    let b = JetStreamProjectionRunner::spawn(&f.store, second, quick())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    write_concurrently(&f.store, 2, 4).await;
    tokio::time::timeout(PATIENT, entered.acquire())
        .await
        .unwrap()
        .unwrap()
        .forget();
    // The first runner dies holding an unacked event.
    a.abort();
    let head = write_concurrently(&f.store, 4, 8).await;
    b.wait_for(head, PATIENT).await.unwrap();
    b.stop().await.unwrap();

    assert_in_order(&first.seen, 8, 8);
    // The held event was applied by the survivor, after the versions before it.
    let (counter, version) = blocked_on.lock().unwrap().clone().unwrap();
    let applied = first.seen.lock().unwrap()[&counter].clone();
    assert_eq!(applied[usize::try_from(version).unwrap() - 1], (version, 1));
}

/// Notes every delivery in one log that the workers share: (worker, position), in the order
/// they happen.
#[derive(Clone)]
struct Logged {
    worker: usize,
    log: Arc<Mutex<Vec<(usize, u64)>>>,
}

impl Projection for Logged {
    fn name(&self) -> &str {
        "paused"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Counter")
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.log.lock().unwrap().push((self.worker, event.position));
        Ok(())
    }
}

/// A worker whose process stands still (here: its whole runtime blocked, as SIGSTOP would) past
/// its lease loses its partitions to another worker; when it wakes up it applies nothing that
/// worker has applied, and it commits nothing over it: it takes partitions again only once
/// they are handed back, from their checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_worker_applies_nothing_after_the_worker_that_took_over() {
    let f = fixture().await.unwrap();
    let log: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let quick = || config(1).heartbeat(Duration::from_millis(100)).max_batch(8);
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (store, writing) = (f.store.clone(), writing.clone());
        tokio::spawn(async move {
            let (mut n, mut head) = (0, 0);
            while writing.load(Ordering::SeqCst) && n < 2000 {
                head = write_concurrently(&store, n, n + 1).await;
                n += 1;
            }
            head
        })
    };

    // Worker 0 runs on a runtime of its own, on its own thread, with its own connection: each
    // receiver sent to it blocks that thread, and with it every task of the worker, until it
    // hears from its sender.
    let (freeze, mut frozen) =
        tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Receiver<()>>();
    let paused = {
        let (url, log) = (f.server.url().clone(), log.clone());
        let config = quick();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let store = JetStreamEventStore::connect(url, cqrs_nats::StoreConfig::new("test"))
                    .await
                    .unwrap();
                let handle =
                    JetStreamProjectionRunner::spawn(&store, Logged { worker: 0, log }, config)
                        .await
                        .unwrap();
                while let Some(thaw) = frozen.recv().await {
                    let _thawed = thaw.recv();
                }
                handle.stop().await.unwrap();
            });
        })
    };
    let by = |worker: usize| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(w, _)| *w == worker)
            .count()
    };
    let deadline = tokio::time::Instant::now() + PATIENT;
    while by(0) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker 0 never got going"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = JetStreamProjectionRunner::spawn(
        &f.store,
        Logged {
            worker: 1,
            log: log.clone(),
        },
        quick(),
    )
    .await
    .unwrap();
    while by(1) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker 1 never got a share"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Worker 0 stands still until worker 1 owns every partition and has worked on them.
    let (thaw, thawed) = std::sync::mpsc::channel();
    freeze.send(thawed).unwrap();
    loop {
        let owners = owners(&f.store, "paused").await;
        if owners.iter().all(|o| o.is_some() && *o == owners[0]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker 1 never took over: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    thaw.send(()).unwrap();
    // Awake, it finds its lease lapsed, rejoins, and gets partitions handed back.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writing.store(false, Ordering::SeqCst);
    let head = writer.await.unwrap();
    other.wait_for(head, PATIENT).await.unwrap();
    drop(freeze);
    tokio::task::spawn_blocking(move || paused.join().unwrap())
        .await
        .unwrap();
    other.stop().await.unwrap();

    let log_of = log.lock().unwrap().clone();
    let mut first_by_1: HashMap<u64, usize> = HashMap::new();
    for (at, (worker, position)) in log_of.iter().enumerate() {
        if *worker == 1 {
            first_by_1.entry(*position).or_insert(at);
        }
    }
    let late: Vec<_> = log_of
        .iter()
        .enumerate()
        .filter(|(at, (worker, position))| {
            *worker == 0 && first_by_1.get(position).is_some_and(|first| first < at)
        })
        .collect();
    assert!(late.is_empty(), "worker 0 applied after worker 1: {late:?}");
    let delivered: BTreeSet<u64> = log_of.iter().map(|(_, p)| *p).collect();
    assert_eq!(delivered.len() as u64, head, "every event delivered");
    assert!(by(0) > 0 && by(1) > 0);
}

/// Running totals per counter as version `version` of projection `totals`, in a read model of
/// its own; nothing is applied while its gate is held shut (write-locked).
#[derive(Clone)]
struct Totals {
    version: u32,
    model: InMemoryReadModelStore<u64>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Totals {
    fn new(version: u32) -> Self {
        Self {
            version,
            model: InMemoryReadModelStore::new(),
            gate: Arc::default(),
        }
    }
}

impl Projection for Totals {
    fn name(&self) -> &str {
        "totals"
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Counter")
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let _open = self.gate.read().await;
        let n = amount(event)?;
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            old.unwrap_or(0) + n
        })
        .await?;
        Ok(())
    }
}

/// Writes rounds `from..` to the 8 counters, a few milliseconds apart, until `running` is
/// cleared; the last round written and position.
fn keep_writing(
    store: &JetStreamEventStore,
    from: u64,
    running: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let (store, running) = (store.clone(), running.clone());
    tokio::spawn(async move {
        let (mut n, mut head) = (from, 0);
        while running.load(Ordering::SeqCst) && n < from + 500 {
            head = write_concurrently(&store, n, n + 1).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (n, head)
    })
}

/// Adds `n` to counters `c0` .. `c<counters - 1>`, one event each; the last position.
async fn add_to_counters(store: &JetStreamEventStore, counters: usize, n: u64) -> u64 {
    let mut last = 0;
    for c in 0..counters {
        last = add(store, &format!("c{c}"), n).await;
    }
    last
}

/// Appends `Added(n)` to counter `id`; its position.
async fn add(store: &JetStreamEventStore, id: &str, n: u64) -> u64 {
    store
        .append(
            &StreamId::new("Counter", id),
            ExpectedVersion::Any,
            vec![event("Added", n)],
            None,
        )
        .await
        .unwrap()
        .events[0]
        .position
}

/// Switches `totals` over to `to` until it is not refused for lagging.
async fn switch_when_caught_up(store: &JetStreamEventStore, to: u32) -> SwitchOver {
    let deadline = tokio::time::Instant::now() + PATIENT;
    loop {
        match JetStreamProjectionRunner::switch_over(store, "totals", to, PATIENT)
            .await
            .unwrap()
        {
            not @ SwitchOver::NotCaughtUp { .. } => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "version {to} never caught up: {not:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done => return done,
        }
    }
}

/// Blue/green: version 2 is built from the first event beside the live version 1 while events
/// keep coming; the switch-over is refused until it has caught up, then (with version 2 a few
/// events behind version 1 at that moment) makes it live only once it holds everything
/// version 1 held, stops version 1 and removes its checkpoints. A reader that looks the live
/// version up before each read never sees a gap or a step back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_over_to_a_caught_up_version_without_a_gap() {
    let f = fixture().await.unwrap();
    let (v1, v2) = (Totals::new(1), Totals::new(2));
    let blue = JetStreamProjectionRunner::spawn(&f.store, v1.clone(), config(1))
        .await
        .unwrap();
    let head = write_concurrently(&f.store, 0, 5).await;
    blue.wait_for(head, PATIENT).await.unwrap();

    let (reading, writing) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicBool::new(true)),
    );
    let reader = {
        let (store, reading) = (f.store.clone(), reading.clone());
        let models = HashMap::from([(1, v1.model.clone()), (2, v2.model.clone())]);
        tokio::spawn(async move {
            let mut reads = Vec::new();
            while reading.load(Ordering::SeqCst) {
                let live = JetStreamProjectionRunner::live_version(&store, "totals")
                    .await
                    .unwrap();
                let total = models[&live].get("c0").await.unwrap().map(|e| e.value);
                reads.push((live, total));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            reads
        })
    };
    let writer = keep_writing(&f.store, 5, &writing);

    // Version 2 is built beside version 1, held back at first: the switch-over is refused.
    let shut = v2.gate.clone().write_owned().await;
    let green = JetStreamProjectionRunner::spawn(&f.store, v2.clone(), config(1))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = JetStreamProjectionRunner::switch_over(&f.store, "totals", 2, PATIENT)
        .await
        .unwrap();
    assert!(
        matches!(refused, SwitchOver::NotCaughtUp { lag, .. } if lag > 0),
        "{refused:?}"
    );
    assert_eq!(
        JetStreamProjectionRunner::live_version(&f.store, "totals")
            .await
            .unwrap(),
        1
    );

    // Let through, it catches up while events keep coming; then it is held again while four
    // more events reach version 1 only, and let through a moment into the switch-over.
    drop(shut);
    tokio::time::sleep(Duration::from_millis(300)).await;
    writing.store(false, Ordering::SeqCst);
    let (rounds, head) = writer.await.unwrap();
    green.wait_for(head, PATIENT).await.unwrap();
    let shut = v2.gate.clone().write_owned().await;
    let last = add_to_counters(&f.store, 4, 1000).await;
    blue.wait_for(last, PATIENT).await.unwrap();
    let opening = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(shut);
    });
    assert_eq!(
        switch_when_caught_up(&f.store, 2).await,
        SwitchOver::Switched {
            from: 1,
            to: 2,
            checkpoints_removed: 8
        }
    );
    opening.await.unwrap();

    // Version 1 stopped by itself, its checkpoints are gone, and it cannot start again.
    let deadline = tokio::time::Instant::now() + PATIENT;
    while !blue.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "version 1 kept running"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(blue.is_retired());
    blue.stop().await.unwrap();
    assert!(checkpoints(&f.store, "totals").await.is_empty());
    assert_eq!(checkpoints(&f.store, "totals_v2").await.len(), 8);
    assert!(
        JetStreamProjectionRunner::spawn(&f.store, v1.clone(), config(1))
            .await
            .is_err(),
        "a retired version does not start again"
    );
    assert_eq!(
        JetStreamProjectionRunner::switch_over(&f.store, "totals", 2, PATIENT)
            .await
            .unwrap(),
        SwitchOver::AlreadyLive { live: 2 }
    );

    // A version 3 that gets stuck half-way through its switch-over: rolled back, and version 2
    // carries on.
    let v3 = Totals::new(3);
    let third = JetStreamProjectionRunner::spawn(&f.store, v3.clone(), config(1))
        .await
        .unwrap();
    let head = write_concurrently(&f.store, rounds, rounds + 1).await;
    third.wait_for(head, PATIENT).await.unwrap();
    green.wait_for(head, PATIENT).await.unwrap();
    let stuck = v3.gate.clone().write_owned().await;
    let last = add_to_counters(&f.store, 2, 1).await;
    green.wait_for(last, PATIENT).await.unwrap();
    assert!(matches!(
        JetStreamProjectionRunner::switch_over(&f.store, "totals", 3, Duration::from_millis(500))
            .await
            .unwrap(),
        SwitchOver::NotCaughtUp { .. }
    ));
    assert_eq!(
        JetStreamProjectionRunner::live_version(&f.store, "totals")
            .await
            .unwrap(),
        2
    );
    let next = write_concurrently(&f.store, rounds + 1, rounds + 2).await;
    green.wait_for(next, PATIENT).await.unwrap();
    assert!(!green.is_finished() && !third.is_finished());
    drop(stuck);
    third.stop().await.unwrap();
    let rounds = rounds + 2;

    // Events keep reaching the live version.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = keep_writing(&f.store, rounds, &writing);
    tokio::time::sleep(Duration::from_millis(200)).await;
    writing.store(false, Ordering::SeqCst);
    let (_, head) = writer.await.unwrap();
    green.wait_for(head, PATIENT).await.unwrap();
    reading.store(false, Ordering::SeqCst);
    let reads = reader.await.unwrap();
    green.stop().await.unwrap();

    // The reader went from version 1 to 2 once, and saw c0's total only ever grow.
    assert!(reads.iter().any(|(live, _)| *live == 1) && reads.iter().any(|(live, _)| *live == 2));
    assert!(
        reads.windows(2).all(|w| w[0].0 <= w[1].0),
        "the live version went back"
    );
    let totals: Vec<u64> = reads
        .iter()
        .map(|(live, total)| total.unwrap_or_else(|| panic!("a gap in version {live}")))
        .collect();
    let back = totals.windows(2).position(|w| w[0] > w[1]);
    assert!(back.is_none(), "a step back at read {back:?}: {reads:?}");
    // Version 2 holds every event.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for event in cqrs_tests::all_events(&f.store).await {
        *expected.entry(event.aggregate_id.clone()).or_default() += amount(&event).unwrap();
    }
    assert_eq!(snapshot(&v2.model).await, expected);
}

/// Bonus workflow: Added(1) -> Add(100); Added(100) -> Add(10).
struct Bonus;

impl ProcessManager for Bonus {
    const NAME: &'static str = "bonus";
    type State = u32;
    type Command = (String, CounterCommand);

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Counter")
    }

    fn react(
        &self,
        steps: u32,
        event: &RecordedEvent,
    ) -> Result<(u32, Vec<(String, CounterCommand)>), HandlerError> {
        let id = event.aggregate_id.clone();
        Ok(match event.payload.decode::<CounterEvent>()? {
            CounterEvent::Added { amount: 1 } => (steps + 1, vec![(id, CounterCommand::Add(100))]),
            CounterEvent::Added { amount: 100 } => (steps + 1, vec![(id, CounterCommand::Add(10))]),
            CounterEvent::Added { .. } => (steps, vec![]),
        })
    }
}

/// Sends commands to the counter repository on JetStream.
struct ToRepository(Repository<Counter, JetStreamEventStore>);

impl CommandDispatcher<(String, CounterCommand)> for ToRepository {
    async fn dispatch(
        &self,
        (id, command): (String, CounterCommand),
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        match self.0.execute(&id, command, metadata).await {
            Ok(_) | Err(cqrs_core::CommandError::Rejected(_)) => Ok(()),
            Err(error) => Err(HandlerError::from_error(error)),
        }
    }
}

#[tokio::test]
async fn saga_commands_carry_correlation_and_causation_across_three_hops() {
    let f = fixture().await.unwrap();
    let repo = Repository::<Counter, _>::new(f.store.clone());
    let states = KvReadModelStore::<u32>::open(f.store.jetstream(), "bonus-states", 1)
        .await
        .unwrap();
    let saga = ProcessManagerProjection::new(Bonus, states.clone(), ToRepository(repo.clone()));
    let handle = JetStreamProjectionRunner::spawn(&f.store, saga, config(3))
        .await
        .unwrap();

    let root = CommandMetadata::root()
        .with_tenant("acme")
        .with_actor("user:1");
    repo.execute("c0", CounterCommand::Add(1), root.clone())
        .await
        .unwrap();
    // Add(1) -> Added(1) -> Add(100) -> Added(100) -> Add(10) -> Added(10).
    let stream = StreamId::new("Counter", "c0").with_tenant("acme");
    let deadline = tokio::time::Instant::now() + PATIENT;
    let mut history = Vec::new();
    for _ in 0..1000 {
        history = repo.history(&stream, 1).await.unwrap();
        if history.len() >= 3 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(history.len(), 3, "the saga did not finish");
    handle.wait_for(history[2].position, PATIENT).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        [1, 100, 10].map(|amount| CounterEvent::Added { amount })
    );
    for event in &history {
        assert_eq!(event.metadata.correlation_id, root.correlation_id);
        assert_eq!(event.metadata.tenant.as_deref(), Some("acme"));
    }
    assert_eq!(history[0].metadata.causation_id, Some(root.command_id));
    assert_eq!(history[0].metadata.command_causation_id, None);
    assert_eq!(
        history[1].metadata.command_causation_id,
        Some(history[0].event_id)
    );
    assert_eq!(
        history[2].metadata.command_causation_id,
        Some(history[1].event_id)
    );
    assert_eq!(
        history[1].metadata.command_id,
        Some(
            CommandMetadata::reaction(Bonus::NAME, &history[0].metadata, history[0].event_id, 0)
                .command_id
        )
    );
    assert_eq!(
        history[2].metadata.command_id,
        Some(
            CommandMetadata::reaction(Bonus::NAME, &history[1].metadata, history[1].event_id, 0)
                .command_id
        )
    );
    // The flow's state sits in KV under the correlation id.
    let state = states
        .get(&root.correlation_id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((state.value, state.position), (2, history[2].position));
    handle.stop().await.unwrap();

    // Delivering the whole history to the saga again (a rebuild) issues the same command ids:
    // nothing new is written.
    let again = ProcessManagerProjection::new(
        Bonus,
        InMemoryReadModelStore::new(),
        ToRepository(repo.clone()),
    );
    let rebuilt = JetStreamProjectionRunner::rebuild(&f.store, again, config(3))
        .await
        .unwrap();
    rebuilt
        .wait_for(history[2].position, PATIENT)
        .await
        .unwrap();
    assert_eq!(repo.history(&stream, 1).await.unwrap().len(), 3);
    rebuilt.stop().await.unwrap();
}

/// [`Sums`] that applies an event only once the test lets one through its gate (a permit per
/// event), under the name of its `Sums`.
struct Gated(Sums<InMemoryReadModelStore<u64>>, Arc<Semaphore>);

impl Projection for Gated {
    fn name(&self) -> &str {
        self.0.name
    }

    fn filter(&self) -> EventFilter {
        self.0.filter()
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.1.acquire().await.unwrap().forget();
        self.0.apply(event).await
    }
}

/// Runs a [`Gated`] projection named `name` whose gate is closed: returns its handle, its sums
/// and the gate.
async fn spawn_gated(
    store: &JetStreamEventStore,
    name: &'static str,
) -> (
    JetStreamProjectionHandle<Gated>,
    Sums<InMemoryReadModelStore<u64>>,
    Arc<Semaphore>,
) {
    let gate = Arc::new(Semaphore::new(0));
    let sums = Sums::new(name, InMemoryReadModelStore::new());
    // One event per batch: progress moves event by event, as the gate lets them through.
    let handle = JetStreamProjectionRunner::spawn(
        store,
        Gated(sums.clone(), gate.clone()),
        config(1).max_batch(1),
    )
    .await
    .unwrap();
    (handle, sums, gate)
}

#[tokio::test]
async fn read_your_writes_waits_for_the_projection() {
    let f = fixture().await.unwrap();
    let (handle, sums, gate) = spawn_gated(&f.store, "gated").await;
    let first = write_history(&f.store, 1, 1).await;
    let position = write_history(&f.store, 1, 1).await;
    assert_eq!((first, position), (1, 2));

    let err = handle
        .wait_for(position, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!((err.wanted, err.reached), (position, 0));
    gate.add_permits(1);
    handle.wait_for(first, PATIENT).await.unwrap();
    let err = handle
        .wait_for(position, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.reached, 1);
    assert_eq!(snapshot(&sums.model).await["c0"], 10);
    gate.add_permits(1);
    handle.wait_for(position, PATIENT).await.unwrap();
    // Once it returns, the read model shows the write.
    assert_eq!(snapshot(&sums.model).await["c0"], 20);

    // A position outside the projection's filter is never delivered to it: waiting for it
    // returns once no partition has an event of the filter before it.
    let other = f
        .store
        .append(
            &StreamId::new("Other", "x"),
            ExpectedVersion::Any,
            vec![event("Added", 1)],
            None,
        )
        .await
        .unwrap()
        .events[0]
        .position;
    handle.wait_for(other, PATIENT).await.unwrap();
    assert_eq!(handle.checkpoint(), position);
    handle.stop().await.unwrap();
}

/// Lag counts the events of the projection's filter that are written and not yet handled, in
/// flight included, per partition; it is 0 once caught up, and readable without a runner.
#[tokio::test]
async fn lag_counts_what_is_not_yet_handled_and_reaches_zero() {
    let f = fixture().await.unwrap();
    let (handle, _sums, gate) = spawn_gated(&f.store, "lagging").await;
    assert_eq!(handle.lag().await.unwrap().total, 0, "nothing written yet");
    // 3 counters x 2 rounds, held at the gate; an event outside the filter does not count.
    let last = write_history(&f.store, 3, 2).await;
    f.store
        .append(
            &StreamId::new("Other", "x"),
            ExpectedVersion::Any,
            vec![event("Added", 1)],
            None,
        )
        .await
        .unwrap();
    let lag = handle.lag().await.unwrap();
    assert_eq!(lag.total, 6, "{lag:?}");
    assert_eq!(lag.partitions.values().sum::<u64>(), 6);
    let partitions: BTreeSet<u32> = (0..3)
        .map(|c| {
            let stored = f
                .store
                .stored_subject_for(&StreamId::new("Counter", format!("c{c}")))
                .unwrap();
            stored.split('.').nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert!(
        lag.partitions
            .iter()
            .all(|(p, n)| (*n == 0) != partitions.contains(p)),
        "lag where the counters are not, or none where they are: {lag:?} {partitions:?}"
    );
    gate.add_permits(6);
    handle.wait_for(last, PATIENT).await.unwrap();
    assert_eq!(
        handle.lag().await.unwrap(),
        JetStreamProjectionRunner::lag(&f.store, "lagging")
            .await
            .unwrap()
    );
    assert_eq!(handle.lag().await.unwrap().total, 0);
    handle.stop().await.unwrap();

    // Without a runner, the events written since count.
    write_history(&f.store, 1, 3).await;
    let lag = JetStreamProjectionRunner::lag(&f.store, "lagging")
        .await
        .unwrap();
    assert_eq!(lag.total, 3, "{lag:?}");
    let none = JetStreamProjectionRunner::lag(&f.store, "never-ran")
        .await
        .unwrap();
    assert_eq!(none, cqrs_nats::projection::Lag::default());
}

#[tokio::test]
async fn kv_read_model_store_compare_and_set() {
    let f = fixture().await.unwrap();
    let store = KvReadModelStore::<Vec<String>>::open(f.store.jetstream(), "model", 1)
        .await
        .unwrap();
    assert!(store.get("k").await.unwrap().is_none());
    let r1 = store.put("k", vec!["a".into()], 3, None).await.unwrap();
    let err = store.put("k", vec![], 4, None).await.unwrap_err();
    assert!(
        matches!(err, ReadModelError::Conflict { expected: None, .. }),
        "{err}"
    );
    let err = store.put("k", vec![], 4, Some(r1 + 7)).await.unwrap_err();
    assert!(matches!(err, ReadModelError::Conflict { .. }), "{err}");
    let r2 = store
        .put("k", vec!["a".into(), "b".into()], 4, Some(r1))
        .await
        .unwrap();
    assert!(r2 > r1);
    let entry = store.get("k").await.unwrap().unwrap();
    assert_eq!(
        (entry.value, entry.position, entry.revision),
        (vec!["a".to_owned(), "b".to_owned()], 4, r2)
    );
    // A stale revision after a newer write is refused.
    let err = store.put("k", vec![], 5, Some(r1)).await.unwrap_err();
    assert!(matches!(err, ReadModelError::Conflict { expected: Some(r), .. } if r == r1));

    // A batch: each write stands alone, a conflict on one leaves the others written.
    let outcomes = store
        .put_batch(vec![
            Write {
                key: "k".into(),
                value: vec![],
                position: 5,
                expected_revision: Some(r1),
            },
            Write {
                key: "k2".into(),
                value: vec!["x".into()],
                position: 6,
                expected_revision: None,
            },
            Write {
                key: "k3".into(),
                value: vec!["y".into()],
                position: 7,
                expected_revision: None,
            },
        ])
        .await;
    assert!(matches!(outcomes[0], Err(ReadModelError::Conflict { .. })));
    assert!(outcomes[1].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert_eq!(store.get("k3").await.unwrap().unwrap().value, ["y"]);
    assert_eq!(store.get("k").await.unwrap().unwrap().revision, r2);
    // Folded per key through the batch helper: two events of `k2`, one write.
    let applied = apply_once_batch(
        &store,
        [("k2".to_owned(), 8, "p"), ("k2".to_owned(), 9, "q")],
        |old: Option<Vec<String>>, s: &&str| {
            let mut v = old.unwrap_or_default();
            v.push((*s).to_owned());
            v
        },
    )
    .await
    .unwrap();
    assert_eq!(applied, 2);
    let k2 = store.get("k2").await.unwrap().unwrap();
    assert_eq!(
        (k2.value, k2.position),
        (vec!["x".to_owned(), "p".into(), "q".into()], 9)
    );

    // Keys are arbitrary strings, listed back exactly.
    let odd = "order.1 *>é";
    store.put(odd, vec![], 9, None).await.unwrap();
    store.put("", vec!["empty".into()], 9, None).await.unwrap();
    let keys: Vec<String> = store
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["", "k", "k2", "k3", odd]);

    // `apply_once` on KV: a redelivered position is skipped; racing writers both land.
    let counts = KvReadModelStore::<u64>::open(f.store.jetstream(), "counts", 1)
        .await
        .unwrap();
    assert_eq!(
        apply_once(&counts, "c", 1, |old| old.unwrap_or(0) + 1)
            .await
            .unwrap(),
        Applied::Written(1)
    );
    assert_eq!(
        apply_once(&counts, "c", 1, |old| old.unwrap_or(0) + 1)
            .await
            .unwrap(),
        Applied::AlreadyApplied
    );
    let racers = (2..=5).map(|position| {
        let counts = counts.clone();
        tokio::spawn(async move {
            apply_once(&counts, "d", position, |old| old.unwrap_or(0) + position).await
        })
    });
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    let d = counts.get("d").await.unwrap().unwrap();
    // Each racer either wrote or found a higher position already there.
    assert!(d.value >= 5 && d.position == 5, "{d:?}");
    // A value of another shape is a codec error, not a panic.
    let wrong = KvReadModelStore::<Vec<String>>::open(f.store.jetstream(), "counts", 1)
        .await
        .unwrap();
    assert!(matches!(
        wrong.get("c").await,
        Err(ReadModelError::Codec { .. })
    ));
}

/// The owner of each partition of `projection`, by its checkpoint.
async fn owners(store: &JetStreamEventStore, projection: &str) -> Vec<Option<String>> {
    let checkpoints = checkpoints(store, projection).await;
    (0..store.subjects().partitions())
        .map(|k| checkpoints.get(&k).and_then(|c| c.owner.clone()))
        .collect()
}

#[tokio::test]
async fn a_joining_worker_leaves_the_partitions_it_does_not_get_alone() {
    let f = fixture().await.unwrap();
    let first = Sums::new("joining", InMemoryReadModelStore::new());
    let mut second = first.clone();
    second.worker = 1;
    let a = JetStreamProjectionRunner::spawn(&f.store, first.clone(), config(1))
        .await
        .unwrap();
    // Events on every partition.
    let head = write_concurrently(&f.store, 0, 2).await;
    for n in 0..64 {
        f.store
            .append(
                &StreamId::new("Counter", format!("spread-{n}")),
                ExpectedVersion::NoStream,
                vec![event("Added", 1)],
                None,
            )
            .await
            .unwrap();
    }
    let head = head.max(64);
    a.wait_for(head, PATIENT).await.unwrap();
    let before = owners(&f.store, "joining").await;
    assert!(before.iter().all(Option::is_some), "{before:?}");

    let b = JetStreamProjectionRunner::spawn(&f.store, second, config(1))
        .await
        .unwrap();
    // The second worker takes every other partition; the first keeps the rest.
    let deadline = tokio::time::Instant::now() + PATIENT;
    while cqrs_nats::projection::live_workers(f.store.jetstream(), f.store.subjects())
        .await
        .unwrap()
        .get("joining")
        .copied()
        .unwrap_or(0)
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second worker never joined"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = owners(&f.store, "joining").await;
    for k in 0..before.len() {
        if k % 2 == 0 {
            assert_eq!(
                after[k], before[k],
                "partition {k} stayed with the first worker"
            );
        } else {
            assert!(
                after[k].is_some() && after[k] != before[k],
                "partition {k} moved to the second worker: {after:?}"
            );
        }
    }
    b.stop().await.unwrap();
    a.stop().await.unwrap();
}
