//! Rebuilds equal the live read model; blue/green switch-over without a gap.

use super::support::*;
use cqrs_core::read_model::{InMemoryReadModelStore, apply_once};
use cqrs_core::{EventFilter, HandlerError, Projection, ReadModelStore, RecordedEvent};
use cqrs_nats::projection::{ReplayFrom, StartFrom, SwitchOver, replay};
use cqrs_nats::{JetStreamEventStore, JetStreamProjectionRunner};
use cqrs_tests::jetstream as fixture;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
