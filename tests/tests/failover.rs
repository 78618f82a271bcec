//! Cluster failover: three nats-server processes on loopback form a JetStream cluster and the
//! context's stream has 3 replicas. During a write load through the repository the stream
//! leader is killed with SIGKILL; writes resume after the election. Every error the callers see
//! is typed and retryable (never a wrong `Conflict`, never a panic), retries reuse the command id,
//! and in the end nothing acknowledged is lost or doubled, versions are gapless, and loads and
//! rebuilt projections through clients on each surviving node agree. A balance projection runs
//! live on the JetStream runner (its own client, on its durable R3 consumer) through the kill and
//! ends equal to a rebuild from scratch and to the acknowledged deposits, with every event
//! written to the read model exactly once.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::unnecessary_literal_bound
)]

use cqrs_core::projection::{RetryPolicy, catch_up};
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{CommandError, CommandMetadata, Repository, StoreError, StreamId};
use cqrs_nats::async_nats::ConnectOptions;
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, StoreConfig,
};
use cqrs_test_server::NatsServer;
use cqrs_tests::balances::{
    Balances, CaughtUp, DepositTally, expected_balances, patient_config, wait_until_caught_up,
};
use cqrs_tests::error_kind;
use examples::bank_account::{AccountCommand, BankAccount};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type LiveRunner = JetStreamProjectionHandle<Balances<InMemoryReadModelStore<i64>>>;

const WRITERS: usize = 4;
const ACCOUNTS_PER_WRITER: usize = 2;
const COMMANDS_PER_WRITER: usize = 60;
const KILL_AFTER_ACKS: usize = 80;
/// One attempt of one command, end to end.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// One command, all attempts.
const COMMAND_DEADLINE: Duration = Duration::from_secs(25);

fn config() -> StoreConfig {
    StoreConfig::new("bank")
        .replicas(3)
        .request_timeout(Duration::from_secs(2))
}

/// Connects to `urls`, retrying while the cluster has no JetStream meta leader yet.
async fn connect(urls: Vec<String>) -> JetStreamEventStore {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match JetStreamEventStore::connect(urls.clone(), config()).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cluster never became ready: {e}"),
        }
    }
}

/// The server name of the events stream's leader (`n1`, `n2`, ... as `start_cluster` names them).
async fn stream_leader(store: &JetStreamEventStore) -> Option<String> {
    // Getting the stream fetches its info, leader included.
    let stream = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .ok()?;
    stream.cached_info().cluster.as_ref()?.leader.clone()
}

/// What a writer learnt: the command id of every acknowledged deposit, per account, how many
/// commands needed more than one attempt, and every error seen, by kind.
#[derive(Default)]
struct Report {
    acknowledged: BTreeMap<String, Vec<uuid::Uuid>>,
    resolved_unknowns: usize,
    retried: usize,
    errors: BTreeMap<String, usize>,
    wrong: Vec<String>,
}

async fn write(
    repo: Repository<BankAccount, JetStreamEventStore>,
    writer: usize,
    acks: Arc<AtomicUsize>,
    ack_times: Arc<Mutex<Vec<Instant>>>,
) -> Report {
    let mut report = Report::default();
    for c in 0..COMMANDS_PER_WRITER {
        let account = format!("acc-{writer}-{}", c % ACCOUNTS_PER_WRITER);
        let command = AccountCommand::Deposit {
            amount: i64::try_from(c + 1).unwrap(),
        };
        // One command id for every attempt: a retry is recognised, never applied twice.
        let metadata = CommandMetadata::root().with_actor(format!("writer:{writer}"));
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let mut attempts = 0;
        let mut unknown = false;
        loop {
            assert!(
                Instant::now() < deadline,
                "command {c} of writer {writer} never resolved"
            );
            attempts += 1;
            let attempt = repo.execute(&account, command.clone(), metadata.clone());
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(_)) => break,
                Ok(Err(CommandError::Store(error))) => {
                    *report.errors.entry(error_kind(&error)).or_default() += 1;
                    unknown |= matches!(error, StoreError::OutcomeUnknown { .. });
                    // Only "try again later" is acceptable: a conflict on accounts nobody else
                    // writes, or an untyped backend failure, is a bug.
                    if error.is_conflict() || !error.is_retryable() {
                        report
                            .wrong
                            .push(format!("command {c} of writer {writer}: {error}"));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(other)) => {
                    report
                        .wrong
                        .push(format!("command {c} of writer {writer} refused: {other}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                // Dropped mid-flight: its outcome is unknown to us, so retry with the same id.
                Err(_elapsed) => {
                    unknown = true;
                    *report.errors.entry("AttemptTimeout".into()).or_default() += 1;
                }
            }
        }
        report.resolved_unknowns += usize::from(unknown);
        report.retried += usize::from(attempts > 1);
        report
            .acknowledged
            .entry(account)
            .or_default()
            .push(metadata.command_id);
        acks.fetch_add(1, Ordering::SeqCst);
        ack_times.lock().unwrap().push(Instant::now());
    }
    report
}

/// `(version, event id, position)` of every event of every account, through `store`.
async fn snapshot(
    store: &JetStreamEventStore,
    accounts: &[String],
) -> Result<BTreeMap<String, Vec<(u64, uuid::Uuid, u64)>>, StoreError> {
    let repo = Repository::<BankAccount, _>::new(store.clone());
    let mut all = BTreeMap::new();
    for account in accounts {
        let history = repo
            .history(&StreamId::new("BankAccount", account.clone()), 1)
            .await?;
        all.insert(
            account.clone(),
            history
                .iter()
                .map(|e| (e.version, e.event_id, e.position))
                .collect(),
        );
    }
    Ok(all)
}

/// Runs `attempt` until it succeeds: right after the failover, a stream whose leader died (the
/// events', the dead letters') answers with a typed, retryable `Unavailable` until it elected a
/// new one. Returns the result and the kinds of the failed attempts; any other error, or still
/// failing after `within`, fails the test.
async fn until_available<T, F, Fut>(
    what: &str,
    within: Duration,
    mut attempt: F,
) -> (T, Vec<String>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    let mut failures = Vec::new();
    loop {
        match attempt().await {
            Ok(value) => return (value, failures),
            Err(error) => {
                assert!(
                    error.is_retryable() && !error.is_conflict() && Instant::now() < deadline,
                    "{what} failed: {error}"
                );
                failures.push(error_kind(&error));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// A rebuild from scratch through `store`, and the failed attempts before it went through.
async fn rebuilt_balances(store: &JetStreamEventStore) -> (BTreeMap<String, i64>, Vec<String>) {
    let ((projection, outcome), failures) =
        until_available("the rebuild", Duration::from_secs(20), || async {
            let projection = Balances::in_memory();
            let outcome = catch_up(store, &projection, 0, &RetryPolicy::default()).await?;
            Ok((projection, outcome))
        })
        .await;
    assert!(outcome.parked.is_empty(), "{:?}", outcome.parked);
    (projection.balances().await.unwrap(), failures)
}

/// The balances the acknowledged deposits make.
fn acknowledged_balances() -> BTreeMap<String, i64> {
    expected_balances(WRITERS, ACCOUNTS_PER_WRITER, COMMANDS_PER_WRITER)
}

/// The writers' reports against what the store holds.
#[derive(Default)]
struct Tally {
    deposits: DepositTally,
    resolved: usize,
    retried: usize,
    errors: BTreeMap<String, usize>,
    wrong: Vec<String>,
}

/// Counts acknowledged, present, lost and duplicated deposits (by the event id derived from each
/// command id) and checks that versions are gapless.
async fn tally(store: &JetStreamEventStore, reports: &[Report]) -> Tally {
    let mut t = Tally::default();
    for report in reports {
        t.resolved += report.resolved_unknowns;
        t.retried += report.retried;
        t.wrong.extend(report.wrong.iter().cloned());
        for (kind, n) in &report.errors {
            *t.errors.entry(kind.clone()).or_default() += n;
        }
        t.deposits.count(store, &report.acknowledged).await.unwrap();
    }
    t
}

/// Loads and a rebuilt projection through a client on each surviving node agree with the
/// writers' client and the acknowledged deposits (a follower may lag an instant: give it a
/// moment). Returns how many nodes agreed, the rebuild attempts that failed first, and the
/// rebuilt balances.
async fn check_survivors(
    store: &JetStreamEventStore,
    accounts: &[String],
    survivors: &[String],
) -> (usize, Vec<String>, BTreeMap<String, i64>) {
    let expected = snapshot(store, accounts).await.unwrap();
    let expected_balances = acknowledged_balances();
    let mut rebuilt = BTreeMap::new();
    let (mut nodes_agree, mut rebuild_failures) = (0, Vec::new());
    for url in survivors {
        let node = connect(vec![url.clone()]).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = snapshot(&node, accounts).await;
            if loaded.as_ref().is_ok_and(|l| *l == expected) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "loads through {url} disagree: {loaded:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (balances, failures) = rebuilt_balances(&node).await;
        assert_eq!(balances, expected_balances, "{url}");
        rebuilt = balances;
        rebuild_failures.extend(failures);
        nodes_agree += 1;
    }
    (nodes_agree, rebuild_failures, rebuilt)
}

/// Starts the live balance projection on its own client, connected to `urls[first]` (the node
/// the test is going to kill) and reconnecting to the others in order. Applies that fail during
/// the election are retried patiently, not parked.
async fn spawn_live_projection(urls: &[String], first: usize) -> (JetStreamEventStore, LiveRunner) {
    let mut ordered = urls.to_vec();
    ordered.rotate_left(first);
    let options = ConnectOptions::new().retain_servers_order();
    let store = JetStreamEventStore::connect_with_options(ordered, options, config())
        .await
        .unwrap();
    let config = patient_config();
    // Creating the R3 dead-letter stream and consumer can time out while the cluster settles.
    let (runner, _) = until_available(
        "starting the projection runner",
        Duration::from_secs(30),
        || JetStreamProjectionRunner::spawn(&store, Balances::in_memory(), config.clone()),
    )
    .await;
    (store, runner)
}

/// How the live projection ended against the rebuild and the acknowledged deposits.
struct LiveOutcome {
    summary: String,
    alive: bool,
    /// How long after the writers and the checks were done the projection reached the head.
    caught_up_after: Duration,
    parked: usize,
    head_events: usize,
    written: usize,
    live: BTreeMap<String, i64>,
}

impl LiveOutcome {
    fn assert_ok(&self, projected_at_kill: u64, rebuilt: &BTreeMap<String, i64>) {
        assert!(self.alive, "the projection runner died in the failover");
        // Liveness, not speed: by the time the writers are done the projection has long been
        // reading from the new leader. A reader that notices its consumer died with the killed
        // server only by two missed 15 s heartbeats (async-nats' ordered consumer) stood still
        // here for about 22 s; the lane's own reader is back within a few seconds.
        assert!(
            self.caught_up_after < Duration::from_secs(15),
            "the live projection stood still after the failover ({:?} after the writers)",
            self.caught_up_after
        );
        assert_eq!(self.parked, 0, "no event was parked");
        assert!(
            projected_at_kill < u64::try_from(self.head_events).unwrap(),
            "the projection had work left after the kill"
        );
        // Every event of the stream (all are bank accounts) written to the read model once.
        assert_eq!(self.written, self.head_events, "events written once each");
        assert_eq!(self.live, *rebuilt, "live projection = rebuild");
        assert_eq!(self.live, acknowledged_balances(), "live projection = acks");
    }
}

/// How long after `killed_at` a stream leader other than `leader` is reported by `observer`.
async fn await_election(
    observer: &JetStreamEventStore,
    leader: &str,
    killed_at: Instant,
) -> Duration {
    loop {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "no new stream leader was elected"
        );
        // Bounded, so that a request stuck on the election does not blur the figure.
        match tokio::time::timeout(Duration::from_millis(250), stream_leader(observer)).await {
            Ok(Some(new)) if new != leader => return killed_at.elapsed(),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Waits until the live projection has processed the stream's head, then stops it.
async fn finish_live_projection(
    store: &JetStreamEventStore,
    runner: LiveRunner,
    rebuilt: &BTreeMap<String, i64>,
    checkpoint_at_kill: u64,
) -> LiveOutcome {
    let CaughtUp { head, alive, after } = wait_until_caught_up(store, &runner).await.unwrap();
    let (parked, _) = until_available("listing parked events", Duration::from_secs(20), || {
        runner.parked()
    })
    .await;
    let parked = parked.len();
    let server = store.client().server_info().server_name;
    let (written, skipped) = (runner.projection().written(), runner.projection().skipped());
    let live = runner.projection().balances().await.unwrap();
    let checkpoint = runner.stop().await.expect("the projection runner failed");
    let head_events = usize::try_from(head).unwrap();
    let summary = format!(
        "projection: checkpoint_at_kill={checkpoint_at_kill} head={head} checkpoint={checkpoint} written={written} redelivered_skipped={skipped} parked={parked} alive={alive} equal_to_rebuild={} equal_to_acks={} caught_up_after_ms={} runner_node_at_end={server}",
        live == *rebuilt,
        live == acknowledged_balances(),
        after.as_millis(),
    );
    LiveOutcome {
        summary,
        alive,
        caught_up_after: after,
        parked,
        head_events,
        written,
        live,
    }
}

/// Opens every writer's accounts; returns their ids.
async fn open_accounts(store: &JetStreamEventStore) -> Vec<String> {
    let accounts: Vec<String> = (0..WRITERS)
        .flat_map(|w| (0..ACCOUNTS_PER_WRITER).map(move |a| format!("acc-{w}-{a}")))
        .collect();
    let setup = Repository::<BankAccount, _>::new(store.clone());
    for account in &accounts {
        let open = AccountCommand::Open {
            owner: account.clone(),
            overdraft_limit: 0,
        };
        setup
            .execute(account, open, CommandMetadata::root())
            .await
            .unwrap();
    }
    accounts
}

/// The harness index of server `name`: `start_cluster` names server `i` (0-based) `n{i+1}`.
fn server_index(name: &str, servers: usize) -> usize {
    name.strip_prefix('n')
        .and_then(|n| n.parse::<usize>().ok())
        .and_then(|n| n.checked_sub(1))
        .filter(|i| *i < servers)
        .unwrap_or_else(|| panic!("leader {name} is not one of the cluster's servers"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_the_stream_leader_dying() {
    let started = Instant::now();
    let mut servers: Vec<NatsServer> = cqrs_test_server::start_cluster(3).await.expect("cluster");
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let store = connect(urls.clone()).await;
    let accounts = open_accounts(&store).await;
    // The projection's client starts on the stream leader's node, which is killed below.
    let leader_at_start = stream_leader(&store)
        .await
        .expect("the stream has a leader");
    let (projection_store, runner) =
        spawn_live_projection(&urls, server_index(&leader_at_start, urls.len())).await;

    // One observer per node: a survivor's watches the election.
    let mut observers = Vec::new();
    for url in &urls {
        observers.push(connect(vec![url.clone()]).await);
    }

    let acks = Arc::new(AtomicUsize::new(0));
    let ack_times = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let repo = Repository::<BankAccount, _>::new(store.clone())
                .with_conflict_retries(10)
                .with_cache(ACCOUNTS_PER_WRITER);
            tokio::spawn(write(repo, w, Arc::clone(&acks), Arc::clone(&ack_times)))
        })
        .collect();

    // Mid-load: find the stream leader and kill its process.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        assert!(Instant::now() < deadline, "the writers made no progress");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let leader = stream_leader(&store)
        .await
        .expect("the stream has a leader");
    let victim = server_index(&leader, servers.len());
    let survivors: Vec<String> = urls
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, u)| u.clone())
        .collect();
    let observer = &observers[(victim + 1) % observers.len()];
    let runner_node = projection_store.client().server_info().server_name;
    servers[victim].kill();
    let killed_at = Instant::now();
    let acked_at_kill = acks.load(Ordering::SeqCst);
    let projected_at_kill = runner.checkpoint();
    let election = await_election(observer, &leader, killed_at).await;

    let mut reports = Vec::new();
    for writer in writers {
        reports.push(writer.await.expect("a writer panicked"));
    }
    let resumed_after = ack_times
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > killed_at)
        .min()
        .map(|t| t.duration_since(killed_at));

    let tally = tally(&store, &reports).await;
    let Tally {
        deposits:
            DepositTally {
                acknowledged,
                present,
                lost,
                duplicated,
            },
        resolved,
        retried,
        ref errors,
        ref wrong,
    } = tally;

    let (nodes_agree, rebuild_failures, rebuilt) =
        check_survivors(&store, &accounts, &survivors).await;
    let live = finish_live_projection(&projection_store, runner, &rebuilt, projected_at_kill).await;

    println!(
        "failover: acknowledged={acknowledged} present={present} lost={lost} duplicated={duplicated} resolved_unknowns={resolved} retried_commands={retried} acked_before_kill={acked_at_kill} errors={errors:?} wrong_errors={} killed_leader={leader} election_ms={} writes_resumed_after_ms={} surviving_nodes_agreeing={nodes_agree} failed_rebuild_attempts={rebuild_failures:?} total_ms={} {} runner_node_at_kill={runner_node}",
        wrong.len(),
        election.as_millis(),
        resumed_after.map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string()),
        started.elapsed().as_millis(),
        live.summary,
    );
    assert!(
        wrong.is_empty(),
        "errors that are not typed retryable: {wrong:#?}"
    );
    assert_eq!(acknowledged, WRITERS * COMMANDS_PER_WRITER);
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    assert_eq!(present, acknowledged);
    assert!(acked_at_kill < acknowledged, "the leader died mid-run");
    assert!(resumed_after.is_some(), "writes resumed after the election");
    assert_eq!(nodes_agree, survivors.len());
    live.assert_ok(projected_at_kill, &rebuilt);
}
