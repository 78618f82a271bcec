//! Several workers of one projection: joining, leaving, crashing and pausing never reorder an aggregate's events, and a paused worker applies nothing after the worker that took over.

use super::support::*;
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{
    EventFilter, EventStore, ExpectedVersion, HandlerError, Projection, RecordedEvent, StreamId,
};
use cqrs_nats::{JetStreamEventStore, JetStreamProjectionRunner};
use cqrs_tests::{event, jetstream as fixture};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

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
