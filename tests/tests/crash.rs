//! Crash durability: a nats-server with `sync_interval: always` is killed with SIGKILL in the
//! middle of a write load and restarted on the same store directory. Writers reconnect by
//! themselves and finish; nothing acknowledged is lost or doubled, and commands whose outcome
//! was unknown at the crash are resolved by retrying them with the same command id. A balance
//! projection runs on the JetStream runner through the crash, writing into a KV read model on
//! the same server, and ends equal to a rebuild from scratch and to the acknowledged deposits.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::unnecessary_literal_bound
)]

use cqrs_core::projection::{RetryPolicy, catch_up};
use cqrs_core::{CommandError, CommandMetadata, Repository};
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, KvReadModelStore,
    StoreConfig,
};
use cqrs_test_server::NatsServer;
use cqrs_tests::balances::{
    Balances, CaughtUp, DepositTally, expected_balances, patient_config, wait_until_caught_up,
};
use cqrs_tests::error_kind;
use examples::bank_account::{AccountCommand, BankAccount};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const WRITERS: usize = 4;
const ACCOUNTS_PER_WRITER: usize = 2;
const COMMANDS_PER_WRITER: usize = 30;
const KILL_AFTER_ACKS: usize = 40;

type LiveRunner = JetStreamProjectionHandle<Balances<KvReadModelStore<i64>>>;

/// Starts the balance projection. It runs through the crash: its consumer and its KV read model
/// live on the crashing server; applies that fail meanwhile are retried patiently, not parked.
async fn spawn_balances(store: &JetStreamEventStore) -> LiveRunner {
    let live = KvReadModelStore::<i64>::open(store.jetstream(), "balances", 1)
        .await
        .unwrap();
    JetStreamProjectionRunner::spawn(store, Balances::with_model(live), patient_config())
        .await
        .unwrap()
}

/// How the live projection ended, next to a rebuild from scratch and the acknowledged deposits.
struct ProjectionResult {
    head: u64,
    alive: bool,
    parked: usize,
    rebuild_parked: usize,
    live: BTreeMap<String, i64>,
    rebuilt: BTreeMap<String, i64>,
    expected: BTreeMap<String, i64>,
    summary: String,
}

impl ProjectionResult {
    fn assert_ok(&self) {
        assert!(self.alive, "the projection runner died in the crash");
        assert_eq!(self.parked, 0, "no event was parked");
        assert_eq!(self.rebuild_parked, 0, "the rebuild parked nothing");
        assert_eq!(self.live, self.rebuilt, "live projection = rebuild");
        assert_eq!(
            self.live, self.expected,
            "live projection = acknowledged deposits"
        );
    }
}

/// Waits until the live projection has processed the head, stops it, and rebuilds it from
/// scratch into a fresh in-memory read model.
async fn check_projection(store: &JetStreamEventStore, runner: LiveRunner) -> ProjectionResult {
    let CaughtUp { head, alive, after } = wait_until_caught_up(store, &runner).await.unwrap();
    let parked = runner.parked().await.unwrap().len();
    let live = runner.projection().balances().await.unwrap();
    let checkpoint = runner.stop().await.expect("the projection runner failed");
    let fresh = Balances::in_memory();
    let from_scratch = catch_up(store, &fresh, 0, &RetryPolicy::default())
        .await
        .unwrap();
    let expected = expected_balances(WRITERS, ACCOUNTS_PER_WRITER, COMMANDS_PER_WRITER);
    let rebuilt = fresh.balances().await.unwrap();
    let summary = format!(
        "head={head} checkpoint={checkpoint} alive_after_restart={alive} parked={parked} accounts={} rebuilt_events={} equal_to_rebuild={} equal_to_acks={} caught_up_after_ms={}",
        live.len(),
        from_scratch.applied,
        live == rebuilt,
        live == expected,
        after.as_millis(),
    );
    ProjectionResult {
        head,
        alive,
        parked,
        rebuild_parked: from_scratch.parked.len(),
        live,
        rebuilt,
        expected,
        summary,
    }
}

/// What a writer learnt: the command id of every acknowledged deposit, per account, and how
/// many of them went through an unknown outcome or an unavailable store first.
#[derive(Default)]
struct Report {
    acknowledged: BTreeMap<String, Vec<uuid::Uuid>>,
    resolved_unknowns: usize,
    errors: BTreeMap<String, usize>,
}

async fn write(
    repo: Repository<BankAccount, JetStreamEventStore>,
    writer: usize,
    acks: Arc<AtomicUsize>,
) -> Report {
    let mut report = Report::default();
    for c in 0..COMMANDS_PER_WRITER {
        let account = format!("acc-{writer}-{}", c % ACCOUNTS_PER_WRITER);
        let command = AccountCommand::Deposit {
            amount: i64::try_from(c + 1).unwrap(),
        };
        // One command id for every attempt: a retry is recognised, never applied twice.
        let metadata = CommandMetadata::root().with_actor(format!("writer:{writer}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut troubled = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "command {c} of writer {writer} never resolved"
            );
            match repo
                .execute(&account, command.clone(), metadata.clone())
                .await
            {
                Ok(_) => break,
                Err(CommandError::Store(error)) => {
                    // Every failure is typed; store failures during the crash are retried.
                    troubled |= error.is_retryable();
                    *report.errors.entry(error_kind(&error)).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(other) => panic!("unexpected refusal: {other}"),
            }
        }
        report.resolved_unknowns += usize::from(troubled);
        report
            .acknowledged
            .entry(account)
            .or_default()
            .push(metadata.command_id);
        acks.fetch_add(1, Ordering::SeqCst);
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_a_sigkill() {
    let mut server = NatsServer::builder()
        .config("jetstream { sync_interval: always }\n")
        .start()
        .await
        .unwrap();
    let config = StoreConfig::new("bank").request_timeout(Duration::from_secs(2));
    let store = JetStreamEventStore::connect(server.url(), config)
        .await
        .unwrap();
    let setup = Repository::<BankAccount, _>::new(store.clone());
    for writer in 0..WRITERS {
        for a in 0..ACCOUNTS_PER_WRITER {
            let open = AccountCommand::Open {
                owner: format!("w{writer}"),
                overdraft_limit: 0,
            };
            setup
                .execute(&format!("acc-{writer}-{a}"), open, CommandMetadata::root())
                .await
                .unwrap();
        }
    }

    let runner = spawn_balances(&store).await;

    let acks = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let repo = Repository::<BankAccount, _>::new(store.clone())
                .with_conflict_retries(10)
                .with_cache(ACCOUNTS_PER_WRITER);
            tokio::spawn(write(repo, w, Arc::clone(&acks)))
        })
        .collect();

    // Crash the server mid-run, then bring it back on the same store directory.
    let deadline = Instant::now() + Duration::from_secs(60);
    while acks.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    server.kill();
    let acked_at_crash = acks.load(Ordering::SeqCst);
    let projected_at_crash = runner.checkpoint();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await.unwrap();

    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.await.expect("a writer panicked"));
    }

    let mut deposits = DepositTally::default();
    let mut resolved = 0;
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for report in &reports {
        resolved += report.resolved_unknowns;
        for (kind, n) in &report.errors {
            *errors.entry(kind.clone()).or_default() += n;
        }
        deposits.count(&store, &report.acknowledged).await.unwrap();
    }
    let DepositTally {
        acknowledged,
        present,
        lost,
        duplicated,
    } = deposits;
    let projection = check_projection(&store, runner).await;

    println!(
        "crash: acknowledged={acknowledged} present={present} lost={lost} duplicated={duplicated} resolved_unknowns={resolved} acked_before_kill={acked_at_crash} errors={errors:?} projection: checkpoint_at_kill={projected_at_crash} {}",
        projection.summary,
    );
    assert_eq!(acknowledged, WRITERS * COMMANDS_PER_WRITER);
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert_eq!(present, acknowledged);
    assert!(acked_at_crash < acknowledged, "the crash happened mid-run");
    assert!(
        projected_at_crash < projection.head,
        "the projection had work left after the crash"
    );
    projection.assert_ok();
}
