//! What the projection tests share: configurations, the `Sums` projection, readers of checkpoints and read models, and history writers.

use cqrs_core::read_model::{Applied, apply_once};
use cqrs_core::{
    EventFilter, EventStore, ExpectedVersion, HandlerError, Projection, ReadModelStore,
    RecordedEvent, RetryPolicy, StreamId,
};
use cqrs_nats::projection::{Checkpoint, read_checkpoints};
use cqrs_nats::{JetStreamEventStore, ProjectionConfig};
use cqrs_tests::event;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub(crate) const PATIENT: Duration = Duration::from_secs(10);

pub(crate) fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

pub(crate) fn config(max_attempts: u32) -> ProjectionConfig {
    ProjectionConfig::new()
        .retry(fast_retry(max_attempts))
        .heartbeat(Duration::from_millis(200))
}

/// The `n` of an event body `{"n": n}`.
pub(crate) fn amount(event: &RecordedEvent) -> Result<u64, HandlerError> {
    #[derive(serde::Deserialize)]
    struct Body {
        n: u64,
    }
    let body: Body =
        serde_json::from_slice(&event.payload.data).map_err(HandlerError::from_error)?;
    Ok(body.n)
}

/// Per aggregate id: the versions applied, with the worker that applied each.
pub(crate) type Seen = HashMap<String, Vec<(u64, usize)>>;

/// Sum of `n` per counter id; fails on purpose for a configured amount (a poison event) while
/// `poison_on` is set; records the versions it applied per aggregate and who applied them.
#[derive(Clone)]
pub(crate) struct Sums<S> {
    pub(crate) name: &'static str,
    pub(crate) model: S,
    pub(crate) poison: Option<u64>,
    pub(crate) poison_on: Arc<AtomicBool>,
    pub(crate) worker: usize,
    pub(crate) seen: Arc<Mutex<Seen>>,
    pub(crate) applied: Arc<AtomicU32>,
    /// Every delivery, those `apply_once` found applied already included.
    pub(crate) deliveries: Arc<AtomicU32>,
}

impl<S> Sums<S> {
    pub(crate) fn new(name: &'static str, model: S) -> Self {
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
pub(crate) async fn checkpoints(
    store: &JetStreamEventStore,
    name: &str,
) -> BTreeMap<u32, Checkpoint> {
    read_checkpoints(store.jetstream(), store.subjects())
        .await
        .unwrap()
        .remove(name)
        .unwrap_or_default()
}

pub(crate) async fn snapshot<S: ReadModelStore<u64>>(model: &S) -> BTreeMap<String, u64> {
    model
        .entries()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect()
}

/// Appends `rounds` events to each of `counters` counters, `n` = round * 10 + counter index.
pub(crate) async fn write_history(
    store: &JetStreamEventStore,
    counters: usize,
    rounds: u64,
) -> u64 {
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

/// Appends `n` = from..to to each of 8 counters, concurrently per counter; the last position.
pub(crate) async fn write_concurrently(store: &JetStreamEventStore, from: u64, to: u64) -> u64 {
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

/// Writes rounds `from..` to the 8 counters, a few milliseconds apart, until `running` is
/// cleared; the last round written and position.
pub(crate) fn keep_writing(
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
pub(crate) async fn add_to_counters(store: &JetStreamEventStore, counters: usize, n: u64) -> u64 {
    let mut last = 0;
    for c in 0..counters {
        last = add(store, &format!("c{c}"), n).await;
    }
    last
}

/// Appends `Added(n)` to counter `id`; its position.
pub(crate) async fn add(store: &JetStreamEventStore, id: &str, n: u64) -> u64 {
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
