//! Projections, reactors and process managers on the in-memory store.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::items_after_statements,
    clippy::unnecessary_literal_bound
)]

mod common;

use common::{Wallet, WalletCommand as Cmd, WalletEvent};
use cqrs_core::projection::{
    InMemoryProjectionRunner, LiveVersions, NotSwitched, NotSwitchedReason, catch_up,
};
use cqrs_core::read_model::{InMemoryReadModelStore, apply_once};
use cqrs_core::testing::{EventLog, when_processed, when_projected};
use cqrs_core::{
    CommandDispatcher, CommandMetadata, EventFilter, HandlerError, InMemoryEventStore,
    ProcessManager, ProcessManagerProjection, Projection, Reactor, ReadModelStore, RecordedEvent,
    Repository, RetryPolicy, StreamId, WithReactor,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PATIENT: Duration = Duration::from_secs(10);

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

/// Balance per wallet id; fails on purpose for a configured amount (a poison event).
#[derive(Clone, Default)]
struct Balances {
    model: InMemoryReadModelStore<i64>,
    poison_amount: Option<i64>,
}

impl Projection for Balances {
    fn name(&self) -> &str {
        "balances"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Wallet")
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let delta = match event.payload.decode::<WalletEvent>()? {
            WalletEvent::Credited { amount } if Some(amount) == self.poison_amount => {
                return Err(HandlerError::new(format!("cannot book {amount}")));
            }
            WalletEvent::Credited { amount } => amount,
            WalletEvent::Debited { amount } => -amount,
            WalletEvent::FeeCharged { fee } => -fee,
            WalletEvent::Opened => 0,
        };
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            old.unwrap_or(0) + delta
        })
        .await?;
        Ok(())
    }
}

impl Balances {
    async fn snapshot(&self) -> BTreeMap<String, i64> {
        self.model
            .entries()
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect()
    }
}

async fn write_history(
    repo: &Repository<Wallet, InMemoryEventStore>,
    wallets: usize,
    credits: i64,
) {
    for w in 0..wallets {
        repo.execute(&format!("w{w}"), Cmd::Open, CommandMetadata::root())
            .await
            .unwrap();
    }
    for amount in 1..=credits {
        for w in 0..wallets {
            repo.execute(
                &format!("w{w}"),
                Cmd::Credit(amount),
                CommandMetadata::root(),
            )
            .await
            .unwrap();
        }
    }
}

#[tokio::test]
async fn restarted_projection_resumes_from_its_checkpoint() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    write_history(&repo, 3, 10).await;

    // Uninterrupted run.
    let reference = Balances::default();
    let outcome = catch_up(&store, &reference, 0, &fast_retry(1))
        .await
        .unwrap();
    assert_eq!(outcome.checkpoint, store.head());

    // A run that hangs on event 16 (a stuck handler), is stopped, and resumes from its
    // checkpoint.
    struct HangsAfter(Balances, u64);
    impl Projection for HangsAfter {
        fn name(&self) -> &str {
            "balances"
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            if event.position > self.1 {
                std::future::pending::<()>().await;
            }
            self.0.apply(event).await
        }
    }
    let interrupted = Balances::default();
    let handle = InMemoryProjectionRunner::spawn(
        &store,
        HangsAfter(interrupted.clone(), 15),
        0,
        fast_retry(1),
    );
    handle.wait_for(15, PATIENT).await.unwrap();
    let checkpoint = handle.stop().await;
    assert_eq!(checkpoint, 15);
    let partial = interrupted.snapshot().await;
    assert_ne!(
        partial,
        reference.snapshot().await,
        "stopped before the end"
    );

    let resumed =
        InMemoryProjectionRunner::spawn(&store, interrupted.clone(), checkpoint + 1, fast_retry(1));
    resumed.wait_for(store.head(), PATIENT).await.unwrap();
    assert_eq!(interrupted.snapshot().await, reference.snapshot().await);

    // Live appends keep flowing, and read-your-writes sees them.
    let committed = repo
        .execute("w0", Cmd::Credit(1000), CommandMetadata::root())
        .await
        .unwrap();
    resumed
        .wait_for(committed[0].position, PATIENT)
        .await
        .unwrap();
    assert_eq!(interrupted.snapshot().await["w0"], 55 + 1000);
}

#[tokio::test]
async fn redelivery_after_a_restart_applies_nothing_twice() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    write_history(&repo, 2, 5).await;
    let balances = Balances::default();
    catch_up(&store, &balances, 0, &fast_retry(1))
        .await
        .unwrap();
    // Restart from far behind the checkpoint: every event is delivered again.
    catch_up(&store, &balances, 3, &fast_retry(1))
        .await
        .unwrap();
    assert_eq!(
        balances.snapshot().await,
        BTreeMap::from([("w0".into(), 15), ("w1".into(), 15)])
    );
}

#[tokio::test]
async fn poison_event_is_parked_and_later_events_still_project() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    repo.execute("w0", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w0", Cmd::Credit(13), CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w0", Cmd::Credit(5), CommandMetadata::root())
        .await
        .unwrap();

    let attempts = Arc::new(AtomicU32::new(0));
    struct Counting(Balances, Arc<AtomicU32>);
    impl Projection for Counting {
        fn name(&self) -> &str {
            self.0.name()
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            if event.payload.data == b"{\"amount\":13}" {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
            self.0.apply(event).await
        }
    }
    let balances = Balances {
        poison_amount: Some(13),
        ..Balances::default()
    };
    let handle = InMemoryProjectionRunner::spawn(
        &store,
        Counting(balances.clone(), attempts.clone()),
        0,
        fast_retry(3),
    );
    handle.wait_for(store.head(), PATIENT).await.unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    let parked = handle.parked();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.position, 2);
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].error, "cannot book 13");
    assert_eq!(balances.snapshot().await["w0"], 5);

    // Parked events can be replayed (here: still failing, so they stay parked).
    assert_eq!(handle.replay_parked().await, 0);
    assert_eq!(handle.parked().len(), 1);
}

#[tokio::test]
async fn rebuild_from_scratch_equals_the_live_read_model() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    let live = Balances::default();
    let handle = InMemoryProjectionRunner::spawn(&store, live.clone(), 0, fast_retry(1));
    write_history(&repo, 4, 6).await;
    repo.execute(
        "w2",
        Cmd::DebitWithFee { amount: 3, fee: 1 },
        CommandMetadata::root(),
    )
    .await
    .unwrap();
    handle.wait_for(store.head(), PATIENT).await.unwrap();

    let rebuilt = Balances::default();
    let outcome = catch_up(&store, &rebuilt, 0, &fast_retry(1)).await.unwrap();
    assert!(outcome.parked.is_empty());
    assert_eq!(rebuilt.snapshot().await, live.snapshot().await);
    assert_eq!(live.snapshot().await["w2"], 21 - 4);
}

#[tokio::test]
async fn read_your_writes_waits_for_the_projection() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    struct Gated(Balances, Arc<tokio::sync::Semaphore>);
    impl Projection for Gated {
        fn name(&self) -> &str {
            "gated"
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            self.1.acquire().await.unwrap().forget();
            self.0.apply(event).await
        }
    }
    let balances = Balances::default();
    let handle = InMemoryProjectionRunner::spawn(
        &store,
        Gated(balances.clone(), gate.clone()),
        0,
        fast_retry(1),
    );
    repo.execute("w0", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    let committed = repo
        .execute("w0", Cmd::Credit(7), CommandMetadata::root())
        .await
        .unwrap();
    let position = committed[0].position;

    let err = handle
        .wait_for(position, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!((err.wanted, err.reached), (position, 0));
    gate.add_permits(1);
    let err = handle
        .wait_for(position, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.reached, 1);
    gate.add_permits(1);
    handle.wait_for(position, PATIENT).await.unwrap();
    // Once it returns, the read model shows the write.
    assert_eq!(balances.snapshot().await["w0"], 7);
}

/// Sends a welcome notice for every opened wallet; fails the first time.
#[derive(Default)]
struct Welcome {
    sent: Mutex<Vec<String>>,
    failures_left: AtomicU32,
    balances_seen: Mutex<Vec<Option<i64>>>,
    model: InMemoryReadModelStore<i64>,
}

struct WelcomeReactor(Arc<Welcome>);

impl Reactor for WelcomeReactor {
    async fn react(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if event.payload.event_type != "Opened" {
            return Ok(());
        }
        // The projection's state is already stored when the reactor fires.
        let seen = self
            .0
            .model
            .get(&event.aggregate_id)
            .await?
            .map(|v| v.value);
        self.0.balances_seen.lock().unwrap().push(seen);
        if self
            .0
            .failures_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(HandlerError::new("mail server down"));
        }
        self.0.sent.lock().unwrap().push(event.aggregate_id.clone());
        Ok(())
    }
}

#[tokio::test]
async fn reactor_fires_after_the_projection_once_per_event() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    let welcome = Arc::new(Welcome {
        failures_left: AtomicU32::new(1),
        ..Welcome::default()
    });
    let balances = Balances {
        model: welcome.model.clone(),
        ..Balances::default()
    };
    let reacting = WithReactor::new(
        balances,
        WelcomeReactor(welcome.clone()),
        InMemoryReadModelStore::<()>::new(),
    );
    repo.execute("w0", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();

    let outcome = catch_up(&store, &reacting, 0, &fast_retry(3))
        .await
        .unwrap();
    assert!(outcome.parked.is_empty());
    // Delivered again (a restart): no second notice.
    catch_up(&store, &reacting, 0, &fast_retry(3))
        .await
        .unwrap();
    assert_eq!(
        *welcome.sent.lock().unwrap(),
        vec!["w0".to_owned(), "w1".to_owned()]
    );
    // w0 was tried twice (one failure), w1 once; each time the read model already had it.
    assert_eq!(
        *welcome.balances_seen.lock().unwrap(),
        vec![Some(0), Some(0), Some(0)]
    );
}

/// Welcome bonus workflow: Opened -> Credit(100); Credited(100) -> Debit(10) (a fee).
struct Bonus;

impl ProcessManager for Bonus {
    const NAME: &'static str = "welcome-bonus";
    type State = u32;
    type Command = (String, Cmd);

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Wallet")
    }

    fn react(
        &self,
        steps: u32,
        event: &RecordedEvent,
    ) -> Result<(u32, Vec<(String, Cmd)>), HandlerError> {
        let id = event.aggregate_id.clone();
        Ok(match event.payload.decode::<WalletEvent>()? {
            WalletEvent::Opened => (steps + 1, vec![(id, Cmd::Credit(100))]),
            WalletEvent::Credited { amount: 100 } => (steps + 1, vec![(id, Cmd::Debit(10))]),
            _ => (steps, vec![]),
        })
    }
}

#[tokio::test]
async fn process_manager_fixture_shows_commands_and_their_causes() {
    let wallet = StreamId::new("Wallet", "w0");
    let log = EventLog::new()
        .append(&wallet, [WalletEvent::Opened])
        .append(
            &wallet,
            [
                WalletEvent::Credited { amount: 100 },
                WalletEvent::Credited { amount: 1 },
            ],
        );
    let issued = when_processed(&Bonus, log.events()).then_commands([
        ("w0".to_owned(), Cmd::Credit(100)),
        ("w0".to_owned(), Cmd::Debit(10)),
    ]);
    let (_, meta, cause) = &issued.commands()[1];
    assert_eq!(*cause, log.events()[1].event_id);
    assert_eq!(meta.causation_id, Some(log.events()[1].event_id));
    assert_eq!(meta.correlation_id, log.events()[1].metadata.correlation_id);
}

#[tokio::test]
async fn projection_fixture_applies_every_event_twice() {
    let wallet = StreamId::new("Wallet", "w9");
    let log = EventLog::new()
        .append(
            &wallet,
            [WalletEvent::Opened, WalletEvent::Credited { amount: 4 }],
        )
        .append(&wallet, [WalletEvent::Debited { amount: 1 }]);
    let balances = Balances::default();
    when_projected(&balances, log.events()).await;
    assert_eq!(balances.snapshot().await["w9"], 3);
}

/// Sends commands to the wallet repository, in process.
struct ToRepository(Repository<Wallet, InMemoryEventStore>);

impl CommandDispatcher<(String, Cmd)> for ToRepository {
    async fn dispatch(
        &self,
        (id, command): (String, Cmd),
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
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    let saga = ProcessManagerProjection::new(
        Bonus,
        InMemoryReadModelStore::new(),
        ToRepository(repo.clone()),
    );
    let handle = InMemoryProjectionRunner::spawn(&store, saga, 0, fast_retry(3));

    let root = CommandMetadata::root()
        .with_tenant("acme")
        .with_actor("user:1");
    repo.execute("w0", Cmd::Open, root.clone()).await.unwrap();
    // Opened -> Credit(100) -> Credited -> Debit(10) -> Debited: three commands, three events.
    let deadline = tokio::time::Instant::now() + PATIENT;
    while store.head() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga did not finish"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.wait_for(3, PATIENT).await.unwrap();
    let stream = StreamId::new("Wallet", "w0").with_tenant("acme");
    let history = repo.history(&stream, 1).await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| e.payload.clone())
            .collect::<Vec<_>>(),
        vec![
            WalletEvent::Opened,
            WalletEvent::Credited { amount: 100 },
            WalletEvent::Debited { amount: 10 }
        ]
    );
    for event in &history {
        assert_eq!(event.metadata.correlation_id, root.correlation_id);
        assert_eq!(event.metadata.tenant.as_deref(), Some("acme"));
    }
    assert_eq!(history[0].metadata.causation_id, Some(root.command_id));
    assert_eq!(history[0].metadata.actor.as_deref(), Some("user:1"));
    assert_eq!(
        history[1].metadata.actor.as_deref(),
        Some("process:welcome-bonus")
    );
    assert_eq!(history[0].metadata.command_causation_id, None);
    assert_eq!(
        history[1].metadata.command_causation_id,
        Some(history[0].event_id)
    );
    assert_eq!(
        history[2].metadata.command_causation_id,
        Some(history[1].event_id)
    );
    // Each command's id is the deterministic reaction id, so redelivery would be absorbed.
    assert_eq!(
        history[1].metadata.command_id,
        Some(
            CommandMetadata::reaction(Bonus::NAME, &history[0].metadata, history[0].event_id, 0)
                .command_id
        )
    );

    // Delivering the whole history to the saga again issues the same command ids: nothing new.
    let again = ProcessManagerProjection::new(
        Bonus,
        InMemoryReadModelStore::new(),
        ToRepository(repo.clone()),
    );
    catch_up(&store, &again, 0, &fast_retry(3)).await.unwrap();
    assert_eq!(store.head(), 3);
}

/// A projection that writes a batch as one transaction: the whole batch is refused when one of
/// its events is poison, and it records every run it is handed.
#[derive(Clone, Default)]
struct Transactional {
    balances: Balances,
    runs: Arc<Mutex<Vec<Vec<u64>>>>,
}

impl Projection for Transactional {
    fn name(&self) -> &str {
        "transactional"
    }

    fn filter(&self) -> EventFilter {
        self.balances.filter()
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.apply_batch(std::slice::from_ref(event)).await
    }

    async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
        self.runs
            .lock()
            .unwrap()
            .push(events.iter().map(|e| e.position).collect());
        // All or nothing: check every event before writing any.
        for event in events {
            if let WalletEvent::Credited { amount } = event.payload.decode::<WalletEvent>()?
                && Some(amount) == self.balances.poison_amount
            {
                return Err(HandlerError::new(format!("cannot book {amount}")));
            }
        }
        for event in events {
            self.balances.apply(event).await?;
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_poison_event_inside_a_batch_is_parked_alone() {
    let wallet = StreamId::new("Wallet", "w1");
    let log = EventLog::new().append(
        &wallet,
        [
            WalletEvent::Opened,
            WalletEvent::Credited { amount: 1 },
            WalletEvent::Credited { amount: 13 },
            WalletEvent::Credited { amount: 2 },
        ],
    );
    let projection = Transactional {
        balances: Balances {
            poison_amount: Some(13),
            ..Balances::default()
        },
        ..Transactional::default()
    };
    let parked =
        cqrs_core::projection::deliver_batch(&projection, log.events(), &fast_retry(2)).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].event.position, log.events()[2].position);
    assert_eq!(parked[0].attempts, 2);
    assert_eq!(
        projection.balances.snapshot().await["w1"],
        3,
        "its neighbours applied"
    );
    // The batch once, then each event on its own, in order: the poison one with its retry.
    let runs = projection.runs.lock().unwrap().clone();
    assert_eq!(
        runs,
        [
            vec![1, 2, 3, 4],
            vec![1],
            vec![2],
            vec![3],
            vec![3],
            vec![4]
        ]
    );
}

#[tokio::test]
async fn the_in_memory_runner_hands_over_runs_in_order_and_never_more_than_its_batch() {
    let store = InMemoryEventStore::new();
    let repo = Repository::<Wallet, _>::new(store.clone());
    // History first: the runner finds it all at hand.
    write_history(&repo, 3, 10).await;
    let projection = Transactional {
        balances: Balances {
            poison_amount: Some(7),
            ..Balances::default()
        },
        ..Transactional::default()
    };
    let handle =
        InMemoryProjectionRunner::spawn_batched(&store, projection.clone(), 0, fast_retry(1), 8);
    handle.wait_for(store.head(), PATIENT).await.unwrap();
    // Then a quiet store: a single new event is handed over on its own, without waiting.
    repo.execute("w0", Cmd::Credit(100), CommandMetadata::root())
        .await
        .unwrap();
    handle.wait_for(store.head(), PATIENT).await.unwrap();

    let runs = projection.runs.lock().unwrap().clone();
    assert!(runs.iter().all(|run| run.len() <= 8), "{runs:?}");
    assert!(
        runs.iter().any(|run| run.len() > 1),
        "history came in batches: {runs:?}"
    );
    assert_eq!(runs.last().unwrap(), &vec![store.head()]);
    // First deliveries (leaving out the event-by-event redeliveries of failed batches) are the
    // whole log, in order.
    let mut delivered: Vec<u64> = Vec::new();
    for run in &runs {
        if run.first().is_some_and(|p| Some(p) > delivered.last()) {
            delivered.extend(run);
        }
    }
    assert_eq!(delivered, (1..=store.head()).collect::<Vec<_>>());
    // The three credits of 7 (one per wallet) are parked, one each; everything else is booked.
    let parked: Vec<u64> = handle.parked().iter().map(|p| p.event.position).collect();
    assert_eq!(parked.len(), 3, "{parked:?}");
    let balances = projection.balances.snapshot().await;
    assert_eq!(balances["w1"], (1..=10).sum::<i64>() - 7);
    assert_eq!(balances["w0"], (1..=10).sum::<i64>() - 7 + 100);
    handle.stop().await;
}

#[tokio::test]
async fn the_projection_fixtures_follow_the_filter_and_deliver_batches_twice() {
    let wallet = StreamId::new("Wallet", "w9");
    // Another aggregate type's events, which the projection's filter leaves out.
    let log = EventLog::new()
        .append(
            &wallet,
            [WalletEvent::Opened, WalletEvent::Credited { amount: 4 }],
        )
        .append(
            &StreamId::new("Savings", "s1"),
            [WalletEvent::Credited { amount: 50 }],
        )
        .append(&wallet, [WalletEvent::Debited { amount: 1 }]);
    let balances = Balances::default();
    when_projected(&balances, log.events()).await;
    let snapshot = balances.snapshot().await;
    assert_eq!(snapshot["w9"], 3);
    assert!(!snapshot.contains_key("s1"), "filtered out: {snapshot:?}");

    let batched = Transactional::default();
    cqrs_core::testing::when_projected_in_batches(&batched, log.events(), 2).await;
    let snapshot = batched.balances.snapshot().await;
    assert_eq!(snapshot["w9"], 3);
    assert!(!snapshot.contains_key("s1"), "filtered out: {snapshot:?}");
    let runs = batched.runs.lock().unwrap().clone();
    assert_eq!(runs, [vec![1, 2], vec![1, 2], vec![4], vec![4]]);
}

/// Running totals per wallet id as version `version` of projection `totals`; while its gate is
/// held shut (write-locked) it applies nothing.
#[derive(Clone, Debug)]
struct Totals {
    version: u32,
    model: InMemoryReadModelStore<u64>,
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Projection for Totals {
    fn name(&self) -> &str {
        "totals"
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let _open = self.gate.read().await;
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            old.unwrap_or(0) + 1
        })
        .await?;
        Ok(())
    }
}

/// In memory as on JetStream: a new version built beside the live one is refused until it has
/// caught up, then made live with the old one stopped.
#[tokio::test]
async fn a_new_version_goes_live_only_once_caught_up() {
    let store = InMemoryEventStore::new();
    write_history(&Repository::new(store.clone()), 3, 4).await;
    let versions = LiveVersions::new();
    let v1 = Totals {
        version: 1,
        model: InMemoryReadModelStore::new(),
        gate: Arc::default(),
    };
    let v2 = Totals {
        version: 2,
        model: InMemoryReadModelStore::new(),
        gate: Arc::default(),
    };
    let live = InMemoryProjectionRunner::spawn(&store, v1.clone(), 0, fast_retry(1));
    live.wait_for(store.head(), Duration::from_secs(5))
        .await
        .unwrap();
    let shut = v2.gate.clone().write_owned().await;
    let next = InMemoryProjectionRunner::spawn_batched(&store, v2.clone(), 0, fast_retry(1), 4);
    let live = match versions
        .switch_over(live, &next, Duration::from_secs(5))
        .await
    {
        Err(NotSwitched::Refused {
            live,
            reason: NotSwitchedReason::NotCaughtUp { .. },
        }) => live,
        other => panic!("switched before catching up: {other:?}"),
    };
    assert_eq!(versions.live("totals"), 1);
    drop(shut);
    next.wait_for(store.head(), Duration::from_secs(5))
        .await
        .unwrap();
    let stopped_at = versions
        .switch_over(live, &next, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(stopped_at, store.head());
    assert_eq!(versions.live("totals"), 2);
    assert_eq!(
        v2.model.entries().await.unwrap(),
        v1.model.entries().await.unwrap()
    );
    // A version that is not newer: refused, and it keeps running.
    let again = InMemoryProjectionRunner::spawn(&store, v2.clone(), 0, fast_retry(1));
    let Err(NotSwitched::Refused { live, reason }) = versions
        .switch_over(again, &next, Duration::from_secs(1))
        .await
    else {
        panic!("switched to a version that is not newer");
    };
    assert_eq!(reason, NotSwitchedReason::NotANewerVersion);
    assert_eq!(versions.live("totals"), 2);
    live.stop().await;
    next.stop().await;
}

/// Fails its first `failures` deliveries with `error()`, then succeeds; counts every try.
struct FailsFirst {
    failures: u32,
    tries: AtomicU32,
    error: fn() -> HandlerError,
}

impl FailsFirst {
    fn new(failures: u32, error: fn() -> HandlerError) -> Self {
        Self {
            failures,
            tries: AtomicU32::new(0),
            error,
        }
    }
}

impl Projection for FailsFirst {
    fn name(&self) -> &str {
        "fails_first"
    }

    async fn apply(&self, _event: &RecordedEvent) -> Result<(), HandlerError> {
        if self.tries.fetch_add(1, Ordering::SeqCst) < self.failures {
            Err((self.error)())
        } else {
            Ok(())
        }
    }
}

/// The store unavailable, as a saga's dispatch or a read model's store reports it.
fn store_unavailable() -> HandlerError {
    cqrs_core::StoreError::Unavailable {
        operation: "append",
        reason: "no responders".to_owned(),
        source: None,
    }
    .into()
}

/// A failure that retrying does not cure, with a cause.
fn poison_with_cause() -> HandlerError {
    #[derive(Debug, thiserror::Error)]
    #[error("cannot book the entry")]
    struct Booking(#[source] std::io::Error);
    HandlerError::from_error(Booking(std::io::Error::other("ledger closed")))
}

#[tokio::test]
async fn a_transient_failure_does_not_use_up_attempts_and_a_permanent_one_does() {
    let log = EventLog::new().append(&StreamId::new("Wallet", "w1"), [WalletEvent::Opened]);
    let event = &log.events()[0];
    let policy = fast_retry(3);

    // The store unavailable for 20 tries (an outage outlasting 3 attempts): delivered, not
    // parked.
    let outage = FailsFirst::new(20, store_unavailable);
    cqrs_core::projection::deliver(&outage, event, &policy)
        .await
        .expect("delivered once the store is back");
    assert_eq!(outage.tries.load(Ordering::SeqCst), 21);

    // The same number of permanent failures: parked after 3 tries, with the whole cause.
    let poison = FailsFirst::new(20, poison_with_cause);
    let parked = cqrs_core::projection::deliver(&poison, event, &policy)
        .await
        .expect_err("parked");
    assert_eq!(poison.tries.load(Ordering::SeqCst), 3);
    assert_eq!(parked.attempts, 3);
    assert_eq!(parked.error, "cannot book the entry: ledger closed");

    // A transient failure that outlasts the patience counts again: parked.
    let endless = FailsFirst::new(u32::MAX, store_unavailable);
    let impatient = RetryPolicy {
        transient_patience: Duration::from_millis(30),
        ..policy
    };
    let parked = cqrs_core::projection::deliver(&endless, event, &impatient)
        .await
        .expect_err("parked once the patience ran out");
    assert!(parked.attempts > 3, "{parked:?}");
    assert!(
        parked.error.contains("no responders"),
        "the store's words: {}",
        parked.error
    );
}

#[test]
fn a_handler_error_is_transparent_and_classified_by_its_cause() {
    use cqrs_core::read_model::ReadModelError;
    use std::error::Error as _;
    let backend = HandlerError::from(ReadModelError::Backend {
        operation: "put",
        source: Box::new(std::io::Error::other("bucket unavailable")),
    });
    // What failed, then why, each once.
    assert_eq!(backend.to_string(), "read model store failed during put");
    assert_eq!(
        backend.source().map(ToString::to_string).as_deref(),
        Some("bucket unavailable")
    );
    assert_eq!(
        cqrs_core::error::report(&backend),
        "read model store failed during put: bucket unavailable"
    );
    assert!(backend.is_transient());
    assert!(
        backend
            .get_ref()
            .and_then(|e| e.downcast_ref::<ReadModelError>())
            .is_some()
    );

    let codec = serde_json::from_str::<i64>("x").unwrap_err();
    let undecodable = HandlerError::from(ReadModelError::Codec {
        key: "w1".into(),
        source: codec,
    });
    assert!(!undecodable.is_transient());
    assert!(store_unavailable().is_transient());
    let refused: HandlerError = cqrs_core::StoreError::InvalidInput {
        stream: StreamId::new("Wallet", "w1"),
        reason: "too large".into(),
    }
    .into();
    assert!(!refused.is_transient());
    assert!(!HandlerError::new("no").is_transient());
    assert!(HandlerError::new("later").transient().is_transient());
}

#[test]
fn a_dispatch_that_may_succeed_later_is_a_transient_failure() {
    use cqrs_core::process::dispatched;
    use cqrs_core::{Aggregate, CommandError, StoreError};
    type Outcome = Result<(), CommandError<<Wallet as Aggregate>::Error>>;
    let dispatch = |outcome: Outcome| {
        dispatched::<Wallet, _, _>(
            "w1",
            outcome,
            CommandError::is_refusal,
            CommandError::is_retryable,
        )
    };
    let unavailable = dispatch(Err(CommandError::Store(StoreError::Unavailable {
        operation: "append",
        reason: "no leader".into(),
        source: None,
    })))
    .unwrap_err();
    assert!(unavailable.is_transient(), "{unavailable}");
    let invalid = dispatch(Err(CommandError::Store(StoreError::InvalidInput {
        stream: StreamId::new("Wallet", "w1"),
        reason: "too large".into(),
    })))
    .unwrap_err();
    assert!(!invalid.is_transient(), "{invalid}");
    assert!(dispatch(Ok(())).is_ok());
}
