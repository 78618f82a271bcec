//! Commands on several aggregates committed together: a transfer debits one account and
//! credits another, or neither happens.

use crate::aggregate::Aggregate;
use crate::error::{CommandError, StoreError};
use crate::metadata::{CommandMetadata, IdempotencyKey};
use crate::repository::{Loaded, Repository, decide, may_repeat_an_old_commit};
use crate::store::{AppendTo, Committed, EventStore};
use crate::stream::{ExpectedVersion, StreamId};
use tracing::Instrument;

/// Commands on several aggregates, each decided on its own aggregate's current state, whose
/// events are appended in one atomic commit ([`EventStore::append_all`]): every aggregate must
/// still be at the version its command was decided on, or nothing is stored and the commit is
/// a [`StoreError::Conflict`] naming the aggregate that moved (then run the whole unit again).
///
/// All events carry the unit's metadata; their ids derive from its idempotency key and their
/// aggregate, so a unit
/// run again with the same metadata after it committed writes nothing new and
/// [`commit`](Self::commit) returns the original events — also when the states it moved now
/// refuse its commands: [`execute`](Self::execute) then answers with the aggregate's part of
/// the original commit.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cqrs_core::doc::{Counter, CounterCommand};
/// use cqrs_core::{CommandMetadata, InMemoryEventStore, Repository, StreamId, UnitOfWork};
///
/// let store = InMemoryEventStore::new();
/// let counters = Repository::<Counter, _>::new(store.clone());
/// let mut unit = UnitOfWork::new(CommandMetadata::root());
/// unit.execute(&counters, "a", CounterCommand::Add(1)).await?;
/// unit.execute(&counters, "b", CounterCommand::Add(2)).await?;
/// let committed = unit.commit(&store).await?;
/// assert_eq!(committed.len(), 2);
/// assert_eq!(counters.load(&StreamId::new("Counter", "b")).await?.state.value, 2);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
///
/// A unit can also depend on aggregates it reads but does not change ([`read`](Self::read),
/// [`guard`](Self::guard)): if one of them moved before the commit, nothing is stored and the
/// commit is a [`StoreError::Conflict`] naming it.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cqrs_core::doc::{Counter, CounterCommand};
/// use cqrs_core::{CommandMetadata, InMemoryEventStore, Repository, StoreError, StreamId, UnitOfWork};
///
/// let store = InMemoryEventStore::new();
/// let counters = Repository::<Counter, _>::new(store.clone());
/// counters.execute("limit", CounterCommand::Add(5), CommandMetadata::root()).await?;
///
/// // Add to `a` what `limit` holds, valid only while `limit` stays as read.
/// let mut unit = UnitOfWork::new(CommandMetadata::root());
/// let limit = unit.read(&counters, "limit").await?;
/// unit.execute(&counters, "a", CounterCommand::Add(limit.state.value)).await?;
///
/// // `limit` moves before the commit: nothing is stored.
/// counters.execute("limit", CounterCommand::Add(1), CommandMetadata::root()).await?;
/// let err = unit.commit(&store).await.unwrap_err();
/// assert!(matches!(err, StoreError::Conflict { ref stream, .. } if stream.aggregate_id == "limit"));
/// assert_eq!(counters.load(&StreamId::new("Counter", "a")).await?.version(), 0);
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct UnitOfWork {
    metadata: CommandMetadata,
    key: IdempotencyKey,
    parts: Vec<AppendTo>,
    /// Every aggregate a command ran on, in order, staged or not.
    aggregates: Vec<StreamId>,
    /// Whether a command found this unit's earlier commit: the unit is a retry.
    retried: bool,
}

impl UnitOfWork {
    /// An empty unit whose commands all run under `metadata` (its tenant, actor, flow and
    /// idempotency key).
    pub fn new(metadata: CommandMetadata) -> Self {
        Self {
            key: metadata.idempotency_key(),
            metadata,
            parts: Vec::new(),
            aggregates: Vec::new(),
            retried: false,
        }
    }

    /// Loads aggregate `aggregate_id` through `repository` (its cache and snapshots), decides
    /// `command` on it and stages the events, expecting the aggregate to stay at the version
    /// just loaded. Returns the decided events. A refusal stages nothing; an aggregate the
    /// unit already has is [`StoreError::InvalidInput`] (give it one command that does both).
    pub async fn execute<A: Aggregate, S: EventStore>(
        &mut self,
        repository: &Repository<A, S>,
        aggregate_id: &str,
        command: A::Command,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        let stream = StreamId::of::<A>(aggregate_id, self.metadata.tenant.as_deref());
        self.check_new(&stream)?;
        self.aggregates.push(stream.clone());
        // A refusal or a decision to write nothing is answered only on the current state (a
        // load may come from a replica that lags), as by the repository.
        let mut stale_loads = 0;
        let (loaded, decided) = loop {
            let loaded = repository.load(&stream).await?;
            let decided = decide(&loaded, command.clone());
            if matches!(&decided, Ok(events) if !events.is_empty())
                || repository
                    .is_current(&stream, &loaded, &self.metadata, &mut stale_loads)
                    .await?
            {
                break (loaded, decided);
            }
        };
        let key = part_key(&self.key, &stream);
        let events = match decided {
            Ok(events) => events,
            // A retry of a unit that committed may be refused by the state it produced.
            Err(refusal) => {
                return match repository.store().find_commit(&stream, &key).await? {
                    Some(original) => self.original::<A>(&original),
                    None => Err(refusal),
                };
            }
        };
        if events.is_empty() {
            return Ok(events);
        }
        // A repeat older than the store recognises by itself: looked up, as by the repository.
        if may_repeat_an_old_commit(repository.store(), &self.metadata)
            && let Some(original) = repository.store().find_commit(&stream, &key).await?
        {
            return self.original::<A>(&original);
        }
        let encoded = crate::repository::encode(&events, &self.metadata, &key)?;
        let expected = match loaded.version() {
            0 => ExpectedVersion::NoStream,
            version => ExpectedVersion::Exact(version),
        };
        self.parts.push(AppendTo::new(stream, expected, encoded));
        Ok(events)
    }

    /// Loads aggregate `aggregate_id` through `repository` and makes the commit depend on what
    /// was read: a *read guard*. The aggregate gets no events; if it moves past the version
    /// loaded here before the commit, the commit stores nothing and is a
    /// [`StoreError::Conflict`] naming it. For decisions over aggregates the unit reads but
    /// does not change: pay the account a username points to, only while the username still
    /// points there.
    ///
    /// An aggregate the unit already has is [`StoreError::InvalidInput`] (a command on it
    /// already depends on its version).
    pub async fn read<A: Aggregate, S: EventStore>(
        &mut self,
        repository: &Repository<A, S>,
        aggregate_id: &str,
    ) -> Result<Loaded<A>, StoreError> {
        let stream = StreamId::of::<A>(aggregate_id, self.metadata.tenant.as_deref());
        self.check_new(&stream)?;
        let loaded = repository.load(&stream).await?;
        self.guard(stream, loaded.version())?;
        Ok(loaded)
    }

    /// A read guard on a version read elsewhere (a read model that records the versions it
    /// saw): the commit holds only while `stream` is at `version` (0: while it has no events).
    /// See [`read`](Self::read).
    pub fn guard(&mut self, stream: StreamId, version: u64) -> Result<(), StoreError> {
        self.check_new(&stream)?;
        let expected = match version {
            0 => ExpectedVersion::NoStream,
            version => ExpectedVersion::Exact(version),
        };
        self.parts.push(AppendTo::guard(stream, expected));
        Ok(())
    }

    /// Refuses an aggregate the unit already has, commanded or guarded.
    fn check_new(&self, stream: &StreamId) -> Result<(), StoreError> {
        if self.aggregates.contains(stream) || self.parts.iter().any(|p| p.stream == *stream) {
            return Err(StoreError::InvalidInput {
                stream: stream.clone(),
                reason: "the unit of work already has this aggregate: give it one command that does both, and read or guard only aggregates it does not command".to_owned(),
            });
        }
        Ok(())
    }

    /// The events of this unit's earlier commit to one aggregate: the unit is a retry.
    fn original<A: Aggregate>(
        &mut self,
        original: &Committed,
    ) -> Result<Vec<A::Event>, CommandError<A::Error>> {
        self.retried = true;
        original
            .events
            .iter()
            .map(|e| {
                e.decode::<A::Event>()
                    .map(|e| e.payload)
                    .map_err(|source| decode_error(e, source).into())
            })
            .collect()
    }

    /// The aggregates the unit's commands ran on, in order.
    pub fn aggregates(&self) -> &[StreamId] {
        &self.aggregates
    }

    /// The aggregates the unit reads but does not change, in order ([`read`](Self::read),
    /// [`guard`](Self::guard)).
    pub fn guards(&self) -> impl Iterator<Item = &StreamId> {
        self.parts
            .iter()
            .filter(|p| p.is_guard())
            .map(|p| &p.stream)
    }

    /// Appends every staged event atomically, if every guard still holds; one [`Committed`]
    /// per aggregate with events, in the order their commands ran (none when no command
    /// decided anything). An aggregate that moved is a [`StoreError::Conflict`] naming it; an
    /// answer that puts one below the version the unit was decided on came from a copy of the
    /// store that lags and is [`StoreError::Unavailable`] (both: run the unit again).
    pub async fn commit<S: EventStore>(self, store: &S) -> Result<Vec<Committed>, StoreError> {
        if self.retried {
            return self.originals(store).await;
        }
        if self.parts.iter().all(AppendTo::is_guard) {
            return Ok(Vec::new());
        }
        let span = tracing::info_span!(
            "cqrs.unit_of_work",
            aggregates = self.parts.iter().filter(|p| !p.is_guard()).count(),
            guards = self.parts.iter().filter(|p| p.is_guard()).count(),
            events = self.parts.iter().map(|p| p.events.len()).sum::<usize>(),
            correlation_id = %self.metadata.correlation_id,
            command_id = %self.metadata.command_id,
        );
        let guards: Vec<bool> = self.parts.iter().map(AppendTo::is_guard).collect();
        let committed = store
            .append_all(self.parts, Some(&self.key))
            .instrument(span)
            .await
            .map_err(from_behind)?;
        Ok(committed
            .into_iter()
            .zip(guards)
            .filter_map(|(committed, guard)| (!guard).then_some(committed))
            .collect())
    }

    /// The unit's earlier commit, aggregate by aggregate.
    async fn originals<S: EventStore>(self, store: &S) -> Result<Vec<Committed>, StoreError> {
        let mut originals = Vec::new();
        for stream in &self.aggregates {
            match store
                .find_commit(stream, &part_key(&self.key, stream))
                .await?
            {
                Some(original) => originals.push(original),
                None if self.parts.iter().all(|p| p.stream != *stream) => {}
                None => {
                    return Err(StoreError::InvalidInput {
                        stream: stream.clone(),
                        reason: format!(
                            "idempotency key `{}` was committed before without this aggregate: a retried unit of work must run the same commands",
                            self.key
                        ),
                    });
                }
            }
        }
        Ok(originals)
    }
}

/// A conflict that puts an aggregate below the version the unit was decided on came from a copy
/// of the store that lags (versions never go back; on JetStream even the leader answers from
/// its old state when it is cut off from its cluster), not from a writer that was first: it is
/// `Unavailable` (retryable; run the unit again), as the repository answers it.
fn from_behind(error: StoreError) -> StoreError {
    if !error.is_behind_expectation() {
        return error;
    }
    StoreError::Unavailable {
        operation: "commit a unit of work",
        reason: format!(
            "a copy of the store that lags answered ({error}), below the version the unit was decided on; run the unit again"
        ),
        source: None,
    }
}

/// The key an aggregate's part of a unit is found again by: its event ids derive from it, so
/// that every part's ids differ and each part can be looked up on its own aggregate.
fn part_key(key: &IdempotencyKey, stream: &StreamId) -> IdempotencyKey {
    IdempotencyKey::new(format!("{key}/{stream}"))
}

fn decode_error(event: &crate::RecordedEvent, source: crate::event::DecodeError) -> StoreError {
    StoreError::Decode {
        stream: event.stream_id(),
        version: event.version,
        position: event.position,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Counter, CounterCommand};
    use crate::memory::InMemoryEventStore;
    use crate::store::{EventStream, Snapshot, forward_to_inner};
    use crate::stream::{EventFilter, StreamPosition};
    use crate::{NewEvent, SeenPosition};

    /// The in-memory store, except that a multi-aggregate commit is answered by a copy one
    /// event behind its first aggregate (a JetStream leader cut off from its cluster).
    #[derive(Clone)]
    struct Behind(InMemoryEventStore);

    impl std::ops::Deref for Behind {
        type Target = InMemoryEventStore;
        fn deref(&self) -> &InMemoryEventStore {
            &self.0
        }
    }

    impl EventStore for Behind {
        forward_to_inner! {
            fn append(stream: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>, idempotency: Option<&IdempotencyKey>) -> Committed;
            fn load(stream: &StreamId, from_version: u64) -> EventStream;
            fn load_after(stream: &StreamId, after: StreamPosition) -> EventStream;
            fn find_commit(stream: &StreamId, key: &IdempotencyKey) -> Option<Committed>;
            fn stream_position(stream: &StreamId) -> StreamPosition;
            fn version_past(stream: &StreamId, seen: &SeenPosition) -> Option<u64>;
            fn read_all(filter: &EventFilter, from_position: u64) -> EventStream;
            fn load_snapshot(stream: &StreamId) -> Option<Snapshot>;
            fn save_snapshot(stream: &StreamId, snapshot: Snapshot) -> ();
        }

        async fn append_all(
            &self,
            parts: Vec<AppendTo>,
            _idempotency: Option<&IdempotencyKey>,
        ) -> Result<Vec<Committed>, StoreError> {
            let part = &parts[0];
            let ExpectedVersion::Exact(version) = part.expected else {
                panic!("the unit loaded {} at a version", part.stream);
            };
            Err(StoreError::Conflict {
                stream: part.stream.clone(),
                expected: part.expected,
                actual: Some(version - 1),
            })
        }
    }

    #[tokio::test]
    async fn a_conflict_below_the_version_the_unit_was_decided_on_is_retryable() {
        let store = Behind(InMemoryEventStore::new());
        let counters = Repository::<Counter, _>::new(store.clone());
        counters
            .execute("a", CounterCommand::Add(1), CommandMetadata::root())
            .await
            .unwrap();
        let mut unit = UnitOfWork::new(CommandMetadata::root());
        unit.execute(&counters, "a", CounterCommand::Add(1))
            .await
            .unwrap();
        unit.execute(&counters, "b", CounterCommand::Add(2))
            .await
            .unwrap();
        let err = unit.commit(&store).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Unavailable { .. }) && err.is_retryable(),
            "{err}"
        );
        // A conflict above it is a writer that was first: still a conflict.
        let raced = from_behind(StoreError::Conflict {
            stream: StreamId::new("Counter", "a"),
            expected: ExpectedVersion::Exact(1),
            actual: Some(2),
        });
        assert!(raced.is_conflict(), "{raced}");
    }
}
