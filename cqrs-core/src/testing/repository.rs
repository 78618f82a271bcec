//! Given-when-then over a [`Repository`]: stored history with its metadata, for a chosen
//! aggregate id and tenant; a command sent once, repeated (a retry), pinned to a version, or
//! racing a second writer; then its events, refusal or conflict, the state and what is stored.

use super::{diff_lists, numbered};
use crate::aggregate::Aggregate;
use crate::envelope::{EventEnvelope, NewEvent};
use crate::error::{CommandError, StoreError};
use crate::memory::InMemoryEventStore;
use crate::metadata::{CommandMetadata, IdempotencyKey};
use crate::repository::Repository;
use crate::store::{AppendTo, Committed, EventStore, EventStream, Snapshot};
use crate::stream::{EventFilter, ExpectedVersion, StreamId, StreamPosition};
use std::fmt::Debug;
use std::panic::Location;
use std::sync::{Arc, Mutex, PoisonError};

/// Starts a scenario over a [`Repository`] on an [`InMemoryEventStore`], for aggregate
/// `aggregate_id` of type `A` (without a tenant unless [`Stored::in_tenant`] names one).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use cqrs_core::doc::{Counter, CounterCommand, CounterEvent};
/// use cqrs_core::testing::given_stored;
/// use cqrs_core::CommandMetadata;
///
/// // A retry: the same command id again writes nothing new and answers with the original.
/// let deposit = CommandMetadata::root().with_actor("user:ada");
/// given_stored::<Counter>("c-1")
///     .in_tenant("acme")
///     .events([CounterEvent::Added { amount: 2 }], CommandMetadata::root())
///     .when_repeated(CounterCommand::Add(3), deposit)
///     .await
///     .then_events([CounterEvent::Added { amount: 3 }])
///     .then_answered_with_the_original()
///     .then_state(Counter { value: 5 });
///
/// // A stale pin: decided on version 1 while the counter is at 2.
/// given_stored::<Counter>("c-1")
///     .events([CounterEvent::Added { amount: 1 }], CommandMetadata::root())
///     .events([CounterEvent::Added { amount: 1 }], CommandMetadata::root())
///     .when(CounterCommand::Add(3), CommandMetadata::root().with_expected_version(1))
///     .await
///     .then_conflict();
/// # });
/// ```
pub fn given_stored<A: Aggregate>(aggregate_id: impl Into<String>) -> Stored<A> {
    Stored {
        aggregate_id: aggregate_id.into(),
        tenant: None,
        history: Vec::new(),
        racer: None,
        conflict_retries: 0,
    }
}

/// One step of the stored history.
enum Step<A: Aggregate> {
    /// Events stored as one commit of a command under this metadata.
    Events(Vec<A::Event>, CommandMetadata),
    /// A command run through the repository.
    Command(A::Command, CommandMetadata, &'static Location<'static>),
}

/// A scenario's stored history, built step by step; [`when`](Self::when) runs the command
/// under test.
pub struct Stored<A: Aggregate> {
    aggregate_id: String,
    tenant: Option<String>,
    history: Vec<Step<A>>,
    racer: Option<(A::Command, CommandMetadata)>,
    conflict_retries: u32,
}

impl<A: Aggregate> Debug for Stored<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("aggregate_type", &A::TYPE)
            .field("aggregate_id", &self.aggregate_id)
            .field("tenant", &self.tenant)
            .field("steps", &self.history.len())
            .field("racer", &self.racer)
            .field("conflict_retries", &self.conflict_retries)
            .finish()
    }
}

impl<A: Aggregate> Stored<A> {
    /// The aggregate belongs to `tenant`: the history and the commands run in it.
    #[must_use]
    pub fn in_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// `events` stored as one commit of a command under `metadata` (its correlation, actor,
    /// extras; the tenant is the scenario's), with event ids derived from its idempotency key as
    /// the repository derives them — so the command under test can be a retry of it.
    #[must_use]
    pub fn events(
        mut self,
        events: impl IntoIterator<Item = A::Event>,
        metadata: CommandMetadata,
    ) -> Self {
        self.history
            .push(Step::Events(events.into_iter().collect(), metadata));
        self
    }

    /// `command` under `metadata` run through the repository: its events become history. A
    /// refusal panics, naming the calling line.
    #[must_use]
    #[track_caller]
    pub fn command(mut self, command: A::Command, metadata: CommandMetadata) -> Self {
        self.history
            .push(Step::Command(command, metadata, Location::caller()));
        self
    }

    /// A second writer's `command` under `metadata`, committed after the command under test
    /// loaded the aggregate and before it appends: the command under test then meets a
    /// conflict, and decides again on the newer state if conflict retries are allowed
    /// ([`with_conflict_retries`](Self::with_conflict_retries)).
    #[must_use]
    pub fn racing(mut self, command: A::Command, metadata: CommandMetadata) -> Self {
        self.racer = Some((command, metadata));
        self
    }

    /// The repository reloads and decides again up to `retries` times on a conflict
    /// ([`Repository::with_conflict_retries`]); none by default.
    #[must_use]
    pub fn with_conflict_retries(mut self, retries: u32) -> Self {
        self.conflict_retries = retries;
        self
    }

    /// Sends `command` under `metadata` (the tenant is the scenario's) through the repository.
    /// Panics, naming the calling line, if setting up the history fails.
    #[track_caller]
    pub fn when(
        self,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> impl Future<Output = StoredThen<A>> {
        let caller = Location::caller();
        self.run(caller, command, metadata, false)
    }

    /// Sends `command` under `metadata` twice, as a client retrying it would; the outcome is
    /// the second answer's. [`StoredThen::then_answered_with_the_original`] checks that the
    /// retry wrote nothing and answered with the first attempt's events.
    #[track_caller]
    pub fn when_repeated(
        self,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> impl Future<Output = StoredThen<A>> {
        let caller = Location::caller();
        self.run(caller, command, metadata, true)
    }

    async fn run(
        self,
        caller: &'static Location<'static>,
        command: A::Command,
        metadata: CommandMetadata,
        repeat: bool,
    ) -> StoredThen<A> {
        let inner = InMemoryEventStore::new();
        let stream = StreamId::of::<A>(self.aggregate_id.as_str(), self.tenant.as_deref());
        let in_tenant = |mut m: CommandMetadata| {
            m.tenant.clone_from(&self.tenant);
            m
        };
        let setup = Repository::<A, _>::new(inner.clone());
        for step in self.history {
            match step {
                Step::Events(events, metadata) => {
                    let metadata = in_tenant(metadata);
                    if let Err(error) = store_events::<A>(&inner, &stream, &events, &metadata).await
                    {
                        panic!("could not store the given events: {error} (when at {caller})");
                    }
                }
                Step::Command(command, metadata, at) => {
                    let name = A::command_name(&command);
                    let outcome = setup
                        .execute(&self.aggregate_id, command, in_tenant(metadata))
                        .await;
                    if let Err(error) = outcome {
                        panic!("the given command `{name}` failed at {at}: {error}");
                    }
                }
            }
        }
        let store = RacingStore::<A> {
            inner: inner.clone(),
            racer: Arc::new(Mutex::new(self.racer.map(|(command, metadata)| Racer {
                aggregate_id: self.aggregate_id.clone(),
                command,
                metadata: in_tenant(metadata),
            }))),
            raced: Arc::new(Mutex::new(None)),
        };
        let repository =
            Repository::<A, _>::new(store.clone()).with_conflict_retries(self.conflict_retries);
        let version_before = version(&inner, &stream, caller).await;
        let metadata = in_tenant(metadata);
        let command_id = metadata.command_id;
        let command_name = A::command_name(&command);
        let mut first = None;
        if repeat {
            let outcome = repository
                .execute(&self.aggregate_id, command.clone(), metadata.clone())
                .await;
            first = Some((outcome, version(&inner, &stream, caller).await));
        }
        let outcome = repository
            .execute(&self.aggregate_id, command, metadata)
            .await;
        if let Some(error) = store
            .raced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            panic!("the racing command failed: {error} (when at {caller})");
        }
        let history = match Repository::<A, _>::new(inner.clone())
            .history(&stream, 1)
            .await
        {
            Ok(history) => history,
            Err(error) => panic!("could not read the history back: {error} (when at {caller})"),
        };
        let state = history
            .iter()
            .fold(A::default(), |state, e| state.evolve(&e.payload));
        StoredThen {
            caller,
            command_name,
            command_id,
            outcome,
            first,
            version_before,
            state,
            history,
        }
    }
}

/// Stores `events` as the repository would for a command under `metadata`.
async fn store_events<A: Aggregate>(
    store: &InMemoryEventStore,
    stream: &StreamId,
    events: &[A::Event],
    metadata: &CommandMetadata,
) -> Result<(), StoreError> {
    let key = metadata.idempotency_key();
    let encoded = events
        .iter()
        .enumerate()
        .map(|(i, e)| NewEvent::encode(e, key.event_id(i), metadata.event_metadata()))
        .collect::<Result<Vec<_>, _>>()?;
    store
        .append(stream, ExpectedVersion::Any, encoded, Some(&key))
        .await?;
    Ok(())
}

async fn version(
    store: &InMemoryEventStore,
    stream: &StreamId,
    caller: &'static Location<'static>,
) -> u64 {
    match store.stream_position(stream).await {
        Ok(position) => position.version,
        Err(error) => panic!("the in-memory store failed: {error} (when at {caller})"),
    }
}

/// What a racing writer sends.
struct Racer<A: Aggregate> {
    aggregate_id: String,
    command: A::Command,
    metadata: CommandMetadata,
}

/// The in-memory store, with a second writer that commits its command just before the first
/// append it sees.
struct RacingStore<A: Aggregate> {
    inner: InMemoryEventStore,
    racer: Arc<Mutex<Option<Racer<A>>>>,
    /// Why the racer failed, if it did.
    raced: Arc<Mutex<Option<String>>>,
}

impl<A: Aggregate> Clone for RacingStore<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            racer: self.racer.clone(),
            raced: self.raced.clone(),
        }
    }
}

impl<A: Aggregate> RacingStore<A> {
    /// Lets the racer commit, once.
    async fn race(&self) {
        let racer = self
            .racer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(racer) = racer {
            let outcome = Repository::<A, _>::new(self.inner.clone())
                .execute(&racer.aggregate_id, racer.command, racer.metadata)
                .await;
            if let Err(error) = outcome {
                *self.raced.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(error.to_string());
            }
        }
    }
}

impl<A: Aggregate> EventStore for RacingStore<A> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed, StoreError> {
        self.race().await;
        self.inner
            .append(stream, expected, events, idempotency)
            .await
    }

    async fn append_all(
        &self,
        parts: Vec<AppendTo>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Vec<Committed>, StoreError> {
        self.race().await;
        self.inner.append_all(parts, idempotency).await
    }

    async fn load(&self, stream: &StreamId, from_version: u64) -> Result<EventStream, StoreError> {
        self.inner.load(stream, from_version).await
    }

    async fn find_commit(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        self.inner.find_commit(stream, key).await
    }

    fn deduplication_window(&self) -> Option<std::time::Duration> {
        self.inner.deduplication_window()
    }

    async fn stream_position(&self, stream: &StreamId) -> Result<StreamPosition, StoreError> {
        self.inner.stream_position(stream).await
    }

    async fn version_past(
        &self,
        stream: &StreamId,
        seen: &crate::metadata::SeenPosition,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.version_past(stream, seen).await
    }

    async fn current_version(
        &self,
        stream: &StreamId,
        loaded: crate::StreamPosition,
    ) -> Result<u64, StoreError> {
        self.inner.current_version(stream, loaded).await
    }

    async fn read_all(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        self.inner.read_all(filter, from_position).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        self.inner.load_snapshot(stream).await
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        self.inner.save_snapshot(stream, snapshot).await
    }
}

/// The answer to a repeated command's first attempt, and the version the aggregate was at
/// after it.
type First<A> = (
    Result<Vec<EventEnvelope<<A as Aggregate>::Event>>, CommandError<<A as Aggregate>::Error>>,
    u64,
);

/// The outcome of a command sent through the repository, to assert on.
pub struct StoredThen<A: Aggregate> {
    caller: &'static Location<'static>,
    command_name: &'static str,
    command_id: uuid::Uuid,
    outcome: Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>>,
    first: Option<First<A>>,
    version_before: u64,
    state: A,
    history: Vec<EventEnvelope<A::Event>>,
}

impl<A: Aggregate> Debug for StoredThen<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredThen")
            .field("command", &self.command_name)
            .field("outcome", &self.outcome)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> StoredThen<A> {
    /// The command's answer: its events with their envelopes, or the error.
    pub fn outcome(&self) -> &Result<Vec<EventEnvelope<A::Event>>, CommandError<A::Error>> {
        &self.outcome
    }

    /// The aggregate's stored events after the command, with their envelopes.
    pub fn history(&self) -> &[EventEnvelope<A::Event>] {
        &self.history
    }

    /// The answered events with their envelopes (versions, positions, metadata). Panics if the
    /// command failed.
    #[track_caller]
    pub fn envelopes(&self) -> &[EventEnvelope<A::Event>] {
        match &self.outcome {
            Ok(envelopes) => envelopes,
            Err(error) => panic!(
                "`{}` failed, nothing was answered: {error} (when at {})",
                self.command_name, self.caller
            ),
        }
    }

    /// Asserts the command answered with exactly `expected`, in order.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        let actual: Vec<_> = self.envelopes().iter().map(|e| e.payload.clone()).collect();
        assert!(
            actual == expected,
            "`{}` answered with other events than expected (when at {})\n{}",
            self.command_name,
            self.caller,
            diff_lists(&expected, &actual)
        );
        self
    }

    /// Asserts the aggregate refused the command with `expected`.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value reads best: `.then_error(Error::X)`
    pub fn then_error(self, expected: A::Error) -> Self
    where
        A::Error: PartialEq,
    {
        match &self.outcome {
            Err(CommandError::Rejected(actual)) if *actual == expected => {}
            other => panic!(
                "`{}` was expected to be rejected (when at {})\n  expected: {expected:?}\n  actual:   {}",
                self.command_name,
                self.caller,
                describe(other)
            ),
        }
        self
    }

    /// Asserts the aggregate's state has no transition for the command.
    #[track_caller]
    pub fn then_invalid_transition(self) -> Self {
        match &self.outcome {
            Err(CommandError::InvalidTransition(_)) => {}
            other => panic!(
                "`{}` was expected to be an invalid transition (when at {})\n  actual: {}",
                self.command_name,
                self.caller,
                describe(other)
            ),
        }
        self
    }

    /// Asserts the command met a conflict ([`StoreError::Conflict`]) and nothing of it was
    /// stored.
    #[track_caller]
    pub fn then_conflict(self) -> Self {
        match &self.outcome {
            Err(CommandError::Store(StoreError::Conflict { .. })) => {}
            other => panic!(
                "`{}` was expected to meet a conflict (when at {})\n  actual: {}",
                self.command_name,
                self.caller,
                describe(other)
            ),
        }
        let written: Vec<_> = self
            .history
            .iter()
            .filter(|e| e.metadata.command_id == Some(self.command_id))
            .collect();
        assert!(
            written.is_empty(),
            "`{}` met a conflict, yet its events are stored (when at {}):\n{}",
            self.command_name,
            self.caller,
            numbered(&written)
        );
        self
    }

    /// Asserts the aggregate holds exactly `expected` after the command: the given history,
    /// what raced it and what it wrote.
    #[track_caller]
    pub fn then_stored(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        let actual: Vec<_> = self.history.iter().map(|e| e.payload.clone()).collect();
        assert!(
            actual == expected,
            "the aggregate holds other events than expected after `{}` (when at {})\n{}",
            self.command_name,
            self.caller,
            diff_lists(&expected, &actual)
        );
        self
    }

    /// For [`Stored::when_repeated`]: asserts the repeat answered with the first attempt's
    /// events — the same ids, versions and positions — and stored nothing new.
    #[track_caller]
    pub fn then_answered_with_the_original(self) -> Self
    where
        A::Event: PartialEq,
    {
        let Some((first, version_after_first)) = &self.first else {
            panic!(
                "`then_answered_with_the_original` needs `when_repeated` (when at {})",
                self.caller
            );
        };
        let Ok(first) = first else {
            panic!(
                "the first attempt of `{}` failed, so there is no original: {} (when at {})",
                self.command_name,
                describe(first),
                self.caller
            );
        };
        let repeat = self.envelopes();
        assert!(
            repeat == first.as_slice(),
            "the repeat of `{}` answered with other events than the first attempt (when at {})\n{}",
            self.command_name,
            self.caller,
            diff_lists(first, repeat)
        );
        let now = self.history.last().map_or(0, |e| e.version);
        assert!(
            now == *version_after_first && now == self.version_before + first.len() as u64,
            "the repeat of `{}` stored events: version {} before, {version_after_first} after the first attempt, {now} after the repeat (when at {})",
            self.command_name,
            self.version_before,
            self.caller
        );
        self
    }
}

/// Assertions on the state, for aggregates that can be compared.
impl<A: Aggregate + PartialEq> StoredThen<A> {
    /// Asserts the aggregate's state after the command is `expected`.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value reads best: `.then_state(State::X)`
    pub fn then_state(self, expected: A) -> Self {
        assert!(
            self.state == expected,
            "the state after `{}` differs (when at {})\n  expected: {expected:#?}\n  actual:   {:#?}",
            self.command_name,
            self.caller,
            self.state
        );
        self
    }
}

fn describe<T: Debug, E: Debug>(outcome: &Result<T, E>) -> String {
    match outcome {
        Ok(value) => format!("succeeded with {value:#?}"),
        Err(error) => format!("{error:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Counter, CounterCommand, CounterError, CounterEvent};
    use futures::FutureExt;

    fn added(amount: u64) -> CounterEvent {
        CounterEvent::Added { amount }
    }

    /// The panic message of a scenario that must fail.
    async fn failure(scenario: impl Future<Output = ()>) -> String {
        let payload = std::panic::AssertUnwindSafe(scenario)
            .catch_unwind()
            .await
            .expect_err("the assertion should fail");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn history_carries_its_metadata_and_tenant() {
        let given = CommandMetadata::root().with_actor("user:ada");
        let then = given_stored::<Counter>("c-1")
            .in_tenant("acme")
            .events([added(1)], given.clone())
            .command(CounterCommand::Add(2), CommandMetadata::root())
            .when(CounterCommand::Add(3), CommandMetadata::root())
            .await
            .then_events([added(3)])
            .then_stored([added(1), added(2), added(3)])
            .then_state(Counter { value: 6 });
        let first = &then.history()[0];
        assert_eq!(first.metadata.actor.as_deref(), Some("user:ada"));
        assert_eq!(first.metadata.tenant.as_deref(), Some("acme"));
        assert_eq!(
            first.event_id,
            given.idempotency_key().event_id(0),
            "ids as the repository derives them"
        );
        assert_eq!(then.envelopes()[0].version, 3);
        assert_eq!(then.envelopes()[0].metadata.tenant.as_deref(), Some("acme"));
    }

    #[tokio::test]
    async fn a_retry_of_a_given_commit_answers_with_it() {
        let original = CommandMetadata::root();
        given_stored::<Counter>("c-1")
            .events([added(4)], original.clone())
            .events([added(1)], CommandMetadata::root())
            .when(CounterCommand::Add(4), original)
            .await
            .then_events([added(4)])
            .then_stored([added(4), added(1)]);
    }

    #[tokio::test]
    async fn a_repeat_answers_with_the_original_and_a_single_run_cannot_claim_one() {
        given_stored::<Counter>("c-1")
            .when_repeated(CounterCommand::Add(2), CommandMetadata::root())
            .await
            .then_answered_with_the_original()
            .then_stored([added(2)]);
        let message = failure(async {
            given_stored::<Counter>("c-1")
                .when(CounterCommand::Add(2), CommandMetadata::root())
                .await
                .then_answered_with_the_original();
        })
        .await;
        assert!(message.contains("needs `when_repeated`"), "{message}");
    }

    #[tokio::test]
    async fn a_racing_writer_is_a_conflict_or_a_decision_on_the_newer_state() {
        let scenario = || {
            given_stored::<Counter>("c-1")
                .events([added(1)], CommandMetadata::root())
                .racing(CounterCommand::Add(10), CommandMetadata::root())
        };
        scenario()
            .when(CounterCommand::Add(2), CommandMetadata::root())
            .await
            .then_conflict()
            .then_stored([added(1), added(10)]);
        let then = scenario()
            .with_conflict_retries(1)
            .when(CounterCommand::Add(2), CommandMetadata::root())
            .await
            .then_events([added(2)])
            .then_stored([added(1), added(10), added(2)]);
        assert_eq!(then.envelopes()[0].version, 3);
        let message = failure(async {
            scenario()
                .with_conflict_retries(1)
                .when(CounterCommand::Add(2), CommandMetadata::root())
                .await
                .then_conflict();
        })
        .await;
        assert!(message.contains("expected to meet a conflict"), "{message}");
    }

    #[tokio::test]
    async fn refusals_and_stale_pins_are_told_apart() {
        given_stored::<Counter>("c-1")
            .when(CounterCommand::Add(0), CommandMetadata::root())
            .await
            .then_error(CounterError::Zero)
            .then_stored([]);
        given_stored::<Counter>("c-1")
            .events([added(1)], CommandMetadata::root())
            .when(
                CounterCommand::Add(0),
                CommandMetadata::root().with_expected_version(0),
            )
            .await
            .then_conflict();
        let message = failure(async {
            given_stored::<Counter>("c-1")
                .when(CounterCommand::Add(1), CommandMetadata::root())
                .await
                .then_error(CounterError::Zero);
        })
        .await;
        assert!(message.contains("expected to be rejected"), "{message}");
        assert!(
            message.contains("repository.rs"),
            "names the calling line: {message}"
        );
    }
}
