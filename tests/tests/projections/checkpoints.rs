//! Restarts resume from the checkpoint; read-your-writes waits for the projection; lag reaches zero.

use super::support::*;
use cqrs_core::projection::catch_up;
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{
    EventFilter, EventStore, ExpectedVersion, HandlerError, Projection, RecordedEvent, StreamId,
};
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, KvReadModelStore,
};
use cqrs_tests::{event, jetstream as fixture};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::Semaphore;

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
