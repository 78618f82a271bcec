//! The metrics a scripted run records, through a recording `metrics` recorder: commands by
//! outcome, latency, conflicts and retries, events per append, projection events, handler time,
//! lag and parked events, command service requests — each with its labels and values.
//!
//! Its own test binary: the recorder is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::metrics as names;
use cqrs_core::{
    AppendTo, CommandError, CommandMetadata, Committed, EventFilter, EventStore, EventStream,
    ExpectedVersion, HandlerError, IdempotencyKey, InMemoryEventStore, NewEvent, Projection,
    RecordedEvent, Repository, Snapshot, StoreError, StreamId, StreamPosition,
};
use cqrs_nats::command::{CommandClient, CommandService};
use cqrs_nats::{JetStreamProjectionRunner, ProjectionConfig};
use examples::bank_account::{AccountCommand, BankAccount};
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Fails the first append it is asked for with a conflict, as if another writer had been first.
#[derive(Clone)]
struct ConflictOnce {
    store: InMemoryEventStore,
    armed: Arc<AtomicBool>,
}

impl EventStore for ConflictOnce {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed, StoreError> {
        if self.armed.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: None,
            });
        }
        self.store
            .append(stream, expected, events, idempotency)
            .await
    }
    async fn append_all(
        &self,
        parts: Vec<AppendTo>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Vec<Committed>, StoreError> {
        self.store.append_all(parts, idempotency).await
    }
    async fn load(&self, stream: &StreamId, from: u64) -> Result<EventStream, StoreError> {
        self.store.load(stream, from).await
    }
    fn deduplication_window(&self) -> Option<Duration> {
        self.store.deduplication_window()
    }
    async fn stream_position(&self, stream: &StreamId) -> Result<StreamPosition, StoreError> {
        self.store.stream_position(stream).await
    }
    async fn read_all(&self, filter: &EventFilter, from: u64) -> Result<EventStream, StoreError> {
        self.store.read_all(filter, from).await
    }
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.store.load_snapshot(stream).await
    }
    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        self.store.save_snapshot(stream, snapshot).await
    }
}

/// A projection that refuses one event (it is parked) and handles the rest.
struct Picky;

impl Projection for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }
    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.position == 2 {
            return Err(HandlerError::new("position 2 is refused"));
        }
        Ok(())
    }
}

type Metrics = BTreeMap<(String, Vec<(String, String)>), DebugValue>;

fn metrics(snapshotter: &Snapshotter) -> Metrics {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value): (CompositeKey, _, _, DebugValue)| {
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let _: MetricKind = key.kind();
            ((key.key().name().to_owned(), labels), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn counter(metrics: &Metrics, name: &str, pairs: &[(&str, &str)]) -> u64 {
    match metrics.get(&(name.to_owned(), labels(pairs))) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {pairs:?}: {other:?} in {:#?}", metrics.keys()),
    }
}

fn histogram(metrics: &Metrics, name: &str, pairs: &[(&str, &str)]) -> Vec<f64> {
    match metrics.get(&(name.to_owned(), labels(pairs))) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
        other => panic!("{name} {pairs:?}: {other:?} in {:#?}", metrics.keys()),
    }
}

#[tokio::test]
async fn a_scripted_run_records_every_metric_with_its_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    repository_commands(&snapshotter).await;
    jetstream_flow(&snapshotter).await;
}

/// Commands through a repository: a conflict retried, commits, a rejection, a stale pin.
async fn repository_commands(snapshotter: &Snapshotter) {
    let store = ConflictOnce {
        store: InMemoryEventStore::new(),
        armed: Arc::new(AtomicBool::new(true)),
    };
    let accounts = Repository::<BankAccount, _>::new(store).with_conflict_retries(1);
    let open = AccountCommand::Open {
        owner: "ana".into(),
        overdraft_limit: 0,
    };
    accounts
        .execute("a-1", open, CommandMetadata::root())
        .await
        .unwrap();
    accounts
        .execute(
            "a-1",
            AccountCommand::Deposit { amount: 5 },
            CommandMetadata::root(),
        )
        .await
        .unwrap();
    let refused = accounts
        .execute(
            "a-1",
            AccountCommand::Withdraw { amount: 50 },
            CommandMetadata::root(),
        )
        .await;
    assert!(
        matches!(refused, Err(CommandError::Rejected(_))),
        "{refused:?}"
    );
    let stale = accounts
        .execute(
            "a-1",
            AccountCommand::Deposit { amount: 1 },
            CommandMetadata::root().with_expected_version(1),
        )
        .await;
    assert!(matches!(stale, Err(CommandError::Store(_))), "{stale:?}");

    let m = metrics(snapshotter);
    let account = [("aggregate_type", "BankAccount")];
    let outcome = |o| [("aggregate_type", "BankAccount"), ("outcome", o)];
    assert_eq!(counter(&m, names::COMMANDS, &outcome("committed")), 2);
    assert_eq!(counter(&m, names::COMMANDS, &outcome("rejected")), 1);
    assert_eq!(counter(&m, names::COMMANDS, &outcome("conflict")), 1);
    assert_eq!(counter(&m, names::COMMAND_CONFLICTS, &account), 2);
    assert_eq!(counter(&m, names::COMMAND_RETRIES, &account), 1);
    assert_eq!(histogram(&m, names::COMMAND_DURATION, &account).len(), 4);
    assert_eq!(
        histogram(&m, names::EVENTS_PER_APPEND, &account),
        [1.0, 1.0]
    );
}

/// On JetStream: a command service and a projection that parks one event.
async fn jetstream_flow(snapshotter: &Snapshotter) {
    let f = cqrs_tests::jetstream().await.unwrap();
    let repository = Repository::<Order, _>::new(f.store.clone());
    let service = CommandService::new(f.store.client().clone(), "test", repository)
        .spawn()
        .await
        .unwrap();
    let client = CommandClient::new(f.store.client().clone(), "test");
    let submit = || OrderCommand::Submit {
        items: vec![Item {
            sku: "PEN-1".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    };
    for id in ["o-1", "o-2"] {
        client
            .send::<Order>(id, &submit(), &CommandMetadata::root())
            .await
            .unwrap();
    }
    let again = client
        .send::<Order>("o-1", &submit(), &CommandMetadata::root())
        .await;
    assert!(again.is_err());
    service.stop().await;
    let config = ProjectionConfig::new()
        .retry(cqrs_core::RetryPolicy {
            max_attempts: 1,
            ..cqrs_core::RetryPolicy::default()
        })
        .heartbeat(Duration::from_millis(200));
    let handle = JetStreamProjectionRunner::spawn(&f.store, Picky, config)
        .await
        .unwrap();
    handle.wait_for(2, Duration::from_secs(20)).await.unwrap();
    handle.stop().await.unwrap();

    let m = metrics(snapshotter);
    let service_outcome = |o| {
        [
            ("context", "test"),
            ("aggregate_type", "Order"),
            ("outcome", o),
        ]
    };
    assert_eq!(
        counter(
            &m,
            names::COMMAND_SERVICE_REQUESTS,
            &service_outcome("committed")
        ),
        2
    );
    let failed: u64 = ["rejected", "invalid_transition"]
        .iter()
        .filter_map(|o| {
            m.get(&(
                names::COMMAND_SERVICE_REQUESTS.to_owned(),
                labels(&service_outcome(o)),
            ))
        })
        .map(|v| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum();
    assert_eq!(failed, 1, "{:#?}", m.keys());
    let picky = [("projection", "picky")];
    assert_eq!(counter(&m, names::PROJECTION_EVENTS, &picky), 2);
    assert_eq!(counter(&m, names::PROJECTION_PARKED, &picky), 1);
    assert!(!histogram(&m, names::PROJECTION_HANDLER_DURATION, &picky).is_empty());
    // Each partition that delivered events has a lag, zero once they are handled.
    let lags: Vec<&DebugValue> = m
        .iter()
        .filter(|((name, labels), _)| {
            name == names::PROJECTION_LAG && labels.contains(&("projection".into(), "picky".into()))
        })
        .map(|(_, value)| value)
        .collect();
    assert!(!lags.is_empty(), "{:#?}", m.keys());
    assert!(
        lags.iter().all(|v| **v == DebugValue::Gauge(0.0.into())),
        "{lags:?}"
    );
}
