//! The metrics a scripted run records, through a recording `metrics` recorder: commands by
//! outcome, latency, conflicts and retries, events per append, projection events, handler time,
//! lag and parked events, command service requests — each with its labels and values.
//!
//! Its own test binary: the recorder is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::metrics as names;
use cqrs_core::testing::given_stored;
use cqrs_core::{
    CommandError, CommandMetadata, HandlerError, Projection, RecordedEvent, Repository,
};
use cqrs_nats::command::{CommandClient, CommandService};
use cqrs_nats::{JetStreamProjectionRunner, ProjectionConfig};
use examples::bank_account::{AccountCommand, AccountEvent, BankAccount};
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use std::collections::BTreeMap;
use std::time::Duration;

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

/// Commands through a repository (the given-when-then fixture's): a conflict met because a
/// racing writer was first and retried, commits, a rejection, a command pinned at a stale
/// version.
async fn repository_commands(snapshotter: &Snapshotter) {
    let open = || AccountCommand::Open {
        owner: "ana".into(),
        overdraft_limit: 0,
    };
    let root = CommandMetadata::root;
    given_stored::<BankAccount>("a-1")
        .command(open(), root())
        .racing(AccountCommand::Deposit { amount: 5 }, root())
        .with_conflict_retries(1)
        .when(AccountCommand::Deposit { amount: 1 }, root())
        .await
        .then_events([AccountEvent::Deposited { amount: 1 }]);
    let refused = given_stored::<BankAccount>("a-2")
        .command(open(), root())
        .when(AccountCommand::Withdraw { amount: 50 }, root())
        .await;
    assert!(
        matches!(refused.outcome(), Err(CommandError::Rejected(_))),
        "{:?}",
        refused.outcome()
    );
    given_stored::<BankAccount>("a-3")
        .command(open(), root())
        .command(AccountCommand::Deposit { amount: 5 }, root())
        .when(
            AccountCommand::Deposit { amount: 1 },
            root().with_expected_version(1),
        )
        .await
        .then_conflict();

    let m = metrics(snapshotter);
    let account = [("aggregate_type", "BankAccount")];
    let outcome = |o| [("aggregate_type", "BankAccount"), ("outcome", o)];
    // a-1: open, the racer's deposit, the deposit retried; a-2: open; a-3: open, deposit.
    assert_eq!(counter(&m, names::COMMANDS, &outcome("committed")), 6);
    assert_eq!(counter(&m, names::COMMANDS, &outcome("rejected")), 1);
    assert_eq!(counter(&m, names::COMMANDS, &outcome("conflict")), 1);
    assert_eq!(counter(&m, names::COMMAND_CONFLICTS, &account), 2);
    assert_eq!(counter(&m, names::COMMAND_RETRIES, &account), 1);
    assert_eq!(histogram(&m, names::COMMAND_DURATION, &account).len(), 8);
    assert_eq!(histogram(&m, names::EVENTS_PER_APPEND, &account), [1.0; 6]);
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
