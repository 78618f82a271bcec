//! Command handling: load the aggregate, decide, append with the expected version, retry on
//! conflict when allowed, keep snapshots and a hot-aggregate cache; and time travel.

use crate::aggregate::{Aggregate, InvalidTransition};
use crate::envelope::{EventEnvelope, NewEvent, RecordedEvent};
use crate::error::{CommandError, StoreError};
use crate::metadata::{CommandMetadata, IdempotencyKey};
use crate::store::{Committed, EventStore, EventStream, Snapshot};
use crate::stream::{ExpectedVersion, StreamId, StreamPosition};
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

/// An aggregate state and where its stream stood when it was loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// Version and store position of the last event folded into `state` (zeros when new).
    pub position: StreamPosition,
}

impl<A> Loaded<A> {
    /// The aggregate version (0 when it has no events).
    pub fn version(&self) -> u64 {
        self.position.version
    }
}

/// Loads aggregates, runs commands against them and appends the outcome.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cqrs_core::{CommandMetadata, InMemoryEventStore, Repository, StreamId};
/// use cqrs_core::doc::{Counter, CounterCommand, CounterEvent};
///
/// let repo = Repository::<Counter, _>::new(InMemoryEventStore::new()).with_conflict_retries(3);
/// let committed = repo.execute("c-1", CounterCommand::Add(5), CommandMetadata::root()).await?;
/// assert_eq!(committed[0].payload, CounterEvent::Added { amount: 5 });
/// assert_eq!(committed[0].version, 1);
///
/// let loaded = repo.load(&StreamId::new("Counter", "c-1")).await?;
/// assert_eq!(loaded.state.value, 5);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct Repository<A: Aggregate, S> {
    store: S,
    conflict_retries: u32,
    snapshots: Option<SnapshotPolicy<A>>,
    cache: Option<Arc<AggregateCache<A>>>,
}

impl<A: Aggregate, S: fmt::Debug> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("store", &self.store)
            .field("conflict_retries", &self.conflict_retries)
            .field("snapshot_every", &self.snapshots.as_ref().map(|s| s.every))
            .field("cache_capacity", &self.cache.as_ref().map(|c| c.capacity))
            .finish()
    }
}

impl<A: Aggregate, S: Clone> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            conflict_retries: self.conflict_retries,
            snapshots: self.snapshots.clone(),
            cache: self.cache.clone(),
        }
    }
}

/// How snapshots are taken and read: bounds on the state only where snapshots are used.
struct SnapshotPolicy<A> {
    every: u64,
    encode: fn(&A) -> Result<Vec<u8>, serde_json::Error>,
    decode: fn(&[u8]) -> Result<A, serde_json::Error>,
}

impl<A> Clone for SnapshotPolicy<A> {
    fn clone(&self) -> Self {
        Self {
            every: self.every,
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// How many loads found behind the store's current position one command reloads before the
/// store is reported `Unavailable`.
const STALE_LOADS: u32 = 5;

/// How many event ids of one aggregate a repository keeps, to tell a repeated command from a
/// new one without reading the stream (an aggregate with more events is looked up as before).
const SEEN_IDS: usize = 256;

/// The ids of every event of an aggregate, when the repository has folded them all from
/// version 1 on and they are at most [`SEEN_IDS`]; `None` when it has not (a load from a
/// snapshot, or more events). Events never go away, so a key whose first event id is not among
/// every event of the aggregate has not been committed to it — the command needs no lookup.
#[derive(Debug, Clone, Default)]
struct Seen(Option<Arc<[Uuid]>>);

impl Seen {
    /// An aggregate loaded from version 1 on, before its first event: every id is known.
    fn from_start() -> Self {
        Self(Some(Arc::from([])))
    }

    /// The ids after the events `next` (`None`: more than [`SEEN_IDS`] of them) are folded.
    fn and(self, next: Option<&[Uuid]>) -> Self {
        match (self.0, next) {
            (Some(seen), Some(next)) if seen.len() + next.len() <= SEEN_IDS => {
                Self(Some(seen.iter().chain(next).copied().collect()))
            }
            _ => Self(None),
        }
    }

    /// Whether the commit of `key` is among the aggregate's events; `None` when not known.
    fn holds(&self, key: &IdempotencyKey) -> Option<bool> {
        let first = key.event_id(0);
        self.0.as_ref().map(|ids| ids.contains(&first))
    }
}

/// The cached aggregates, with the event ids seen of each, and their insertion order.
type CacheEntries<A> = (HashMap<StreamId, (Loaded<A>, Seen)>, VecDeque<StreamId>);

/// A bounded map of recently used aggregates; the oldest insertion is evicted first.
struct AggregateCache<A> {
    capacity: usize,
    entries: Mutex<CacheEntries<A>>,
}

impl<A: Clone> AggregateCache<A> {
    fn get(&self, stream: &StreamId) -> Option<(Loaded<A>, Seen)> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.0.get(stream).cloned()
    }

    fn put(&self, stream: &StreamId, loaded: Loaded<A>, seen: Seen) {
        let mut guard = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(stream.clone(), (loaded, seen)).is_none() {
            order.push_back(stream.clone());
            while map.len() > self.capacity {
                match order.pop_front() {
                    Some(oldest) => {
                        map.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
    }
}

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository over `store`: no retries, no snapshots, no cache.
    pub fn new(store: S) -> Self {
        Self {
            store,
            conflict_retries: 0,
            snapshots: None,
            cache: None,
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// On a conflict, reload and decide again up to `retries` times — only for commands that
    /// do not pin an expected version themselves (a pinned version's conflict is the answer).
    pub fn with_conflict_retries(mut self, retries: u32) -> Self {
        self.conflict_retries = retries;
        self
    }

    /// Saves a snapshot whenever a commit crosses a multiple of `every` events; loads start from
    /// the latest snapshot whose state version is `A::STATE_VERSION`.
    pub fn with_snapshots_every(mut self, every: u64) -> Self
    where
        A: Serialize + DeserializeOwned,
    {
        self.snapshots = Some(SnapshotPolicy {
            every: every.max(1),
            encode: |state| serde_json::to_vec(state),
            decode: |bytes| serde_json::from_slice(bytes),
        });
        self
    }

    /// Keeps up to `capacity` recently used aggregates in memory. A load then reads only the
    /// events appended since, and a command first decides on the cached state without asking
    /// the store (one round trip per command); should another writer have moved the aggregate
    /// on, the append's version check catches it and the command is decided again on the newer
    /// state — this costs no conflict retry, since the caller's expectation was not at fault.
    /// With each aggregate of at most 256 events the cache keeps their ids (16 bytes each), so
    /// that a command that may repeat an old commit is told apart without reading the stream.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = Some(Arc::new(AggregateCache {
            capacity: capacity.max(1),
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }));
        self
    }

    /// The stream of aggregate `aggregate_id` under `tenant`; [`StreamId::of`] names it without
    /// a store type.
    pub fn stream_id(aggregate_id: &str, tenant: Option<&str>) -> StreamId {
        StreamId::of::<A>(aggregate_id, tenant)
    }

    /// The current state of `stream`: from the cache or the latest snapshot, plus newer events.
    pub async fn load(&self, stream: &StreamId) -> Result<Loaded<A>, StoreError> {
        Ok(self.load_seen(stream).await?.0)
    }

    /// [`Self::load`], with the ids of the aggregate's events when they are all known.
    async fn load_seen(&self, stream: &StreamId) -> Result<(Loaded<A>, Seen), StoreError> {
        let span = tracing::debug_span!(
            "cqrs.load",
            aggregate_type = %stream.aggregate_type,
            aggregate_id = %stream.aggregate_id,
            version = tracing::field::Empty,
        );
        async {
            let (start, seen) = match self.cache.as_ref().and_then(|c| c.get(stream)) {
                Some(cached) => cached,
                None => match self.load_snapshot(stream).await? {
                    Some(snapshot) => (snapshot, Seen::default()),
                    None => (Loaded::default(), Seen::from_start()),
                },
            };
            let tail = if start.position.version == 0 {
                self.store.load(stream, 1).await?
            } else {
                self.store.load_after(stream, start.position).await?
            };
            let (loaded, ids) = fold(start, tail, |_| true).await?;
            let seen = seen.and(ids.as_deref());
            tracing::Span::current().record("version", loaded.version());
            if let Some(cache) = &self.cache {
                cache.put(stream, loaded.clone(), seen.clone());
            }
            Ok((loaded, seen))
        }
        .instrument(span)
        .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Loaded<A>>, StoreError> {
        let Some(policy) = &self.snapshots else {
            return Ok(None);
        };
        let Some(snapshot) = self.store.load_snapshot(stream).await? else {
            return Ok(None);
        };
        if snapshot.state_version != A::STATE_VERSION {
            tracing::debug!(
                %stream,
                snapshot_state_version = snapshot.state_version,
                current_state_version = A::STATE_VERSION,
                "ignoring snapshot of another state version; rebuilding from events"
            );
            return Ok(None);
        }
        match (policy.decode)(&snapshot.state) {
            Ok(state) => Ok(Some(Loaded {
                state,
                position: snapshot.stream_position,
            })),
            Err(error) => {
                tracing::warn!(%stream, %error, "ignoring unreadable snapshot; rebuilding from events");
                Ok(None)
            }
        }
    }

    /// Runs `command` against aggregate `aggregate_id` (under `metadata.tenant`) and appends the
    /// events it decides, with the metadata propagation rules applied.
    ///
    /// A command retried with the same idempotency key (by default its command id) appends
    /// nothing and returns the originally committed events.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        let stream = Self::stream_id(aggregate_id, metadata.tenant.as_deref());
        let span = tracing::info_span!(
            "cqrs.execute",
            aggregate_type = A::TYPE,
            aggregate_id,
            command = A::command_name(&command),
            correlation_id = %metadata.correlation_id,
            command_id = %metadata.command_id,
            version = tracing::field::Empty,
        );
        crate::trace::follow(&span, metadata.trace.as_deref());
        let started = std::time::Instant::now();
        let outcome = self
            .execute_on(&stream, command, &metadata)
            .instrument(span)
            .await;
        crate::metrics::command(A::TYPE, outcome_label(&outcome), started.elapsed());
        outcome
    }

    async fn execute_on(
        &self,
        stream: &StreamId,
        command: A::Command,
        metadata: &CommandMetadata,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        let key = metadata.idempotency_key();
        let mut attempt = 0;
        // The first attempt may decide on a cached state without asking the store: one round
        // trip per command. The store's version check makes that safe — a stale cache shows up
        // as a conflict or a refusal, and then the state is brought up to date and the command
        // decided again, which costs no retry because the caller's expectation was not at fault.
        let mut trust_cache = true;
        let mut stale_loads = 0u32;
        // The highest version a state of this command was decided on, or a conflict reported.
        // Versions never go back (streams refuse deletes), so a later load or answer below it
        // came from a copy of the store that lags — a JetStream follower catching up, or even
        // the leader, when it is cut off from its cluster.
        let mut decided_on = 0u64;
        // Whether a commit the repository does not know of must be looked up (once).
        let mut look_up = may_repeat_an_old_commit(&self.store, metadata);
        loop {
            let cached = trust_cache
                .then(|| self.cached(stream, metadata.expected_version))
                .flatten();
            let from_cache = cached.is_some();
            let (loaded, seen) = match cached {
                Some(cached) => cached,
                None => self.load_seen(stream).await?,
            };
            trust_cache = false;
            if loaded.version() < decided_on {
                let behind = format!("version {decided_on} was loaded or reported before");
                self.behind(stream, &loaded, &behind, &mut stale_loads)
                    .await?;
                continue;
            }
            decided_on = loaded.version();
            // A pinned version is checked before deciding: a command based on an older state is
            // a conflict, whatever the newer state would say to it — unless it is a retry of a
            // command that succeeded, which gets its original outcome.
            if let Some(pinned) = metadata.expected_version
                && pinned != loaded.version()
            {
                return self.stale_pin(stream, &key, pinned, loaded.version()).await;
            }
            let decided = decide(&loaded, command.clone());
            // A refusal, or a decision to write nothing, is answered only on the current state (a
            // cache or a lagging copy of the store may be stale; appends alone are fenced).
            if !matches!(&decided, Ok(events) if !events.is_empty())
                && (from_cache
                    || !self
                        .is_current(stream, &loaded, metadata, &mut stale_loads)
                        .await?)
            {
                continue;
            }
            let events = match decided {
                Ok(events) => events,
                // A retry of a command that already succeeded may be refused by the state it
                // produced: answer with the original outcome instead (looked up unless every
                // event of this current state is known not to be the command's).
                Err(refusal) => {
                    return match self.repeat_of(stream, &key, &seen, true).await? {
                        Some(original) => decode_committed::<A>(&original),
                        None => Err(refusal),
                    };
                }
            };
            if events.is_empty() {
                return Ok(Vec::new());
            }
            // A repeat the store would not recognise by itself (older than its deduplication
            // window, or of unknown age): its first attempt may be in the history already.
            let unknown_is_looked_up = std::mem::take(&mut look_up);
            if let Some(original) = self
                .repeat_of(stream, &key, &seen, unknown_is_looked_up)
                .await?
            {
                return decode_committed::<A>(&original);
            }
            let expected =
                ExpectedVersion::Exact(metadata.expected_version.unwrap_or(loaded.version()));
            let new_events = encode(&events, metadata, &key)?;
            let appended = self
                .store
                .append(stream, expected, new_events, Some(&key))
                .instrument(tracing::debug_span!(
                    "cqrs.append",
                    expected_version = loaded.version(),
                    events = events.len()
                ))
                .await;
            match appended {
                Ok(committed) if committed.duplicate => return decode_committed::<A>(&committed),
                Ok(committed) => {
                    return Ok(self
                        .after_commit(stream, (loaded, seen), committed, events)
                        .await);
                }
                // A conflict that puts the aggregate below the state the command was decided on
                // is an answer from a copy that lags, not a writer that was first (the nemesis
                // saw a retry told "expected version 242, but the stream is at version 200" by
                // a leader cut off from its cluster, while its first attempt was stored).
                Err(error) if error.is_behind_expectation() => {
                    let behind = format!("the store answered: {error}");
                    self.behind(stream, &loaded, &behind, &mut stale_loads)
                        .await?;
                }
                // Stores answer a retried append with its original commit even when its expected
                // version is stale, so a conflict here is a real one.
                Err(error) if error.is_conflict() => {
                    // The version a conflict reports exists: a reload below it lags.
                    if let StoreError::Conflict {
                        actual: Some(v), ..
                    } = error
                    {
                        decided_on = decided_on.max(v);
                    }
                    if from_cache {
                        tracing::debug!("cached state was stale; loading newer events");
                        continue;
                    }
                    if !self.retries_conflict(metadata, &mut attempt) {
                        return Err(error.into());
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Whether a conflict on a state the store gave is decided again, counted in `attempt`:
    /// for a command that pins no version, within the configured retries.
    fn retries_conflict(&self, metadata: &CommandMetadata, attempt: &mut u32) -> bool {
        let retried = metadata.expected_version.is_none() && *attempt < self.conflict_retries;
        crate::metrics::conflict(A::TYPE, retried);
        if retried {
            *attempt += 1;
            tracing::debug!(attempt = *attempt, "conflict; reloading and deciding again");
        }
        retried
    }

    /// The original commit of `key` on `stream` if the command is a repeat: none when the
    /// repository knows every event of the state decided on and none is the command's (a first
    /// attempt stored after that state fails the append's expected version, and the reload then
    /// knows it); looked up in the store when it is among them, or when the events are not all
    /// known and `unknown_is_looked_up`. A lookup that misses a commit the loaded events held
    /// was answered by a copy that lags: `Unavailable`, never a refusal or a second commit.
    async fn repeat_of(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
        seen: &Seen,
        unknown_is_looked_up: bool,
    ) -> Result<Option<Committed>, StoreError> {
        let known = seen.holds(key);
        if !known.unwrap_or(unknown_is_looked_up) {
            return Ok(None);
        }
        match self.store.find_commit(stream, key).await? {
            None if known == Some(true) => Err(StoreError::Unavailable {
                operation: "look up a commit",
                reason: format!(
                    "{stream} was loaded with the commit of idempotency key {key}, but the lookup of that commit did not find it: the copy of the store that answered lags; retry"
                ),
                source: None,
            }),
            found => Ok(found),
        }
    }

    /// Whether `loaded` is where `stream` stands now: the store's authority holds no later
    /// event of it, and — when the command's caller has seen the store up to a position
    /// ([`CommandMetadata::seen_position`]) — every event up to that position, in the same
    /// answer (asked only when `loaded` does not already reach it). The second check catches an
    /// authority that is itself behind: a JetStream leader cut off from the rest of its cluster
    /// keeps answering as leader, from its old state, until it steps down (7–18 s in a
    /// plain-client experiment), so it says "no later event" of an aggregate whose event the
    /// caller reacts to (the nemesis saw a saga's `Ship` refused by a paid order loaded as never
    /// created).
    ///
    /// A load that is behind counts in `stale_loads`; after [`STALE_LOADS`] of them the store is
    /// `Unavailable` (retryable) rather than the command answered on a state known to be old.
    pub(crate) async fn is_current(
        &self,
        stream: &StreamId,
        loaded: &Loaded<A>,
        command: &CommandMetadata,
        stale_loads: &mut u32,
    ) -> Result<bool, StoreError> {
        // A state that holds an event at or after the floor was read from a copy past it.
        let floor = (command.seen_position.as_ref())
            .filter(|seen| seen.position > loaded.position.position);
        let now = match floor {
            Some(seen) => self.store.version_past(stream, seen).await?,
            None => Some(self.store.current_version(stream, loaded.position).await?),
        };
        let behind = match (now, floor) {
            (None, Some(seen)) => Some(format!(
                "the store answered from before position {}, which the caller has seen",
                seen.position
            )),
            (Some(now), _) if now > loaded.version() => {
                Some(format!("its current version is {now}"))
            }
            _ => None,
        };
        let Some(behind) = behind else {
            return Ok(true);
        };
        self.behind(stream, loaded, &behind, stale_loads).await?;
        Ok(false)
    }

    /// Counts a state of `stream` found `behind` the store (loaded from, or answered by, a copy
    /// that lags) in `stale_loads`, and waits a little before the next load; after
    /// [`STALE_LOADS`] of them the store is `Unavailable` (retryable) rather than the command
    /// answered on a state known to be old.
    async fn behind(
        &self,
        stream: &StreamId,
        loaded: &Loaded<A>,
        behind: &str,
        stale_loads: &mut u32,
    ) -> Result<(), StoreError> {
        *stale_loads += 1;
        tracing::debug!(
            loaded = loaded.version(),
            %behind,
            "the state was loaded from a copy of the store that lags; loading again"
        );
        if *stale_loads > STALE_LOADS {
            return Err(StoreError::Unavailable {
                operation: "load",
                reason: format!(
                    "{stream} was loaded at version {} behind the store more than {STALE_LOADS} times ({behind}): the servers that answer this client lag (a replica catching up, or a leader cut off from its cluster); retry",
                    loaded.version()
                ),
                source: None,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20 << *stale_loads)).await;
        Ok(())
    }

    /// The answer to a command pinned at `pinned` while `stream` is at `actual`: its original
    /// events if it is a retry of a command that succeeded, else a conflict.
    async fn stale_pin(
        &self,
        stream: &StreamId,
        key: &crate::IdempotencyKey,
        pinned: u64,
        actual: u64,
    ) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        if let Some(original) = self.store.find_commit(stream, key).await? {
            return decode_committed::<A>(&original);
        }
        crate::metrics::conflict(A::TYPE, false);
        Err(StoreError::Conflict {
            stream: stream.clone(),
            expected: ExpectedVersion::Exact(pinned),
            actual: Some(actual),
        }
        .into())
    }

    /// The cached state of `stream`, if it can serve a command expecting `expected_version`.
    fn cached(
        &self,
        stream: &StreamId,
        expected_version: Option<u64>,
    ) -> Option<(Loaded<A>, Seen)> {
        self.cache
            .as_ref()
            .and_then(|cache| cache.get(stream))
            .filter(|(cached, _)| expected_version.is_none_or(|v| v == cached.version()))
    }

    /// The envelopes of `events`, stored as `committed`; updates the cache and takes a snapshot
    /// when the commit crossed the snapshot interval.
    async fn after_commit(
        &self,
        stream: &StreamId,
        before: (Loaded<A>, Seen),
        committed: Committed,
        events: Vec<A::Event>,
    ) -> Vec<EventEnvelope<A::Event>> {
        crate::metrics::appended(A::TYPE, committed.events.len());
        let envelopes: Vec<_> = committed
            .events
            .into_iter()
            .zip(events)
            .map(|(recorded, event)| recorded.map(|_| event))
            .collect();
        self.remember(stream, before, &envelopes).await;
        envelopes
    }

    /// Updates the cache and takes a snapshot when `committed` crossed the snapshot interval.
    async fn remember(
        &self,
        stream: &StreamId,
        (before, seen): (Loaded<A>, Seen),
        committed: &[EventEnvelope<A::Event>],
    ) {
        let Some(last) = committed.last() else {
            return;
        };
        tracing::Span::current().record("version", last.version);
        let after = Loaded {
            state: committed
                .iter()
                .fold(before.state, |state, e| state.evolve(&e.payload)),
            position: last.stream_position(),
        };
        if let Some(policy) = &self.snapshots
            && before.position.version / policy.every != after.position.version / policy.every
        {
            self.save_snapshot(stream, policy, &after).await;
        }
        if let Some(cache) = &self.cache {
            let ids: Vec<Uuid> = committed.iter().map(|e| e.event_id).collect();
            cache.put(stream, after, seen.and(Some(&ids)));
        }
    }

    async fn save_snapshot(&self, stream: &StreamId, policy: &SnapshotPolicy<A>, at: &Loaded<A>) {
        // A snapshot is an optimisation: failing to write one never fails the command.
        let state = match (policy.encode)(&at.state) {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(%stream, %error, "snapshot not taken: state does not serialise");
                return;
            }
        };
        let snapshot = Snapshot {
            stream_position: at.position,
            state_version: A::STATE_VERSION,
            state,
            taken_at: OffsetDateTime::now_utc(),
        };
        if let Err(error) = self.store.save_snapshot(stream, snapshot).await {
            tracing::warn!(%stream, %error, "snapshot not saved");
        }
    }

    /// The decoded events of `stream` from `from_version` on.
    pub async fn history(
        &self,
        stream: &StreamId,
        from_version: u64,
    ) -> Result<Vec<EventEnvelope<A::Event>>, StoreError> {
        self.store
            .load(stream, from_version)
            .await?
            .and_then(|recorded| async move { decode(&recorded) })
            .try_collect()
            .await
    }

    /// The state of `stream` right after version `version` (time travel by version).
    pub async fn state_at_version(
        &self,
        stream: &StreamId,
        version: u64,
    ) -> Result<Loaded<A>, StoreError> {
        let start = self
            .load_snapshot(stream)
            .await?
            .filter(|s| s.position.version <= version);
        let (start, tail) = match start {
            Some(start) => {
                let tail = self.store.load_after(stream, start.position).await?;
                (start, tail)
            }
            None => (Loaded::default(), self.store.load(stream, 1).await?),
        };
        Ok(fold(start, tail, |e| e.version <= version).await?.0)
    }

    /// The state of `stream` as it was at instant `at` (time travel by time): every event
    /// recorded at or before `at`.
    pub async fn state_at_time(
        &self,
        stream: &StreamId,
        at: OffsetDateTime,
    ) -> Result<Loaded<A>, StoreError> {
        let events = self.store.load(stream, 1).await?;
        Ok(fold(Loaded::default(), events, |e| e.recorded_at <= at)
            .await?
            .0)
    }
}

/// What `command` decides on `loaded`: a state machine refuses an undeclared transition before
/// `decide` runs ([`CommandError::InvalidTransition`]), a domain refusal is
/// [`CommandError::Rejected`].
/// Whether a repeat of the command under `metadata` could come later than `store` recognises
/// repeats by itself ([`EventStore::deduplication_window`]), so that its key must be looked up
/// before its events are appended. A command id that is a UUID v7 says when the command was
/// issued; one issued within half the window (the other half is room for clocks that differ)
/// needs no lookup. An explicit idempotency key, or an id without a time, always does.
pub(crate) fn may_repeat_an_old_commit<S: EventStore>(
    store: &S,
    metadata: &CommandMetadata,
) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    outlives_window(store.deduplication_window(), metadata, now)
}

/// [`may_repeat_an_old_commit`] at `now` (since the Unix epoch).
fn outlives_window(
    window: Option<std::time::Duration>,
    metadata: &CommandMetadata,
    now: std::time::Duration,
) -> bool {
    let Some(window) = window else {
        return false;
    };
    if metadata.idempotency_key.is_some() {
        return true;
    }
    let Some((seconds, nanos)) = metadata.command_id.get_timestamp().map(|t| t.to_unix()) else {
        return true;
    };
    now.abs_diff(std::time::Duration::new(seconds, nanos)) >= window / 2
}

/// The events a command decided, as the store takes them: ids derived from `key`, the command's
/// metadata, and the context of the span that writes them (feature `otel`).
pub(crate) fn encode<E: crate::DomainEvent>(
    events: &[E],
    metadata: &CommandMetadata,
    key: &crate::IdempotencyKey,
) -> Result<Vec<NewEvent>, StoreError> {
    let mut event_metadata = metadata.event_metadata();
    if let Some(traceparent) = crate::trace::traceparent(&tracing::Span::current()) {
        event_metadata.trace = Some(traceparent);
    }
    events
        .iter()
        .enumerate()
        .map(|(i, event)| NewEvent::encode(event, key.event_id(i), event_metadata.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::from)
}

pub(crate) fn decide<A: Aggregate>(
    loaded: &Loaded<A>,
    command: A::Command,
) -> Result<Vec<A::Event>, CommandError<A::Error>> {
    if A::STATE_MACHINE && loaded.state.declared_target(&command).is_none() {
        return Err(CommandError::InvalidTransition(InvalidTransition {
            aggregate: A::TYPE,
            state: loaded.state.state_name(),
            command: A::command_name(&command),
        }));
    }
    let _decide = tracing::debug_span!("cqrs.decide", version = loaded.version()).entered();
    loaded.state.decide(command).map_err(CommandError::Rejected)
}

impl<A: Aggregate> Default for Loaded<A> {
    fn default() -> Self {
        Self {
            state: A::default(),
            position: StreamPosition::default(),
        }
    }
}

/// The `outcome` label of a command's result (see [`crate::metrics`]).
fn outcome_label<T, E>(outcome: &Result<Vec<T>, CommandError<E>>) -> &'static str {
    match outcome {
        Ok(events) if events.is_empty() => "unchanged",
        Ok(_) => "committed",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(CommandError::InvalidTransition(_)) => "invalid_transition",
        Err(CommandError::Store(error)) if error.is_conflict() => "conflict",
        Err(CommandError::Store(error)) if error.is_retryable() => "unavailable",
        Err(_) => "error",
    }
}

fn decode<E: crate::DomainEvent>(recorded: &RecordedEvent) -> Result<EventEnvelope<E>, StoreError> {
    recorded.decode().map_err(|source| StoreError::Decode {
        stream: recorded.stream_id(),
        version: recorded.version,
        position: recorded.position,
        source,
    })
}

fn decode_committed<A: Aggregate>(
    committed: &Committed,
) -> Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
    tracing::debug!("idempotent retry: returning the original commit");
    Ok(committed
        .events
        .iter()
        .map(decode)
        .collect::<Result<Vec<_>, _>>()?)
}

/// Folds the events of `events` that pass `keep` into `start`, stopping at the first that does
/// not (streams are in version order, so the rest would not pass either). Returns the state and
/// the ids of the events folded (`None` when there were more than [`SEEN_IDS`]).
async fn fold<A: Aggregate>(
    start: Loaded<A>,
    mut events: EventStream,
    keep: impl Fn(&RecordedEvent) -> bool,
) -> Result<(Loaded<A>, Option<Vec<Uuid>>), StoreError> {
    let mut loaded = start;
    let mut ids = Some(Vec::new());
    while let Some(recorded) = events.try_next().await? {
        if !keep(&recorded) {
            break;
        }
        ids = ids.filter(|ids| ids.len() < SEEN_IDS).map(|mut ids| {
            ids.push(recorded.event_id);
            ids
        });
        let envelope: EventEnvelope<A::Event> = decode(&recorded)?;
        loaded.state = loaded.state.evolve(&envelope.payload);
        loaded.position = envelope.stream_position();
    }
    Ok((loaded, ids))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    #[test]
    fn only_commands_issued_within_half_the_window_skip_the_lookup() {
        let window = Some(Duration::from_secs(120));
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let fresh = CommandMetadata::root();
        assert!(!outlives_window(window, &fresh, now));
        assert!(!outlives_window(
            window,
            &fresh,
            now + Duration::from_secs(59)
        ));
        assert!(outlives_window(
            window,
            &fresh,
            now + Duration::from_secs(61)
        ));
        // A clock ahead of ours by more than half the window: looked up too.
        assert!(outlives_window(
            window,
            &fresh,
            now.saturating_sub(Duration::from_secs(61))
        ));
        // No time in the id, or an explicit key: always looked up.
        let derived = CommandMetadata::root_with_id(crate::metadata::derived_id(&[b"x"]));
        assert!(outlives_window(window, &derived, now));
        let keyed = CommandMetadata::root().with_idempotency_key("k");
        assert!(outlives_window(window, &keyed, now));
        // A store that keeps every key needs no lookup; one that keeps none, always.
        assert!(!outlives_window(None, &keyed, now));
        assert!(outlives_window(Some(Duration::ZERO), &fresh, now));
    }
}
