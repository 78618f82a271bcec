//! The in-memory store and the repository: concurrency, idempotency, metadata propagation,
//! snapshots, time travel and filters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Wallet, WalletCommand as Cmd, WalletError, WalletEvent};
use cqrs_core::metadata::new_id;
use cqrs_core::{
    Aggregate, CommandError, CommandMetadata, EventFilter, EventStore, ExpectedVersion,
    IdempotencyKey, InMemoryEventStore, Metadata, NewEvent, RecordedEvent, Repository,
    SeenPosition, SerializedEvent, Snapshot, StoreError, StreamId,
};
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use time::OffsetDateTime;

type Repo = Repository<Wallet, InMemoryEventStore>;

fn wallet(id: &str) -> StreamId {
    StreamId::new("Wallet", id)
}

fn new_event(event: &WalletEvent) -> NewEvent {
    NewEvent::encode(event, new_id(), Metadata::standalone()).unwrap()
}

async fn all(store: &InMemoryEventStore, filter: &EventFilter, from: u64) -> Vec<RecordedEvent> {
    store
        .read_all(filter, from)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[tokio::test]
async fn stale_expected_version_conflicts() {
    let store = InMemoryEventStore::new();
    let stream = wallet("w1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event(&WalletEvent::Opened)],
            None,
        )
        .await
        .unwrap();
    let credit = new_event(&WalletEvent::Credited { amount: 5 });
    store
        .append(
            &stream,
            ExpectedVersion::Exact(1),
            vec![credit.clone()],
            None,
        )
        .await
        .unwrap();

    let stale = new_event(&WalletEvent::Credited { amount: 7 });
    let err = store
        .append(&stream, ExpectedVersion::Exact(1), vec![stale], None)
        .await
        .unwrap_err();
    match err {
        StoreError::Conflict {
            stream: s,
            expected,
            actual,
        } => {
            assert_eq!(s, stream);
            assert_eq!(expected, ExpectedVersion::Exact(1));
            assert_eq!(actual, Some(2));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert_eq!(store.stream_position(&stream).await.unwrap().version, 2);
}

#[tokio::test]
async fn no_stream_on_an_existing_aggregate_conflicts() {
    let store = InMemoryEventStore::new();
    let stream = wallet("w1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event(&WalletEvent::Opened)],
            None,
        )
        .await
        .unwrap();
    let err = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event(&WalletEvent::Opened)],
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    // The same id under another tenant is another stream.
    store
        .append(
            &wallet("w1").with_tenant("acme"),
            ExpectedVersion::NoStream,
            vec![new_event(&WalletEvent::Opened)],
            None,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn multi_event_append_is_all_or_nothing() {
    let store = InMemoryEventStore::new();
    let stream = wallet("w1");
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event(&WalletEvent::Opened)],
            None,
        )
        .await
        .unwrap();
    let batch: Vec<_> = (1..=3)
        .map(|amount| new_event(&WalletEvent::Credited { amount }))
        .collect();
    let err = store
        .append(&stream, ExpectedVersion::Exact(0), batch, None)
        .await
        .unwrap_err();
    assert!(err.is_conflict());
    assert_eq!(all(&store, &EventFilter::all(), 0).await.len(), 1);
}

#[tokio::test]
async fn same_idempotency_key_twice_writes_once_and_returns_the_same_result() {
    let store = InMemoryEventStore::new();
    let stream = wallet("w1");
    let key = IdempotencyKey::new("open-w1");
    let events = vec![
        new_event(&WalletEvent::Opened),
        new_event(&WalletEvent::Credited { amount: 3 }),
    ];
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            events.clone(),
            Some(&key),
        )
        .await
        .unwrap();
    assert!(!first.duplicate);
    // A retry (stale expectation, even different event ids) is answered with the original.
    let retry_events = events
        .iter()
        .map(|e| NewEvent {
            event_id: new_id(),
            ..e.clone()
        })
        .collect();
    let second = store
        .append(&stream, ExpectedVersion::NoStream, retry_events, Some(&key))
        .await
        .unwrap();
    assert!(second.duplicate);
    assert_eq!(second.events, first.events);
    assert_eq!(all(&store, &EventFilter::all(), 0).await.len(), 2);

    // The key cannot be reused for another aggregate.
    let err = store
        .append(&wallet("w2"), ExpectedVersion::NoStream, events, Some(&key))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::IdempotencyKeyReused { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn appending_the_same_event_id_twice_is_a_retry() {
    let store = InMemoryEventStore::new();
    let stream = wallet("w1");
    let opened = new_event(&WalletEvent::Opened);
    let first = store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![opened.clone()],
            None,
        )
        .await
        .unwrap();
    let second = store
        .append(&stream, ExpectedVersion::Any, vec![opened], None)
        .await
        .unwrap();
    assert!(second.duplicate);
    assert_eq!(first.events, second.events);
}

#[tokio::test]
async fn empty_append_is_refused() {
    let store = InMemoryEventStore::new();
    let err = store
        .append(&wallet("w1"), ExpectedVersion::Any, vec![], None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
}

#[tokio::test]
async fn retried_command_returns_the_original_commit() {
    let repo = Repo::new(InMemoryEventStore::new());
    let metadata = CommandMetadata::root();
    let first = repo
        .execute("w1", Cmd::Open, metadata.clone())
        .await
        .unwrap();
    // The state moved on (the wallet is open, so `Open` would now be refused), yet the retry
    // is answered with the original events.
    let again = repo
        .execute("w1", Cmd::Open, metadata.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    // A multi-event command retried after other writes: the same versions come back.
    repo.execute("w1", Cmd::Credit(10), CommandMetadata::root())
        .await
        .unwrap();
    let fee_meta = CommandMetadata::root().with_idempotency_key("fee-1");
    let charged = repo
        .execute(
            "w1",
            Cmd::DebitWithFee { amount: 4, fee: 1 },
            fee_meta.clone(),
        )
        .await
        .unwrap();
    repo.execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap();
    let retried = repo
        .execute("w1", Cmd::DebitWithFee { amount: 4, fee: 1 }, fee_meta)
        .await
        .unwrap();
    assert_eq!(retried, charged);
    assert_eq!(
        retried.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![3, 4]
    );
    let state = repo.load(&wallet("w1")).await.unwrap();
    assert_eq!(state.state.balance, 6);
    assert_eq!(state.version(), 5);
}

#[tokio::test]
async fn pinned_expected_version_is_checked() {
    let repo = Repo::new(InMemoryEventStore::new()).with_conflict_retries(5);
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap();
    let err = repo
        .execute(
            "w1",
            Cmd::Credit(2),
            CommandMetadata::root().with_expected_version(1),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    repo.execute(
        "w1",
        Cmd::Credit(2),
        CommandMetadata::root().with_expected_version(2),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn domain_rejection_is_typed() {
    let repo = Repo::new(InMemoryEventStore::new());
    let err = repo
        .execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(WalletError::NotOpen)),
        "{err}"
    );
    assert_eq!(err.rejection(), Some(&WalletError::NotOpen));
}

/// A store that lets another writer slip in right before the first append (unless `raced`),
/// and whose next `lagging` loads are served by a replica one event behind (the JetStream
/// store's direct gets may be answered by a follower that lags). While `cut_off` is above
/// zero its authority is one event behind too (a JetStream leader cut off from its cluster
/// answers from its old state until it steps down): loads and `stream_position` lack the last
/// event, each `version_past` answers `None` and counts `cut_off` down, and an append that
/// expects the real last version is refused as a conflict at the old one. While `windowed`, it
/// says it recognises repeats for two minutes only, as JetStream does (the in-memory store
/// recognises them at any age), so that the repository looks up what may be older. Its next
/// `stale_lookups` lookups of a commit are answered by a copy that lacks it.
#[derive(Clone)]
struct RacingStore {
    inner: InMemoryEventStore,
    raced: Arc<AtomicBool>,
    loads: Arc<AtomicU32>,
    lagging: Arc<AtomicU32>,
    cut_off: Arc<AtomicU32>,
    windowed: Arc<AtomicBool>,
    stale_lookups: Arc<AtomicU32>,
}

impl RacingStore {
    fn authority_behind(&self) -> bool {
        self.cut_off.load(Ordering::SeqCst) > 0
    }
}

impl EventStore for RacingStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<cqrs_core::Committed, StoreError> {
        if !self.raced.swap(true, Ordering::SeqCst) {
            self.inner
                .append(
                    stream,
                    ExpectedVersion::Any,
                    vec![new_event(&WalletEvent::Credited { amount: 100 })],
                    None,
                )
                .await?;
        }
        let real = self.inner.stream_position(stream).await?.version;
        if self.authority_behind()
            && real > 0
            && expected == ExpectedVersion::Exact(real)
            && self
                .inner
                .find_commit(stream, idempotency.unwrap())
                .await?
                .is_none()
        {
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: Some(real - 1),
            });
        }
        self.inner
            .append(stream, expected, events, idempotency)
            .await
    }
    async fn load(
        &self,
        stream: &StreamId,
        from: u64,
    ) -> Result<cqrs_core::EventStream, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        let mut events: Vec<RecordedEvent> =
            self.inner.load(stream, from).await?.try_collect().await?;
        let lag = self
            .lagging
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if lag.is_ok() || self.authority_behind() {
            events.pop();
        }
        Ok(futures::stream::iter(events.into_iter().map(Ok)).boxed())
    }
    async fn find_commit(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
    ) -> Result<Option<cqrs_core::Committed>, StoreError> {
        let stale = self
            .stale_lookups
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if stale.is_ok() {
            return Ok(None);
        }
        cqrs_core::store::find_commit_by_scan(self, stream, key).await
    }
    fn deduplication_window(&self) -> Option<std::time::Duration> {
        if self.windowed.load(Ordering::SeqCst) {
            return Some(std::time::Duration::from_secs(120));
        }
        self.inner.deduplication_window()
    }
    async fn stream_position(
        &self,
        stream: &StreamId,
    ) -> Result<cqrs_core::StreamPosition, StoreError> {
        if !self.authority_behind() {
            return self.inner.stream_position(stream).await;
        }
        let events: Vec<RecordedEvent> = self.inner.load(stream, 1).await?.try_collect().await?;
        let held = events.len().saturating_sub(1);
        Ok(events[..held]
            .last()
            .map(RecordedEvent::stream_position)
            .unwrap_or_default())
    }
    async fn version_past(
        &self,
        stream: &StreamId,
        _seen: &SeenPosition,
    ) -> Result<Option<u64>, StoreError> {
        let behind = self
            .cut_off
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if behind.is_ok() {
            return Ok(None);
        }
        Ok(Some(self.inner.stream_position(stream).await?.version))
    }
    async fn read_all(
        &self,
        filter: &EventFilter,
        from: u64,
    ) -> Result<cqrs_core::EventStream, StoreError> {
        self.inner.read_all(filter, from).await
    }
    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }
    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}

async fn racing_repo(retries: u32, cache: bool) -> Repository<Wallet, RacingStore> {
    let inner = InMemoryEventStore::new();
    let store = RacingStore {
        inner: inner.clone(),
        raced: Arc::new(AtomicBool::new(true)),
        loads: Arc::new(AtomicU32::new(0)),
        lagging: Arc::new(AtomicU32::new(0)),
        cut_off: Arc::new(AtomicU32::new(0)),
        windowed: Arc::new(AtomicBool::new(false)),
        stale_lookups: Arc::new(AtomicU32::new(0)),
    };
    let mut repo = Repository::new(store.clone()).with_conflict_retries(retries);
    if cache {
        repo = repo.with_cache(16);
    }
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    store.raced.store(false, Ordering::SeqCst);
    repo
}

#[tokio::test]
async fn conflict_is_retried_when_allowed() {
    let repo = racing_repo(1, false).await;
    credit_lands_after_the_racing_credit(&repo).await;
}

/// Credits 1 to `w1`: decided again on the state that includes the racing writer's credit of
/// 100, it is version 3 and the balance is 101.
async fn credit_lands_after_the_racing_credit(repo: &Repository<Wallet, RacingStore>) {
    let committed = repo
        .execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap();
    assert_eq!(committed[0].version, 3);
    assert_eq!(repo.load(&wallet("w1")).await.unwrap().state.balance, 101);
}

#[tokio::test]
async fn conflict_is_reported_when_retries_are_exhausted() {
    let repo = racing_repo(0, false).await;
    let err = repo
        .execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(repo.load(&wallet("w1")).await.unwrap().state.balance, 100);
}

#[tokio::test]
async fn warm_cache_decides_without_loading() {
    let repo = racing_repo(0, true).await;
    repo.store().raced.store(true, Ordering::SeqCst);
    let loads_before = repo.store().loads.load(Ordering::SeqCst);
    repo.execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w1", Cmd::Credit(2), CommandMetadata::root())
        .await
        .unwrap();
    assert_eq!(repo.store().loads.load(Ordering::SeqCst), loads_before);
    assert_eq!(repo.load(&wallet("w1")).await.unwrap().state.balance, 3);
}

#[tokio::test]
async fn stale_cache_is_caught_by_the_store_and_decided_again_without_a_retry() {
    // No conflict retries allowed, yet the race against the cached state is not the caller's
    // conflict: the command is decided again on the newer state.
    let repo = racing_repo(0, true).await;
    credit_lands_after_the_racing_credit(&repo).await;
}

/// On wallet `w1`, opened and credited 50 where `repo` may not have seen the credit yet:
/// debiting 30 succeeds (decided again on the newer state) and a second debit of 30 is a
/// genuine refusal.
async fn debit_30_then_a_genuine_refusal<S: EventStore>(repo: &Repository<Wallet, S>) {
    let debited = repo
        .execute("w1", Cmd::Debit(30), CommandMetadata::root())
        .await
        .unwrap();
    assert_eq!(debited[0].version, 3);
    let err = repo
        .execute("w1", Cmd::Debit(30), CommandMetadata::root())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(WalletError::InsufficientFunds)),
        "{err}"
    );
}

#[tokio::test]
async fn refusal_on_a_stale_cache_is_checked_against_the_newer_state() {
    let store = InMemoryEventStore::new();
    let cached = Repo::new(store.clone()).with_cache(8);
    let other = Repo::new(store.clone());
    cached
        .execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    // Another process credits the wallet; the cache still says balance 0.
    other
        .execute("w1", Cmd::Credit(50), CommandMetadata::root())
        .await
        .unwrap();
    debit_30_then_a_genuine_refusal(&cached).await;
    // A pinned expected version that the cache does not match is loaded, not guessed.
    let err = cached
        .execute(
            "w1",
            Cmd::Credit(1),
            CommandMetadata::root().with_expected_version(2),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err}");
}

#[tokio::test]
async fn refusal_on_a_load_from_a_lagging_replica_is_checked_against_the_current_state() {
    // No racing writer, no cache: only the loads lag.
    let repo = racing_repo(0, false).await;
    repo.store().raced.store(true, Ordering::SeqCst);
    let lagging = Arc::clone(&repo.store().lagging);
    repo.execute("w1", Cmd::Credit(50), CommandMetadata::root())
        .await
        .unwrap();
    // The next load misses the credit: on it the debit would be refused.
    lagging.store(1, Ordering::SeqCst);
    debit_30_then_a_genuine_refusal(&repo).await;
    // Loads that stay behind (they miss this credit): a retryable store error, never a refusal
    // on an old state.
    repo.execute("w1", Cmd::Credit(100), CommandMetadata::root())
        .await
        .unwrap();
    lagging.store(u32::MAX, Ordering::SeqCst);
    let err = repo
        .execute("w1", Cmd::Debit(50), CommandMetadata::root())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CommandError::Store(e @ StoreError::Unavailable { .. }) if e.is_retryable()),
        "{err}"
    );
    lagging.store(0, Ordering::SeqCst);
    repo.execute("w1", Cmd::Debit(50), CommandMetadata::root())
        .await
        .unwrap();
    assert_eq!(repo.load(&wallet("w1")).await.unwrap().state.balance, 70);
}

/// A racing repository (`cache`: with its cache) whose wallet `w1` is opened and credited 100
/// without a race, the handle that cuts its store's authority off, and the credit.
async fn credited_wallet(
    cache: bool,
) -> (
    Repository<Wallet, RacingStore>,
    Arc<AtomicU32>,
    Vec<cqrs_core::EventEnvelope<WalletEvent>>,
) {
    let repo = racing_repo(0, cache).await;
    repo.store().raced.store(true, Ordering::SeqCst);
    let cut_off = Arc::clone(&repo.store().cut_off);
    let credited = repo
        .execute("w1", Cmd::Credit(100), CommandMetadata::root())
        .await
        .unwrap();
    (repo, cut_off, credited)
}

#[tokio::test]
async fn a_reload_behind_the_version_a_conflict_reported_is_not_decided_on() {
    // No conflict retries: the cached state meets a writer that was first (that costs no
    // retry), and the reload comes from a replica that lacks that writer's event. Deciding on
    // it would conflict again and fail the command; the repository loads again instead.
    let repo = racing_repo(0, true).await;
    repo.store().lagging.store(1, Ordering::SeqCst);
    credit_lands_after_the_racing_credit(&repo).await;
}

/// Loads `repo`'s store served since `before` (a lookup of a command's commit reads the stream
/// too).
fn loads_since(repo: &Repository<Wallet, RacingStore>, before: &mut u32) -> u32 {
    let now = repo.store().loads.load(Ordering::SeqCst);
    std::mem::replace(before, now).abs_diff(now)
}

#[tokio::test]
async fn a_repository_that_has_seen_every_event_needs_no_lookup_to_tell_a_repeat() {
    // A store that answers repeats only within its window: an explicit idempotency key is
    // looked up before its events are appended, unless the repository knows every event.
    let repo = racing_repo(0, false).await;
    repo.store().raced.store(true, Ordering::SeqCst);
    repo.store().windowed.store(true, Ordering::SeqCst);
    let keyed = || CommandMetadata::root().with_idempotency_key("payment-7");
    let mut loads = repo.store().loads.load(Ordering::SeqCst);

    let first = repo.execute("w1", Cmd::Credit(5), keyed()).await.unwrap();
    assert_eq!(loads_since(&repo, &mut loads), 1, "the load alone");
    // The repeat is among the events the load folded: fetched, not written again.
    let again = repo.execute("w1", Cmd::Credit(5), keyed()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        loads_since(&repo, &mut loads),
        2,
        "the load and the original's lookup"
    );
    // A refusal on a current state none of whose events is the command's is answered as such.
    let refused = repo
        .execute("w1", Cmd::Debit(1_000), CommandMetadata::root())
        .await
        .unwrap_err();
    assert_eq!(refused.rejection(), Some(&WalletError::InsufficientFunds));
    assert_eq!(loads_since(&repo, &mut loads), 1, "the load alone");
    assert_eq!(repo.load(&wallet("w1")).await.unwrap().state.balance, 5);
    loads_since(&repo, &mut loads);

    // Not every event known (more than the repository keeps ids of): looked up as before.
    for _ in 0..260 {
        repo.execute("w1", Cmd::Credit(1), CommandMetadata::root())
            .await
            .unwrap();
    }
    loads_since(&repo, &mut loads);
    let keyed = || CommandMetadata::root().with_idempotency_key("payment-8");
    let first = repo.execute("w1", Cmd::Credit(7), keyed()).await.unwrap();
    assert_eq!(loads_since(&repo, &mut loads), 2, "the load and the lookup");
    let again = repo.execute("w1", Cmd::Credit(7), keyed()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(repo.load(&wallet("w1")).await.unwrap().state.balance, 272);
}

#[tokio::test]
async fn a_lookup_that_misses_a_commit_the_load_held_is_not_taken_for_a_refusal() {
    // The repeat of an `Open` is refused by the state its first attempt made; its original is
    // looked up — by a copy that lacks it (a JetStream replica catching up, answering while a
    // leader that lags confirms "nothing more"). The repository loaded that commit, so the miss
    // is the copy's: retryable, and the next repeat gets the original.
    let repo = racing_repo(0, false).await;
    repo.store().raced.store(true, Ordering::SeqCst);
    let keyed = || CommandMetadata::root().with_idempotency_key("open-w2");
    let first = repo.execute("w2", Cmd::Open, keyed()).await.unwrap();
    repo.store().stale_lookups.store(1, Ordering::SeqCst);
    let err = repo.execute("w2", Cmd::Open, keyed()).await.unwrap_err();
    assert_retryably_unavailable(&err);
    let again = repo.execute("w2", Cmd::Open, keyed()).await.unwrap();
    assert_eq!(again, first);
}

/// `err` is the store being unavailable, which the caller may retry.
fn assert_retryably_unavailable(err: &CommandError<WalletError>) {
    assert!(
        matches!(err, CommandError::Store(e @ StoreError::Unavailable { .. }) if e.is_retryable()),
        "{err}"
    );
}

#[tokio::test]
async fn refusal_by_a_store_behind_what_the_caller_has_seen_waits_for_the_store() {
    let (repo, cut_off, credited) = credited_wallet(false).await;
    // A process manager reacting to an event: it has seen the store up to it.
    let reacting_to = |position| {
        CommandMetadata::root().with_seen_position(SeenPosition {
            store: "EVENTS_BANK".to_owned(),
            position,
        })
    };
    // The store's authority lacks the credit, so its own check calls the empty wallet current:
    // without a floor, the debit is refused on a state older than its cause.
    cut_off.store(1, Ordering::SeqCst);
    let err = repo
        .execute("w1", Cmd::Debit(50), CommandMetadata::root())
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(WalletError::InsufficientFunds)),
        "{err}"
    );
    // With the floor the refusal is not taken: the command waits until the store has the credit.
    cut_off.store(2, Ordering::SeqCst);
    let debited = repo
        .execute("w1", Cmd::Debit(50), reacting_to(credited[0].position))
        .await
        .unwrap();
    assert_eq!(debited[0].version, 3);
    assert_eq!(cut_off.load(Ordering::SeqCst), 0);
    // A store that never gets there: a retryable store error, never an answer on a state that
    // lacks the event the caller reacts to.
    cut_off.store(u32::MAX, Ordering::SeqCst);
    let err = repo
        .execute("w1", Cmd::Debit(120), reacting_to(debited[0].position))
        .await
        .unwrap_err();
    assert_retryably_unavailable(&err);
    cut_off.store(0, Ordering::SeqCst);
    // A genuine refusal, on a state that holds the floor, is answered without asking.
    let err = repo
        .execute("w1", Cmd::Debit(80), reacting_to(debited[0].position))
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(WalletError::InsufficientFunds)),
        "{err}"
    );
}

/// A conflict that puts the aggregate below the state the command was decided on comes from a
/// copy of the store that lags (versions never go back), not from a writer that was first: the
/// nemesis saw a retry told "expected version 242, but the stream is at version 200" by a
/// leader cut off from its cluster while its first attempt was stored. The repository loads
/// again and, while the store stays behind, fails with a retryable `Unavailable`, never a
/// `Conflict`; once the store has caught up the command is applied once.
#[tokio::test]
async fn a_conflict_answered_from_behind_the_decided_state_waits_for_the_store() {
    // Decided on the cached state at version 2 (opened, credited) from now on.
    let (repo, cut_off, before) = credited_wallet(true).await;
    assert_eq!(before[0].version, 2);
    cut_off.store(u32::MAX, Ordering::SeqCst);
    let metadata = CommandMetadata::root();
    let err = repo
        .execute("w1", Cmd::Credit(10), metadata.clone())
        .await
        .unwrap_err();
    assert_retryably_unavailable(&err);
    cut_off.store(0, Ordering::SeqCst);
    let credited = repo.execute("w1", Cmd::Credit(10), metadata).await.unwrap();
    assert_eq!(credited[0].version, 3);
    let events: Vec<RecordedEvent> = repo
        .store()
        .load(&StreamId::new("Wallet", "w1"), 1)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 3, "applied once");
}

#[tokio::test]
async fn concurrent_writers_with_retry_lose_nothing() {
    let repo = Repo::new(InMemoryEventStore::new()).with_conflict_retries(100);
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    let tasks: Vec<_> = (1..=32)
        .map(|i| {
            let repo = repo.clone();
            tokio::spawn(async move {
                repo.execute("w1", Cmd::Credit(i), CommandMetadata::root())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let loaded = repo.load(&wallet("w1")).await.unwrap();
    assert_eq!(loaded.state.balance, (1..=32).sum::<i64>());
    assert_eq!(loaded.version(), 33);
}

#[tokio::test]
async fn metadata_flows_from_command_to_events_and_on_to_follow_up_commands() {
    let repo = Repo::new(InMemoryEventStore::new());
    let root = CommandMetadata::root()
        .with_tenant("acme")
        .with_actor("user:42")
        .with_trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .with_extra("request", "r-1");
    let opened = repo.execute("w1", Cmd::Open, root.clone()).await.unwrap();
    let event = &opened[0];
    assert_eq!(event.metadata.correlation_id, root.command_id);
    assert_eq!(event.metadata.causation_id, Some(root.command_id));
    assert_eq!(event.metadata.command_id, Some(root.command_id));
    assert_eq!(event.metadata.command_causation_id, None);
    assert_eq!(event.metadata.tenant.as_deref(), Some("acme"));
    assert_eq!(event.metadata.actor.as_deref(), Some("user:42"));
    assert_eq!(event.metadata.trace, root.trace);
    assert_eq!(
        event.metadata.extra.get("request").map(String::as_str),
        Some("r-1")
    );
    assert_eq!(event.stream_id(), wallet("w1").with_tenant("acme"));

    // A reaction to that event: same flow, caused by the event, deterministic id.
    let follow = CommandMetadata::reaction("welcome-bonus", &event.metadata, event.event_id, 0);
    let credited = repo
        .execute("w1", Cmd::Credit(5), follow.clone())
        .await
        .unwrap();
    let meta = &credited[0].metadata;
    assert_eq!(meta.correlation_id, root.correlation_id);
    assert_eq!(meta.causation_id, Some(follow.command_id));
    assert_eq!(meta.command_causation_id, Some(event.event_id));
    assert_eq!(meta.tenant.as_deref(), Some("acme"));
    // Redelivered: the same reaction id is recognised and nothing new is written.
    let again = CommandMetadata::reaction("welcome-bonus", &event.metadata, event.event_id, 0);
    assert_eq!(
        repo.execute("w1", Cmd::Credit(5), again).await.unwrap(),
        credited
    );
    let history = repo
        .history(&wallet("w1").with_tenant("acme"), 1)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
}

#[tokio::test]
async fn snapshot_plus_tail_equals_full_replay() {
    let store = InMemoryEventStore::new();
    let with_snapshots = Repo::new(store.clone()).with_snapshots_every(3);
    let plain = Repo::new(store.clone());
    with_snapshots
        .execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    for i in 1..=10 {
        with_snapshots
            .execute("w1", Cmd::Credit(i), CommandMetadata::root())
            .await
            .unwrap();
    }
    let snapshot = store
        .load_snapshot(&wallet("w1"))
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(snapshot.stream_position.version, 9);
    assert!(snapshot.stream_position.version < 11);

    let from_snapshot = with_snapshots.load(&wallet("w1")).await.unwrap();
    let full = plain.load(&wallet("w1")).await.unwrap();
    assert_eq!(from_snapshot, full);
    assert_eq!(full.version(), 11);

    // The repository really starts from the snapshot: a doctored snapshot shows through.
    let mut doctored: Wallet = serde_json::from_slice(&snapshot.state).unwrap();
    doctored.transfers += 1000;
    store
        .save_snapshot(
            &wallet("w1"),
            Snapshot {
                state: serde_json::to_vec(&doctored).unwrap(),
                ..snapshot.clone()
            },
        )
        .await
        .unwrap();
    let from_doctored = with_snapshots.load(&wallet("w1")).await.unwrap();
    assert_eq!(from_doctored.state.transfers, full.state.transfers + 1000);

    // A snapshot of another state version is ignored, never misread.
    store
        .save_snapshot(
            &wallet("w1"),
            Snapshot {
                state_version: Wallet::STATE_VERSION + 1,
                state: b"{\"garbage\":true}".to_vec(),
                ..snapshot
            },
        )
        .await
        .unwrap();
    assert_eq!(with_snapshots.load(&wallet("w1")).await.unwrap(), full);
}

#[tokio::test]
async fn time_travel_by_version_and_time() {
    let repo = Repo::new(InMemoryEventStore::new()).with_snapshots_every(2);
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w1", Cmd::Credit(10), CommandMetadata::root())
        .await
        .unwrap();
    let between = OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    repo.execute("w1", Cmd::Credit(20), CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w1", Cmd::Debit(5), CommandMetadata::root())
        .await
        .unwrap();

    let at_2 = repo.state_at_version(&wallet("w1"), 2).await.unwrap();
    assert_eq!((at_2.version(), at_2.state.balance), (2, 10));
    let at_3 = repo.state_at_version(&wallet("w1"), 3).await.unwrap();
    assert_eq!((at_3.version(), at_3.state.balance), (3, 30));
    let at_0 = repo.state_at_version(&wallet("w1"), 0).await.unwrap();
    assert_eq!(at_0.state, Wallet::default());

    let then = repo.state_at_time(&wallet("w1"), between).await.unwrap();
    assert_eq!((then.version(), then.state.balance), (2, 10));
    let now = repo
        .state_at_time(&wallet("w1"), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(now, repo.load(&wallet("w1")).await.unwrap());
}

#[tokio::test]
async fn read_all_filters() {
    let store = InMemoryEventStore::new();
    let wallets = Repo::new(store.clone());
    wallets
        .execute("w1", Cmd::Open, CommandMetadata::root().with_tenant("acme"))
        .await
        .unwrap();
    wallets
        .execute(
            "w1",
            Cmd::Credit(1),
            CommandMetadata::root().with_tenant("acme"),
        )
        .await
        .unwrap();
    let middle = OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    wallets
        .execute(
            "w2",
            Cmd::Open,
            CommandMetadata::root().with_tenant("globex"),
        )
        .await
        .unwrap();
    store
        .append(
            &StreamId::new("Audit", "a1"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                new_id(),
                SerializedEvent {
                    event_type: "Noted".into(),
                    schema_version: 1,
                    data: b"{}".to_vec(),
                },
                Metadata::standalone(),
            )],
            None,
        )
        .await
        .unwrap();

    let positions =
        |events: Vec<RecordedEvent>| events.iter().map(|e| e.position).collect::<Vec<_>>();
    assert_eq!(
        positions(all(&store, &EventFilter::all(), 0).await),
        vec![1, 2, 3, 4]
    );
    assert_eq!(
        positions(all(&store, &EventFilter::all(), 3).await),
        vec![3, 4]
    );
    assert_eq!(
        positions(all(&store, &EventFilter::all().aggregate_type("Audit"), 0).await),
        vec![4]
    );
    assert_eq!(
        positions(all(&store, &EventFilter::all().tenant("acme"), 0).await),
        vec![1, 2]
    );
    assert_eq!(
        positions(all(&store, &EventFilter::all().event_type("Opened"), 0).await),
        vec![1, 3]
    );
    assert_eq!(
        positions(
            all(
                &store,
                &EventFilter::all().event_type("Opened").tenant("globex"),
                0
            )
            .await
        ),
        vec![3]
    );
    assert_eq!(
        positions(
            all(
                &store,
                &EventFilter::all().recorded_between(Some(middle), None),
                0
            )
            .await
        ),
        vec![3, 4]
    );
    assert_eq!(
        positions(
            all(
                &store,
                &EventFilter::all().recorded_between(None, Some(middle)),
                0
            )
            .await
        ),
        vec![1, 2]
    );
}

#[tokio::test]
async fn reads_are_lazy_and_end_at_the_head_of_the_call() {
    let store = InMemoryEventStore::new();
    let repo = Repo::new(store.clone());
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    for i in 1..=600 {
        repo.execute("w1", Cmd::Credit(i), CommandMetadata::root())
            .await
            .unwrap();
    }
    let mut events = store.load(&wallet("w1"), 1).await.unwrap();
    let first = events.next().await.unwrap().unwrap();
    assert_eq!(first.version, 1);
    // Appends after the read started are not part of it.
    repo.execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap();
    let rest: Vec<_> = events.try_collect().await.unwrap();
    assert_eq!(rest.len(), 600);
    let versions: Vec<_> = rest.iter().map(|e| e.version).collect();
    assert_eq!(versions, (2..=601).collect::<Vec<_>>());
}

#[tokio::test]
async fn subscribers_see_history_then_live_appends_in_order() {
    let store = InMemoryEventStore::new();
    let repo = Repo::new(store.clone());
    repo.execute("w1", Cmd::Open, CommandMetadata::root())
        .await
        .unwrap();
    repo.execute("w1", Cmd::Credit(1), CommandMetadata::root())
        .await
        .unwrap();
    let mut feed = Box::pin(store.subscribe(2));
    let writer = {
        let repo = repo.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                let id = if i % 2 == 0 { "w2" } else { "w3" };
                if i < 2 {
                    repo.execute(id, Cmd::Open, CommandMetadata::root())
                        .await
                        .unwrap();
                } else {
                    repo.execute(id, Cmd::Credit(i), CommandMetadata::root())
                        .await
                        .unwrap();
                }
            }
        })
    };
    let mut positions = Vec::new();
    while positions.len() < 51 {
        positions.push(feed.next().await.unwrap().unwrap().position);
    }
    writer.await.unwrap();
    assert_eq!(positions, (2..=52).collect::<Vec<_>>());
}

#[tokio::test]
async fn undecodable_event_is_a_typed_error_that_names_it() {
    let store = InMemoryEventStore::new();
    store
        .append(
            &wallet("w1"),
            ExpectedVersion::NoStream,
            vec![NewEvent::new(
                new_id(),
                SerializedEvent {
                    event_type: "Teleported".into(),
                    schema_version: 1,
                    data: b"{}".to_vec(),
                },
                Metadata::standalone(),
            )],
            None,
        )
        .await
        .unwrap();
    let err = Repo::new(store.clone())
        .load(&wallet("w1"))
        .await
        .unwrap_err();
    match &err {
        StoreError::Decode {
            stream,
            version,
            position,
            source,
        } => {
            assert_eq!((stream, *version, *position), (&wallet("w1"), 1, 1));
            assert!(matches!(
                source,
                cqrs_core::DecodeError::UnknownEventType { .. }
            ));
        }
        other => panic!("expected a decode error, got {other}"),
    }
    assert!(err.to_string().contains("Teleported"), "{err}");
    // The stored event is untouched.
    assert_eq!(all(&store, &EventFilter::all(), 0).await.len(), 1);
}

/// A two-state machine written by hand: what the derive generates, in miniature.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Door {
    #[default]
    Closed,
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum DoorCommand {
    Open,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(transparent)]
struct DoorError(#[from] cqrs_core::InvalidTransition);

impl Aggregate for Door {
    const TYPE: &'static str = "Door";
    const STATE_MACHINE: bool = true;
    type Command = DoorCommand;
    type Event = WalletEvent; // Opened / Debited stand in for "opened" / "closed"
    type Error = DoorError;

    fn decide(&self, command: DoorCommand) -> Result<Vec<WalletEvent>, DoorError> {
        match (self, &command) {
            (Door::Closed, DoorCommand::Open) => Ok(vec![WalletEvent::Opened]),
            (Door::Open, DoorCommand::Close) => Ok(vec![WalletEvent::Debited { amount: 0 }]),
            _ => Err(cqrs_core::InvalidTransition {
                aggregate: Self::TYPE,
                state: self.state_name(),
                command: Self::command_name(&command),
            }
            .into()),
        }
    }

    fn evolve(self, event: &WalletEvent) -> Self {
        match event {
            WalletEvent::Opened => Door::Open,
            _ => Door::Closed,
        }
    }

    fn command_name(command: &DoorCommand) -> &'static str {
        match command {
            DoorCommand::Open => "Open",
            DoorCommand::Close => "Close",
        }
    }

    fn state_name(&self) -> &'static str {
        match self {
            Door::Closed => "Closed",
            Door::Open => "Open",
        }
    }

    fn declared_target(&self, command: &DoorCommand) -> Option<&'static str> {
        match (self, command) {
            (Door::Closed, DoorCommand::Open) => Some("Open"),
            (Door::Open, DoorCommand::Close) => Some("Closed"),
            _ => None,
        }
    }
}

#[tokio::test]
async fn undeclared_transition_is_a_typed_error_naming_state_and_command() {
    let doors = Repository::<Door, _>::new(InMemoryEventStore::new());
    let err = doors
        .execute("d1", DoorCommand::Close, CommandMetadata::root())
        .await
        .unwrap_err();
    match &err {
        CommandError::InvalidTransition(invalid) => {
            assert_eq!(
                (invalid.aggregate, invalid.state, invalid.command),
                ("Door", "Closed", "Close")
            );
        }
        other => panic!("expected an invalid transition, got {other}"),
    }
    assert!(
        err.to_string().contains("`Close` in state `Closed`"),
        "{err}"
    );
    // A retried command whose transition was valid when it first ran gets its original outcome.
    let meta = CommandMetadata::root();
    let opened = doors
        .execute("d1", DoorCommand::Open, meta.clone())
        .await
        .unwrap();
    assert_eq!(
        doors.execute("d1", DoorCommand::Open, meta).await.unwrap(),
        opened
    );
    // The fixtures give the aggregate's own error for it.
    cqrs_core::testing::given::<Door>([WalletEvent::Opened])
        .when_async(DoorCommand::Open, CommandMetadata::root())
        .await
        .then_error(DoorError(cqrs_core::InvalidTransition {
            aggregate: "Door",
            state: "Open",
            command: "Open",
        }));
}
