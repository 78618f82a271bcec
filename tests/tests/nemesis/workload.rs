//! The workload (writers, the live projection, the saga), one seeded run, and its outcome.

use super::check::{Commands, Tally, event_id, tally};
use super::faults::{Fault, Injected, Rng, inject};
use cqrs_core::process::{CommandDispatcher, ProcessManagerProjection, Targeted, dispatched};
use cqrs_core::projection::{RetryPolicy, catch_up};
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{Aggregate, CommandError, CommandMetadata, HandlerError, Repository, StoreError};
use cqrs_nats::async_nats::ConnectOptions;
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, ProjectionConfig,
    StoreConfig,
};
use cqrs_test_server::{ProxiedCluster, SyncInterval};
use cqrs_tests::balances::{Balances, patient_config, wait_until_caught_up};
use cqrs_tests::error_kind;
use examples::bank_account::{AccountCommand, BankAccount};
use examples::order_flow::Shipping;
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Deposit writers; each also writes to the hot accounts.
const WRITERS: usize = 3;
/// Accounts every writer deposits on.
const HOT_ACCOUNTS: usize = 2;
/// Accounts of each writer alone.
const COLD_PER_WRITER: usize = 2;
/// Out of ten commands, how many go to a hot account.
const HOT_IN_TEN: usize = 3;
/// A bound on any writer's commands (the stop flag ends them long before).
const MAX_COMMANDS: usize = 1_000_000;
/// One attempt of one command, end to end.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// One command, all attempts: longer than any fault and its recovery.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);
/// How long the writers may take to acknowledge again after a fault healed.
const RECOVERY: Duration = Duration::from_secs(45);
/// Acknowledgements that show the writers recovered.
const RECOVERED_AFTER_ACKS: usize = 15;

type Live = JetStreamProjectionHandle<Balances<InMemoryReadModelStore<i64>>>;
type Saga = ProcessManagerProjection<Shipping, InMemoryReadModelStore<()>, Shipper>;

/// The saga's dispatcher: the repository, as the shipped `CommandDispatcher` for it does
/// (a refusal counts as delivered), noting every refusal for the report.
#[derive(Debug, Clone)]
struct Shipper {
    orders: Repository<Order, JetStreamEventStore>,
    refusals: Arc<std::sync::Mutex<Vec<String>>>,
}

impl CommandDispatcher<Targeted<Order>> for Shipper {
    async fn dispatch(
        &self,
        target: Targeted<Order>,
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        let metadata = target.metadata(metadata);
        let id = target.aggregate_id.clone();
        let outcome = self.orders.execute(&id, target.command, metadata).await;
        if let Err(refusal) = &outcome
            && refusal.is_refusal()
        {
            self.refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(format!("{id}: {refusal}"));
        }
        dispatched::<Order, _, _>(
            &id,
            outcome,
            CommandError::is_refusal,
            CommandError::is_retryable,
        )
    }
}

/// The strongest settings: three replicas, refusals confirmed by the quorum.
fn config() -> StoreConfig {
    StoreConfig::new("nemesis")
        .replicas(3)
        .request_timeout(Duration::from_secs(2))
        .linearizable_refusals(true)
}

/// Connects to `urls` (tried in that order), retrying while the cluster elects its meta leader.
async fn connect(urls: Vec<String>) -> JetStreamEventStore {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let options = ConnectOptions::new()
            .retain_servers_order()
            .ignore_discovered_servers();
        let attempt = JetStreamEventStore::connect_with_options(urls.clone(), options, config());
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(store)) => return store,
            Ok(Err(e)) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_elapsed) if Instant::now() < deadline => {}
            Ok(Err(e)) => panic!("cluster never became ready: {e}"),
            Err(elapsed) => panic!("cluster never became ready: connecting: {elapsed}"),
        }
    }
}

/// Runs `attempt` (bounded to 30 s each) until it succeeds with a retryable error in between,
/// for at most `within`.
async fn until_available<T, F, Fut>(what: &str, within: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), attempt()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(error)) => assert!(
                error.is_retryable() && Instant::now() < deadline,
                "{what} failed: {error}"
            ),
            Err(_) => assert!(Instant::now() < deadline, "{what} timed out"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn rotated(urls: &[String], first: usize) -> Vec<String> {
    let mut urls = urls.to_vec();
    let len = urls.len().max(1);
    urls.rotate_left(first % len);
    urls
}

/// An answer no writer should get.
#[derive(Debug, Clone)]
pub(crate) struct Wrong {
    /// The command's id.
    pub(crate) command_id: uuid::Uuid,
    /// `Conflict` (on an aggregate only this writer writes).
    pub(crate) conflict: bool,
    /// A refusal by the aggregate's state.
    pub(crate) refusal: bool,
    /// The aggregate, the command id and the error.
    pub(crate) message: String,
}

/// What the writers were told, merged.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    /// Deposits per account.
    pub(crate) accounts: BTreeMap<String, Commands>,
    /// Submissions and payments per order.
    pub(crate) orders: BTreeMap<String, Commands>,
    /// Failed attempts by kind.
    pub(crate) errors: BTreeMap<String, usize>,
    /// `Conflict`s on hot accounts, after the repository's retries (another writer won).
    pub(crate) hot_conflicts: usize,
    /// Commands acknowledged after an attempt whose outcome was unknown.
    pub(crate) resolved_unknowns: usize,
    /// Commands still failing at their deadline.
    pub(crate) unresolved: usize,
    /// Answers no writer should get: `Conflict` on an aggregate only it writes, an untyped or
    /// non-retryable failure, a refusal.
    pub(crate) wrong: Vec<Wrong>,
    /// For each acknowledged command's event id: the phase of the schedule it was acknowledged
    /// in, and the node its writer's connection was on.
    pub(crate) acked_at: BTreeMap<uuid::Uuid, (usize, String)>,
}

impl Ledger {
    fn merge(&mut self, other: Self) {
        for (mine, theirs) in [
            (&mut self.accounts, other.accounts),
            (&mut self.orders, other.orders),
        ] {
            for (key, commands) in theirs {
                let entry = mine.entry(key).or_default();
                entry.attempted.extend(commands.attempted);
                entry.acknowledged.extend(commands.acknowledged);
            }
        }
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.hot_conflicts += other.hot_conflicts;
        self.resolved_unknowns += other.resolved_unknowns;
        self.unresolved += other.unresolved;
        self.wrong.extend(other.wrong);
        self.acked_at.extend(other.acked_at);
    }

    /// Sends `command` to `id` until it is acknowledged (true) or its deadline passes, every
    /// attempt with the same command id. `shared` tells whether other writers write `id` too.
    async fn send<A>(
        &mut self,
        repo: &Repository<A, JetStreamEventStore>,
        id: &str,
        command: A::Command,
        metadata: &CommandMetadata,
        shared: bool,
        progress: &Progress,
    ) -> bool
    where
        A: Aggregate,
        A::Command: Clone,
    {
        let deadline = Instant::now() + COMMAND_DEADLINE;
        let mut unknown = false;
        while Instant::now() < deadline {
            let attempt = repo.execute(id, command.clone(), metadata.clone());
            match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
                Ok(Ok(_)) => {
                    self.resolved_unknowns += usize::from(unknown);
                    return true;
                }
                Ok(Err(CommandError::Store(error))) => {
                    *self.errors.entry(error_kind(&error)).or_default() += 1;
                    unknown |= matches!(error, StoreError::OutcomeUnknown { .. });
                    if error.is_conflict() && shared {
                        self.hot_conflicts += 1;
                    } else if error.is_conflict() || !error.is_retryable() {
                        self.wrong.push(Wrong {
                            command_id: metadata.command_id,
                            conflict: error.is_conflict(),
                            refusal: false,
                            message: format!(
                                "{id} {} ({}): {error}",
                                metadata.command_id,
                                phase_name(progress.phase.load(Ordering::SeqCst))
                            ),
                        });
                    }
                }
                Ok(Err(other)) => {
                    self.wrong.push(Wrong {
                        command_id: metadata.command_id,
                        conflict: false,
                        refusal: other.is_refusal(),
                        message: format!(
                            "{id} {} ({}) refused: {other}",
                            metadata.command_id,
                            phase_name(progress.phase.load(Ordering::SeqCst))
                        ),
                    });
                    return false;
                }
                // Dropped mid-flight: the outcome is unknown, so retry with the same id.
                Err(_elapsed) => {
                    unknown = true;
                    *self.errors.entry("AttemptTimeout".into()).or_default() += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.unresolved += 1;
        false
    }
}

/// The writers' common state: acknowledgements so far, and the signal to stop.
#[derive(Debug, Default)]
struct Progress {
    acks: AtomicUsize,
    stop: AtomicBool,
    /// 0 before the first fault; `2i - 1` while fault `i` (from 1) is on, `2i` after it healed.
    phase: AtomicUsize,
}

impl Progress {
    /// Notes that the command `command_id` was acknowledged through `store`'s connection.
    fn acknowledged(
        &self,
        ledger: &mut Ledger,
        command_id: uuid::Uuid,
        store: &JetStreamEventStore,
    ) {
        self.acks.fetch_add(1, Ordering::SeqCst);
        let phase = self.phase.load(Ordering::SeqCst);
        let node = store.client().server_info().server_name;
        ledger.acked_at.insert(event_id(command_id), (phase, node));
    }
}

/// The name of a phase of [`Progress`].
fn phase_name(phase: usize) -> String {
    match phase {
        0 => "before-faults".to_owned(),
        p if p % 2 == 1 => format!("during-f{}", p.div_ceil(2)),
        p => format!("after-f{}", p / 2),
    }
}

/// Deposits on hot and cold accounts until told to stop.
async fn deposit(
    repo: Repository<BankAccount, JetStreamEventStore>,
    writer: usize,
    mut rng: Rng,
    progress: Arc<Progress>,
) -> Ledger {
    let mut ledger = Ledger::default();
    for n in 1..=MAX_COMMANDS {
        if progress.stop.load(Ordering::SeqCst) {
            break;
        }
        let hot = rng.below(10) < HOT_IN_TEN;
        let account = if hot {
            format!("hot-{}", rng.below(HOT_ACCOUNTS))
        } else {
            format!("cold-{writer}-{}", rng.below(COLD_PER_WRITER))
        };
        let command = AccountCommand::Deposit {
            amount: i64::try_from(n).unwrap_or(1),
        };
        let metadata = CommandMetadata::root().with_actor(format!("writer:{writer}"));
        let entry = ledger.accounts.entry(account.clone()).or_default();
        entry.attempted.push(metadata.command_id);
        if ledger
            .send(&repo, &account, command, &metadata, hot, &progress)
            .await
        {
            let entry = ledger.accounts.entry(account).or_default();
            entry.acknowledged.push(metadata.command_id);
            progress.acknowledged(&mut ledger, metadata.command_id, repo.store());
        }
    }
    ledger
}

/// Submits and pays orders `order-0`, `order-1`, ... until told to stop; the saga ships them.
async fn order(repo: Repository<Order, JetStreamEventStore>, progress: Arc<Progress>) -> Ledger {
    let mut ledger = Ledger::default();
    for n in 0..MAX_COMMANDS {
        if progress.stop.load(Ordering::SeqCst) {
            break;
        }
        let id = format!("order-{n}");
        let submit = OrderCommand::Submit {
            items: vec![Item {
                sku: "BOOK-42".into(),
                quantity: 1,
            }],
            channel: Channel::Web,
        };
        let pay = OrderCommand::Pay {
            payment_id: format!("pay-{n}"),
        };
        for command in [submit, pay] {
            let metadata = CommandMetadata::root().with_actor("shop");
            let entry = ledger.orders.entry(id.clone()).or_default();
            entry.attempted.push(metadata.command_id);
            if !ledger
                .send(&repo, &id, command, &metadata, false, &progress)
                .await
            {
                break;
            }
            let entry = ledger.orders.entry(id.clone()).or_default();
            entry.acknowledged.push(metadata.command_id);
            progress.acknowledged(&mut ledger, metadata.command_id, repo.store());
        }
    }
    ledger
}

/// Writer tasks, aborted if dropped before they were joined (a failed run).
struct Writers(Vec<JoinHandle<Ledger>>);

impl Drop for Writers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Opens the hot and the cold accounts.
async fn open_accounts(store: &JetStreamEventStore) {
    let setup = Repository::<BankAccount, _>::new(store.clone());
    let hot = (0..HOT_ACCOUNTS).map(|a| format!("hot-{a}"));
    let cold =
        (0..WRITERS).flat_map(|w| (0..COLD_PER_WRITER).map(move |a| format!("cold-{w}-{a}")));
    for account in hot.chain(cold) {
        let metadata = CommandMetadata::root();
        let open = || AccountCommand::Open {
            owner: account.clone(),
            overdraft_limit: 0,
        };
        let mut ledger = Ledger::default();
        let opened = ledger
            .send(
                &setup,
                &account,
                open(),
                &metadata,
                false,
                &Progress::default(),
            )
            .await;
        assert!(
            opened && ledger.wrong.is_empty(),
            "opening {account}: {ledger:?}"
        );
    }
}

/// Starts the live balance projection and the shipping saga on `store`.
async fn spawn_runners(
    store: &JetStreamEventStore,
    refusals: &Arc<std::sync::Mutex<Vec<String>>>,
) -> (Live, JetStreamProjectionHandle<Saga>) {
    let live = until_available("starting the projection", Duration::from_secs(60), || {
        JetStreamProjectionRunner::spawn(store, Balances::in_memory(), patient_config())
    })
    .await;
    // The saga's dispatches fail while the cluster is down: the default attempts, because
    // those failures are transient and use up none of them (an outage must park nothing);
    // short pauses so that the saga catches up soon after a fault.
    let saga_config = ProjectionConfig::new()
        .retry(RetryPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        })
        .heartbeat(Duration::from_millis(500));
    let saga = until_available("starting the saga", Duration::from_secs(60), || {
        let saga = ProcessManagerProjection::new(
            Shipping,
            InMemoryReadModelStore::new(),
            Shipper {
                orders: Repository::<Order, _>::new(store.clone()),
                refusals: Arc::clone(refusals),
            },
        );
        JetStreamProjectionRunner::spawn(store, saga, saga_config.clone())
    })
    .await;
    (live, saga)
}

/// Starts the writers, each on its own client through the client proxies.
async fn spawn_writers(cluster: &ProxiedCluster, seed: u64, progress: &Arc<Progress>) -> Writers {
    let urls = cluster.client_urls();
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = connect(rotated(&urls, writer)).await;
        let repo = Repository::<BankAccount, _>::new(store)
            .with_conflict_retries(10)
            .with_cache(64);
        let rng = Rng::new(seed.wrapping_mul(1_000).wrapping_add(writer as u64));
        tasks.push(tokio::spawn(deposit(
            repo,
            writer,
            rng,
            Arc::clone(progress),
        )));
    }
    let store = connect(rotated(&urls, WRITERS)).await;
    let repo = Repository::<Order, _>::new(store).with_cache(64);
    tasks.push(tokio::spawn(order(repo, Arc::clone(progress))));
    Writers(tasks)
}

/// How the live projection and the saga ended.
#[derive(Debug, Default)]
pub(crate) struct Runners {
    /// Both runners were still running after the schedule.
    pub(crate) alive: bool,
    /// Events parked by either.
    pub(crate) parked: usize,
    /// The live balances equal a rebuild from scratch.
    pub(crate) equal_to_rebuild: bool,
    /// Account events written to the live read model (each once: redeliveries are skipped).
    pub(crate) written: usize,
    /// Redeliveries the live projection skipped.
    pub(crate) skipped: usize,
    /// Runs of positions a rebuild applied and the live projection did not (`first..=last`).
    pub(crate) missed: Vec<(u64, u64)>,
    /// How many of the missed positions each partition holds.
    pub(crate) missed_by_partition: BTreeMap<u32, usize>,
    /// Events the live projection was handed that the stream does not hold.
    pub(crate) foreign: usize,
}

/// Waits until the live projection and the saga processed the head, stops them, and compares
/// the live balances with a rebuild.
async fn finish_runners(
    checker: &JetStreamEventStore,
    live: Live,
    saga: JetStreamProjectionHandle<Saga>,
) -> Runners {
    let live_caught_up = wait_until_caught_up(checker, &live)
        .await
        .expect("the live projection catches up");
    let saga_caught_up = wait_until_caught_up(checker, &saga)
        .await
        .expect("the saga catches up");
    let parked = until_available("listing parked events", Duration::from_secs(60), || async {
        Ok(live.parked().await?.len() + saga.parked().await?.len())
    })
    .await;
    let balances = live.projection().balances().await.expect("live balances");
    let (written, skipped) = (live.projection().written(), live.projection().skipped());
    let (rebuilt, all) = until_available("the rebuild", Duration::from_secs(60), || async {
        let projection = Balances::in_memory();
        catch_up(checker, &projection, 0, &RetryPolicy::default()).await?;
        let balances = projection.balances().await.expect("rebuilt balances");
        Ok((balances, projection.positions()))
    })
    .await;
    let (missed, foreign) = runs_missing(&all, &live.projection().positions());
    let missed_by_partition = partitions_of(checker, &missed).await;
    let stopped = tokio::time::timeout(Duration::from_secs(30), async {
        live.stop().await.is_ok() & saga.stop().await.is_ok()
    });
    let stopped = stopped.await.unwrap_or(false);
    Runners {
        alive: live_caught_up.alive && saga_caught_up.alive && stopped,
        parked,
        equal_to_rebuild: balances == rebuilt,
        written,
        skipped,
        missed,
        missed_by_partition,
        foreign,
    }
}

/// How many of the `runs`' positions are on each partition (read back from the stream).
async fn partitions_of(store: &JetStreamEventStore, runs: &[(u64, u64)]) -> BTreeMap<u32, usize> {
    let mut partitions = BTreeMap::new();
    if runs.is_empty() {
        return partitions;
    }
    let Ok(stream) = store.jetstream().get_stream(store.stream_name()).await else {
        return partitions;
    };
    let subjects = store.subjects();
    for &(first, last) in runs {
        for position in first..=last {
            let Ok(message) = stream.direct_get(position).await else {
                continue;
            };
            if let Ok((partition, ..)) = subjects.parse_with_partition(&message.subject) {
                *partitions.entry(partition).or_default() += 1;
            }
        }
    }
    partitions
}

/// The runs of `all` (ascending) that `seen` lacks, as `first..=last` in `all`'s order, and the
/// events `seen` holds that `all` does not (another event at that position: a replica's
/// divergent history, which the live projection was handed).
fn runs_missing(all: &[(u64, uuid::Uuid)], seen: &[(u64, uuid::Uuid)]) -> (Vec<(u64, u64)>, usize) {
    let seen_set: std::collections::BTreeSet<(u64, uuid::Uuid)> = seen.iter().copied().collect();
    let all_set: std::collections::BTreeSet<(u64, uuid::Uuid)> = all.iter().copied().collect();
    let foreign = seen_set.difference(&all_set).count();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut open: Option<(u64, u64)> = None;
    for event in all {
        let position = event.0;
        if seen_set.contains(event) {
            runs.extend(open.take());
        } else {
            open = Some(open.map_or((position, position), |(first, _)| (first, position)));
        }
    }
    runs.extend(open);
    (runs, foreign)
}

/// The events in the events stream (read guards' carriers aside), as its leader counts them (a
/// stream info request, which only the leader answers).
async fn stream_messages(store: &JetStreamEventStore) -> Result<u64, StoreError> {
    use futures::TryStreamExt;
    let unavailable = |e: &dyn std::fmt::Display| StoreError::Unavailable {
        operation: "stream info",
        reason: e.to_string(),
        source: None,
    };
    let stream = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .map_err(|e| unavailable(&e))?;
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(">")
        .await
        .map_err(|e| unavailable(&e))?
        .try_collect()
        .await
        .map_err(|e| unavailable(&e))?;
    Ok(counts
        .iter()
        .filter(|(subject, _)| subject.contains(".events."))
        .map(|(_, n)| *n as u64)
        .sum())
}

/// Counts what the store holds, again while the histories it reads hold fewer events than the
/// stream's leader counts (direct gets may be answered by a follower that lags), for up to a
/// minute. Returns the last count and how many were stale.
async fn consistent_tally(checker: &JetStreamEventStore, ledger: &Ledger) -> (Tally, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stale = 0;
    loop {
        let count = until_available("counting", Duration::from_secs(120), || {
            tally(checker, &ledger.accounts, &ledger.orders)
        })
        .await;
        let messages = until_available("stream info", Duration::from_secs(60), || {
            stream_messages(checker)
        })
        .await;
        let read = (count.account_events + count.order_events) as u64;
        if read != messages {
            eprintln!("counting: read {read} events, the stream's leader holds {messages}");
        }
        if read >= messages || Instant::now() > deadline {
            return (count, stale);
        }
        stale += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Copies the servers' logs to `$NEMESIS_KEEP_LOGS/seed-<seed>/n<i>.log`, if that is set.
fn keep_logs(cluster: &ProxiedCluster, seed: u64) {
    let Some(dir) = std::env::var_os("NEMESIS_KEEP_LOGS") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir).join(format!("seed-{seed}"));
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for index in 0..cluster.len() {
        let name = ProxiedCluster::server_name(index);
        let _ = std::fs::copy(
            cluster.server(index).log_file(),
            dir.join(format!("{name}.log")),
        );
    }
    eprintln!("seed={seed}: server logs kept in {}", dir.display());
}

/// What one seeded run found.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The seed.
    pub(crate) seed: u64,
    /// The servers' fsync setting.
    pub(crate) sync: SyncInterval,
    /// The faults as injected.
    pub(crate) faults: Vec<Injected>,
    /// The writers' side.
    pub(crate) ledger: Ledger,
    /// The store's side.
    pub(crate) tally: Tally,
    /// The projection and the saga.
    pub(crate) runners: Runners,
    /// How long the writers took to acknowledge again once everything healed.
    pub(crate) healed_recovery: Option<Duration>,
    /// The whole run.
    pub(crate) total: Duration,
    /// The acknowledged events lost, by the phase they were acknowledged in and the node the
    /// writer's connection was on then (`during-f3@n2`).
    pub(crate) lost_by: BTreeMap<String, usize>,
    /// When events were missing: how many each node's own view misses.
    pub(crate) lost_via: BTreeMap<String, usize>,
    /// Counts that read fewer events than the stream's leader holds, and were made again.
    pub(crate) stale_tallies: usize,
    /// The saga's commands that the order's state refused (as the saga's repository loaded it).
    pub(crate) saga_refusals: Vec<String>,
}

/// Runs the workload on a fresh three-node cluster with `sync`, injects `faults` one after
/// the other, heals, stops the writers and checks what the store holds.
///
/// # Panics
///
/// If the cluster cannot be started or never serves again after the schedule.
pub(crate) async fn run(seed: u64, sync: SyncInterval, faults: Vec<Fault>) -> Outcome {
    let started = Instant::now();
    let mut cluster = ProxiedCluster::builder(3)
        .sync_interval(sync)
        .start()
        .await
        .expect("cluster");
    // The observer and the checker bypass the client proxies.
    let observer = connect(cluster.urls()).await;
    open_accounts(&observer).await;
    let runners_store = connect(rotated(&cluster.client_urls(), 2)).await;
    let refusals = Arc::default();
    let (live, saga) = spawn_runners(&runners_store, &refusals).await;
    let progress = Arc::new(Progress::default());
    let mut writers = spawn_writers(&cluster, seed, &progress).await;
    let warmed_up = super::faults::progress(&progress.acks, 30, RECOVERY).await;
    assert!(
        warmed_up.is_some(),
        "seed={seed}: the writers never started"
    );

    let mut injected = Vec::new();
    for (index, fault) in faults.into_iter().enumerate() {
        progress.phase.store(2 * index + 1, Ordering::SeqCst);
        let mut done = inject(&mut cluster, &observer, fault).await;
        progress.phase.store(2 * index + 2, Ordering::SeqCst);
        done.recovered_after =
            super::faults::progress(&progress.acks, RECOVERED_AFTER_ACKS, RECOVERY).await;
        eprintln!(
            "{} seed={seed} fault {}: {done}",
            time::OffsetDateTime::now_utc(),
            injected.len() + 1
        );
        injected.push(done);
        tokio::time::sleep(fault.quiet).await;
    }
    // Heal whatever is left, let the writers show they are back, then stop them.
    cluster.heal();
    cluster.resume_all().expect("SIGCONT");
    cluster.restart_all().await.expect("restart");
    let healed_recovery = super::faults::progress(&progress.acks, 30, RECOVERY).await;
    progress.stop.store(true, Ordering::SeqCst);
    let mut ledger = Ledger::default();
    for task in std::mem::take(&mut writers.0) {
        ledger.merge(task.await.expect("a writer panicked"));
    }

    let checker = connect(cluster.urls()).await;
    let runners = finish_runners(&checker, live, saga).await;
    let (tally, stale_tallies) = consistent_tally(&checker, &ledger).await;
    let mut lost_via = BTreeMap::new();
    if tally.lost > 0 {
        // Whose view is it? Read again through a client on each node alone.
        for (index, url) in cluster.urls().into_iter().enumerate() {
            let node = connect(vec![url]).await;
            let view = until_available("counting", Duration::from_secs(60), || {
                super::check::tally(&node, &ledger.accounts, &ledger.orders)
            })
            .await;
            lost_via.insert(ProxiedCluster::server_name(index), view.lost);
        }
    }
    drop(progress);
    let saga_refusals = refusals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    // Kept too when a replica was slow to hold every event, to see why in the servers' logs.
    if tally.lost + tally.duplicated + tally.phantom + tally.gaps > 0
        || !runners.missed.is_empty()
        || stale_tallies > 0
    {
        keep_logs(&cluster, seed);
    }
    let mut lost_by = BTreeMap::new();
    for id in &tally.lost_events {
        let key = ledger.acked_at.get(id).map_or_else(
            || "unknown".to_owned(),
            |(phase, node)| format!("{}@{node}", phase_name(*phase)),
        );
        *lost_by.entry(key).or_default() += 1;
    }
    Outcome {
        lost_by,
        lost_via,
        stale_tallies,
        saga_refusals,
        seed,
        sync,
        faults: injected,
        ledger,
        tally,
        runners,
        healed_recovery,
        total: started.elapsed(),
    }
}

impl Outcome {
    /// Paid orders left unshipped because the saga's `Ship` was refused by a stale state of the
    /// order (a follower that lagged answered the load; the refusal counted as delivered).
    fn stale_refusals(&self) -> usize {
        self.tally
            .unshipped
            .iter()
            .filter(|order| {
                let prefix = format!("{order}: ");
                self.saga_refusals.iter().any(|r| {
                    r.starts_with(&prefix)
                        && (r.contains("`Ship` in state `Submitted`")
                            || r.contains("`Ship` in state `Draft`"))
                })
            })
            .count()
    }

    /// The wrong answers that a stale read from a follower that lags explains (the library
    /// checks refusals and failed look-ups against the stream leader since c80caa4; before,
    /// this harness found all three kinds), by kind: `Conflict` or a refusal for a
    /// command whose own earlier attempt is in the store (`own_write_conflicts`,
    /// `own_write_refusals`), a refusal by `Draft` of an aggregate its writer had created
    /// (`stale_draft_refusals`); the others as `other`.
    fn wrong_answers(&self) -> BTreeMap<&'static str, usize> {
        let mut kinds = BTreeMap::new();
        for wrong in &self.ledger.wrong {
            let own = self.tally.present_ids.contains(&event_id(wrong.command_id));
            let kind = match (wrong.conflict, wrong.refusal, own) {
                (true, _, true) => "own_write_conflicts",
                (_, true, true) => "own_write_refusals",
                (_, true, false) if wrong.message.contains("in state `Draft`") => {
                    "stale_draft_refusals"
                }
                _ => "other",
            };
            *kinds.entry(kind).or_default() += 1;
        }
        kinds
    }

    /// The one-line summary.
    pub(crate) fn summary(&self) -> String {
        let t = &self.tally;
        let l = &self.ledger;
        let r = &self.runners;
        let faults: Vec<String> = self.faults.iter().map(ToString::to_string).collect();
        format!(
            "nemesis: seed={} sync={} faults={} acknowledged={} present={} lost={} lost_by={:?} lost_via={:?} stale_tallies={} duplicated={} phantom={} gaps={} attempted={} unacknowledged_present={} unresolved={} wrong_answers={} hot_conflicts={} resolved_unknowns={} projection_equal_to_rebuild={} projection_missed={:?} missed_by_partition={:?} projection_foreign={} projection_written={} account_events={} redeliveries_skipped={} parked={} runners_alive={} paid_orders={} shipped_once={} saga_refusals={} stale_refusals={} wrong_answers_by_kind={:?} healed_recovery_ms={} total_ms={} errors={:?} schedule=[{}]",
            self.seed,
            match self.sync {
                SyncInterval::Always => "always",
                _ => "default",
            },
            self.faults.len(),
            t.acknowledged,
            t.present,
            t.lost,
            self.lost_by,
            self.lost_via,
            self.stale_tallies,
            t.duplicated,
            t.phantom,
            t.gaps,
            t.attempted,
            t.unacknowledged_present,
            l.unresolved,
            l.wrong.len(),
            l.hot_conflicts,
            l.resolved_unknowns,
            r.equal_to_rebuild,
            r.missed,
            r.missed_by_partition,
            r.foreign,
            r.written,
            t.account_events,
            r.skipped,
            r.parked,
            r.alive,
            t.paid,
            t.shipped_once,
            self.saga_refusals.len(),
            self.stale_refusals(),
            self.wrong_answers(),
            self.healed_recovery
                .map_or_else(|| "never".to_owned(), |d| d.as_millis().to_string()),
            self.total.as_millis(),
            l.errors,
            faults.join(" "),
        )
    }

    /// `Ok` when every check holds, else what failed.
    ///
    /// # Errors
    ///
    /// The failed checks, in words.
    pub(crate) fn verdict(&self) -> Result<(), String> {
        let (t, l, r) = (&self.tally, &self.ledger, &self.runners);
        let mut failed: Vec<String> = Vec::new();
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failed.push(what.to_owned());
            }
        };
        check(t.lost == 0, "acknowledged events lost");
        check(t.duplicated == 0, "events doubled");
        check(t.phantom == 0, "events no writer attempted");
        check(t.gaps == 0, "versions with gaps");
        check(l.wrong.is_empty(), "wrong answers");
        check(l.unresolved == 0, "commands unresolved at their deadline");
        check(r.equal_to_rebuild, "live projection differs from a rebuild");
        check(r.missed.is_empty(), "live projection missed events");
        check(
            r.foreign == 0,
            "live projection was handed events the stream does not hold",
        );
        check(
            r.written == t.account_events,
            "projection wrote an event not once",
        );
        check(r.parked == 0, "events parked");
        check(r.alive, "a runner died");
        check(
            t.shipped_once == t.paid,
            "a paid order not shipped exactly once",
        );
        check(self.healed_recovery.is_some(), "writers never recovered");
        check(t.acknowledged > 0, "nothing acknowledged");
        if failed.is_empty() {
            Ok(())
        } else {
            let details: Vec<&String> = l
                .wrong
                .iter()
                .map(|w| &w.message)
                .chain(t.problems.iter().take(10))
                .chain(self.saga_refusals.iter().take(5))
                .take(40)
                .collect();
            Err(format!("{} ({details:?})", failed.join(", ")))
        }
    }

    /// Panics with the summary and what failed, unless every check holds.
    pub(crate) fn assert_ok(&self) {
        if let Err(why) = self.verdict() {
            panic!("{why}\n{}", self.summary());
        }
    }
}
