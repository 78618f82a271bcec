//! Given-when-then fixtures for aggregates.
//!
//! ```
//! use cqrs_core::testing::given;
//! use cqrs_core::doc::{Counter, CounterCommand, CounterError, CounterEvent};
//!
//! given::<Counter>([CounterEvent::Added { amount: 2 }])
//!     .when(CounterCommand::Add(3))
//!     .then_events([CounterEvent::Added { amount: 3 }])
//!     .then_state(Counter { value: 5 });
//!
//! given::<Counter>([])
//!     .when(CounterCommand::Add(0))
//!     .then_error(CounterError::Zero);
//! ```
//!
//! [`given_stored`] tests what the repository adds — stored metadata, retries, pinned versions,
//! racing writers — on a chosen aggregate id and tenant.
//!
//! The synchronous `when` needs no runtime and works inside async tests too; `when_async` runs
//! the command through a [`Repository`] over an [`InMemoryEventStore`] holding the given events,
//! so metadata, versions and the store's rules take part. Assertions are `#[track_caller]`:
//! a failure points at the test line and shows expected and actual side by side. The async
//! entry points (`when_async`, [`when_projected`], [`when_projected_in_batches`]) take the
//! caller's line before their future starts (`#[track_caller]` does not reach into an
//! `async fn`) and name it in their failure messages.

// Every assertion here panics by design: that is how a test fails.
#![allow(clippy::missing_panics_doc)]

use crate::aggregate::Aggregate;
use crate::deadline::{DeadlineKey, Timed};
use crate::envelope::{EventEnvelope, NewEvent, RecordedEvent, SerializedEvent};
use crate::error::CommandError;
use crate::event::DomainEvent;
use crate::memory::InMemoryEventStore;
use crate::metadata::{CommandMetadata, Metadata, new_id};
use crate::process::{ProcessManager, reactions};
use crate::projection::Projection;
use crate::repository::Repository;
use crate::store::EventStore;
use crate::stream::{ExpectedVersion, StreamId};
use std::collections::HashMap;
use std::fmt::{Debug, Write as _};
use std::panic::Location;
use time::OffsetDateTime;
use uuid::Uuid;

mod repository;

pub use repository::{Stored, StoredThen, given_stored};

/// The aggregate id `when_async` uses.
pub const TEST_AGGREGATE_ID: &str = "test-aggregate";

/// Starts a scenario from the history `events`.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    Given {
        history: events.into_iter().collect(),
    }
}

/// Starts a scenario from the events that `commands` produce, applied in order. Panics, at the
/// caller's line, if one of them is rejected.
#[track_caller]
pub fn given_commands<A: Aggregate>(commands: impl IntoIterator<Item = A::Command>) -> Given<A> {
    given::<A>([]).and_commands(commands)
}

/// A history of events, waiting for the command under test.
#[derive(Debug, Clone)]
pub struct Given<A: Aggregate> {
    history: Vec<A::Event>,
}

impl<A: Aggregate> Given<A> {
    /// Adds events to the history.
    pub fn and(mut self, events: impl IntoIterator<Item = A::Event>) -> Self {
        self.history.extend(events);
        self
    }

    /// Adds the events that `commands` produce. Panics if one of them is rejected.
    #[track_caller]
    pub fn and_commands(mut self, commands: impl IntoIterator<Item = A::Command>) -> Self {
        let mut state = A::replay(&self.history);
        for command in commands {
            let name = A::command_name(&command);
            match state.clone().transition(command) {
                Ok((next, events)) => {
                    state = next;
                    self.history.extend(events);
                }
                Err(error) => panic!(
                    "given command `{name}` was rejected: {error}\n  in state: {state:?}\n  history: {:#?}",
                    self.history
                ),
            }
        }
        self
    }

    /// Runs `command` against the state the history leads to (pure, no store).
    ///
    /// For state-machine aggregates it also checks that the events land in the state the
    /// transition declares, and panics naming the transition when they do not.
    #[track_caller]
    pub fn when(self, command: A::Command) -> Then<A> {
        let state = A::replay(&self.history);
        let command_name = A::command_name(&command);
        let declared = state.declared_target(&command);
        let from = state.state_name();
        let outcome = state.transition(command);
        if let (Some(target), Ok((next, _))) = (declared, &outcome) {
            let reached = next.state_name();
            assert!(
                reached == target,
                "{}: transition `{from}` --{command_name}--> `{target}` declares `{target}`, but its events lead to `{reached}`\n  state reached: {next:?}",
                A::TYPE
            );
        }
        Then {
            command_name,
            outcome: outcome.map(|(state, events)| (state, events, None)),
        }
    }

    /// Runs `command` through a [`Repository`] over an [`InMemoryEventStore`] seeded with the
    /// history, under `metadata`; the stored envelopes are available from
    /// [`Then::envelopes`].
    ///
    /// Panics if the store fails (a test setup problem, not a domain outcome); the message names
    /// the line that called `when_async`.
    #[track_caller]
    pub fn when_async(
        self,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> impl Future<Output = Then<A>> {
        // `#[track_caller]` does not reach into an `async fn`: take the caller's line here.
        let caller = Location::caller();
        self.when_async_at(caller, command, metadata)
    }

    async fn when_async_at(
        self,
        caller: &'static Location<'static>,
        command: A::Command,
        metadata: CommandMetadata,
    ) -> Then<A> {
        let store = InMemoryEventStore::new();
        let repository = Repository::<A, _>::new(store.clone());
        let stream = StreamId::of::<A>(TEST_AGGREGATE_ID, metadata.tenant.as_deref());
        if !self.history.is_empty() {
            let seeded = self
                .history
                .iter()
                .map(|e| NewEvent::encode(e, new_id(), Metadata::standalone()))
                .collect::<Result<Vec<_>, _>>();
            let appended = match seeded {
                Ok(events) => store
                    .append(&stream, ExpectedVersion::NoStream, events, None)
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(error) = appended {
                panic!("could not seed the given events: {error} (when_async at {caller})");
            }
        }
        let command_name = A::command_name(&command);
        let outcome = match repository
            .execute(TEST_AGGREGATE_ID, command.clone(), metadata)
            .await
        {
            Ok(envelopes) => {
                let state = match repository.load(&stream).await {
                    Ok(loaded) => loaded.state,
                    Err(error) => {
                        panic!("could not reload the aggregate: {error} (when_async at {caller})")
                    }
                };
                let events = envelopes.iter().map(|e| e.payload.clone()).collect();
                Ok((state, events, Some(envelopes)))
            }
            Err(CommandError::Rejected(error)) => Err(error),
            // The repository refuses undeclared transitions before `decide`; the aggregate's
            // own answer for them is the domain error to assert on.
            Err(CommandError::InvalidTransition(invalid)) => {
                match A::replay(&self.history).decide(command) {
                    Err(error) => Err(error),
                    Ok(_) => panic!(
                        "the repository refused `{command_name}` ({invalid}), but `decide` accepts it: `declared_target` and `decide` disagree (when_async at {caller})"
                    ),
                }
            }
            Err(CommandError::Store(error)) => {
                panic!("the in-memory store failed: {error} (when_async at {caller})")
            }
        };
        Then {
            command_name,
            outcome,
        }
    }
}

/// The outcome of the command under test, to assert on.
#[derive(Debug)]
pub struct Then<A: Aggregate> {
    command_name: &'static str,
    #[allow(clippy::type_complexity)]
    outcome: Result<(A, Vec<A::Event>, Option<Vec<EventEnvelope<A::Event>>>), A::Error>,
}

impl<A: Aggregate> Then<A> {
    /// Asserts the command produced exactly `expected`, in order.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> Self
    where
        A::Event: PartialEq,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        match &self.outcome {
            Ok((_, actual, _)) if *actual == expected => {}
            Ok((_, actual, _)) => panic!(
                "`{}` produced other events than expected\n{}",
                self.command_name,
                diff_lists(&expected, actual)
            ),
            Err(error) => panic!(
                "`{}` was rejected, but events were expected\n  rejection: {error}\n  debug:     {error:?}\n  expected events:\n{}",
                self.command_name,
                numbered(&expected)
            ),
        }
        self
    }

    /// Asserts the command produced no events and was not rejected.
    #[track_caller]
    pub fn then_no_events(self) -> Self
    where
        A::Event: PartialEq,
    {
        self.then_events([])
    }

    /// Asserts the command was rejected with `expected`.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value reads best: `.then_error(Error::X)`
    pub fn then_error(self, expected: A::Error) -> Self
    where
        A::Error: PartialEq,
    {
        match &self.outcome {
            Err(actual) if *actual == expected => {}
            Err(actual) => panic!(
                "`{}` was rejected with another error\n  expected: {expected:?}\n  actual:   {actual:?}",
                self.command_name
            ),
            Ok((_, events, _)) => panic!(
                "`{}` succeeded, but a rejection was expected\n  expected error: {expected:?}\n  produced events:\n{}",
                self.command_name,
                numbered(events)
            ),
        }
        self
    }

    /// Asserts the command was rejected with an error for which `check` holds.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool) -> Self {
        match &self.outcome {
            Err(actual) => assert!(
                check(actual),
                "`{}` was rejected, but not as expected\n  actual: {actual:?}",
                self.command_name
            ),
            Ok((_, events, _)) => panic!(
                "`{}` succeeded, but a rejection was expected\n  produced events:\n{}",
                self.command_name,
                numbered(events)
            ),
        }
        self
    }

    /// Asserts the state after the command's events is `expected`.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value reads best: `.then_state(State::X)`
    pub fn then_state(self, expected: A) -> Self
    where
        A: PartialEq,
    {
        match &self.outcome {
            Ok((actual, _, _)) if *actual == expected => {}
            Ok((actual, _, _)) => panic!(
                "the state after `{}` differs\n  expected: {expected:#?}\n  actual:   {actual:#?}",
                self.command_name
            ),
            Err(error) => panic!(
                "`{}` was rejected, so there is no new state\n  rejection: {error}\n  expected state: {expected:#?}",
                self.command_name
            ),
        }
        self
    }

    /// The stored envelopes (only after [`Given::when_async`] succeeded).
    #[track_caller]
    pub fn envelopes(&self) -> &[EventEnvelope<A::Event>] {
        match &self.outcome {
            Ok((_, _, Some(envelopes))) => envelopes,
            Ok((_, _, None)) => panic!("envelopes exist only after `when_async`"),
            Err(error) => panic!(
                "`{}` was rejected, nothing was stored: {error}",
                self.command_name
            ),
        }
    }

    /// The raw outcome: the new state and events, or the rejection.
    pub fn into_result(self) -> Result<(A, Vec<A::Event>), A::Error> {
        self.outcome.map(|(state, events, _)| (state, events))
    }
}

/// Builds stored events for projection and process-manager tests: each append gets the next
/// versions of its stream and the next store positions, and metadata as a root command would
/// give it (or the flow of [`EventLog::in_flow`]).
#[derive(Debug, Clone, Default)]
pub struct EventLog {
    events: Vec<RecordedEvent>,
    flow: Option<CommandMetadata>,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the following events as if written by commands of this flow (same correlation).
    pub fn in_flow(mut self, command: CommandMetadata) -> Self {
        self.flow = Some(command);
        self
    }

    /// Appends `events` to `stream`, as one command would.
    #[track_caller]
    pub fn append<E: DomainEvent>(
        mut self,
        stream: &StreamId,
        events: impl IntoIterator<Item = E>,
    ) -> Self {
        let command = match &self.flow {
            Some(flow) => CommandMetadata {
                command_id: new_id(),
                ..flow.clone()
            },
            None => CommandMetadata::root(),
        };
        let mut metadata = command.event_metadata();
        metadata.tenant.clone_from(&stream.tenant);
        let version = self
            .events
            .iter()
            .filter(|e| e.stream_id() == *stream)
            .count() as u64;
        let recorded_at = OffsetDateTime::now_utc();
        for (offset, event) in (1u64..).zip(events) {
            let payload = match SerializedEvent::encode(&event) {
                Ok(payload) => payload,
                Err(error) => panic!("test event does not encode: {error}"),
            };
            let position = self.events.len() as u64 + 1;
            self.events.push(RecordedEvent {
                event_id: new_id(),
                aggregate_type: stream.aggregate_type.clone(),
                aggregate_id: stream.aggregate_id.clone(),
                version: version + offset,
                position,
                recorded_at,
                metadata: metadata.clone(),
                payload,
                erased: Vec::new(),
                store: None,
            });
        }
        self
    }

    /// The events, in position order.
    pub fn events(&self) -> &[RecordedEvent] {
        &self.events
    }
}

/// Applies the `events` that `projection`'s filter selects, in order, each twice — the second
/// delivery must be a no-op, as redelivery after a crash is — then returns for assertions on the
/// read model. Panics on a handler error, naming the line that called it.
#[track_caller]
pub fn when_projected<'a, P: Projection>(
    projection: &'a P,
    events: &'a [RecordedEvent],
) -> impl Future<Output = ()> + 'a {
    // `#[track_caller]` does not reach into an `async fn`: take the caller's line here.
    let caller = Location::caller();
    when_projected_at(caller, projection, events)
}

async fn when_projected_at<P: Projection>(
    caller: &'static Location<'static>,
    projection: &P,
    events: &[RecordedEvent],
) {
    let filter = projection.filter();
    for event in events.iter().filter(|e| filter.matches(e)) {
        for delivery in ["first", "repeated"] {
            if let Err(error) = projection.apply(event).await {
                panic!(
                    "projection `{}` failed on the {delivery} delivery of {}: {error} (when_projected at {caller})",
                    projection.name(),
                    describe(event)
                );
            }
        }
    }
}

/// [`when_projected`] for a projection that applies batches: the selected `events` go to
/// [`Projection::apply_batch`] in runs of `batch` (the last run shorter), each run twice, as a
/// runner delivers them and a redelivery repeats them. Panics on a handler error, naming the
/// line that called it.
#[track_caller]
pub fn when_projected_in_batches<'a, P: Projection>(
    projection: &'a P,
    events: &'a [RecordedEvent],
    batch: usize,
) -> impl Future<Output = ()> + 'a {
    let caller = Location::caller();
    when_projected_in_batches_at(caller, projection, events, batch)
}

async fn when_projected_in_batches_at<P: Projection>(
    caller: &'static Location<'static>,
    projection: &P,
    events: &[RecordedEvent],
    batch: usize,
) {
    let filter = projection.filter();
    let selected: Vec<RecordedEvent> = events
        .iter()
        .filter(|e| filter.matches(e))
        .cloned()
        .collect();
    for run in selected.chunks(batch.max(1)) {
        for delivery in ["first", "repeated"] {
            if let Err(error) = projection.apply_batch(run).await {
                let (first, last) = (&run[0], &run[run.len() - 1]);
                panic!(
                    "projection `{}` failed on the {delivery} delivery of the batch from {} to {}: {error} (when_projected_in_batches at {caller})",
                    projection.name(),
                    describe(first),
                    describe(last)
                );
            }
        }
    }
}

/// How a failure message names an event.
fn describe(event: &RecordedEvent) -> String {
    format!(
        "event #{} ({} v{} of {}/{})",
        event.position,
        event.payload.event_type,
        event.version,
        event.aggregate_type,
        event.aggregate_id
    )
}

/// Runs `manager` over `events` (state per correlation id, as the runner keeps it) and collects
/// the commands it issues with their metadata.
#[track_caller]
pub fn when_processed<PM: ProcessManager>(manager: &PM, events: &[RecordedEvent]) -> Issued<PM> {
    let filter = manager.filter();
    let mut states: HashMap<Uuid, PM::State> = HashMap::new();
    let mut issued = Vec::new();
    for event in events.iter().filter(|e| filter.matches(e)) {
        let state = states
            .remove(&event.metadata.correlation_id)
            .unwrap_or_default();
        match manager.react(state, event) {
            Ok((next, commands)) => {
                states.insert(event.metadata.correlation_id, next);
                issued.extend(
                    reactions::<PM>(event, commands)
                        .into_iter()
                        .map(|(command, metadata)| (command, metadata, event.event_id)),
                );
            }
            Err(error) => panic!(
                "process manager `{}` failed on event #{} ({}): {error}",
                PM::NAME,
                event.position,
                event.payload.event_type
            ),
        }
    }
    let last_recorded_at = events
        .iter()
        .filter(|e| filter.matches(e))
        .map(|e| e.recorded_at)
        .max();
    Issued {
        commands: issued,
        states,
        last_recorded_at,
    }
}

/// The commands a process manager issued in [`when_processed`].
#[derive(Debug)]
pub struct Issued<PM: ProcessManager> {
    commands: Vec<(PM::Command, CommandMetadata, Uuid)>,
    states: HashMap<Uuid, PM::State>,
    /// When the last event it handled was recorded: where "time passes" starts from.
    last_recorded_at: Option<OffsetDateTime>,
}

impl<PM: ProcessManager> Issued<PM> {
    /// Asserts the issued commands are exactly `expected`, in order.
    #[track_caller]
    pub fn then_commands(self, expected: impl IntoIterator<Item = PM::Command>) -> Self
    where
        PM::Command: PartialEq,
    {
        let expected: Vec<_> = expected.into_iter().collect();
        let actual: Vec<_> = self.commands.iter().map(|(c, _, _)| c.clone()).collect();
        assert!(
            actual == expected,
            "process manager `{}` issued other commands than expected\n{}",
            PM::NAME,
            diff_lists(&expected, &actual)
        );
        self
    }

    /// The commands with their metadata and the id of the event that triggered each.
    pub fn commands(&self) -> &[(PM::Command, CommandMetadata, Uuid)] {
        &self.commands
    }

    /// The state of the flow with this correlation id.
    pub fn state(&self, correlation_id: Uuid) -> Option<&PM::State> {
        self.states.get(&correlation_id)
    }
}

/// For process managers with deadlines ([`Timed`] commands): what is pending after the events,
/// and what goes out as time passes.
impl<PM, C> Issued<PM>
where
    PM: ProcessManager<Command = Timed<C>>,
    C: Clone + Debug + PartialEq,
{
    /// The deadlines pending after the events (scheduled and neither cancelled nor replaced),
    /// soonest first: (flow, name, time, command).
    pub fn pending(&self) -> Vec<(DeadlineKey, OffsetDateTime, C)> {
        let mut pending: HashMap<DeadlineKey, (OffsetDateTime, C)> = HashMap::new();
        for (command, metadata, _) in &self.commands {
            match command {
                Timed::Now(_) => {}
                Timed::At {
                    deadline,
                    at,
                    command,
                } => {
                    pending.insert(
                        DeadlineKey::new(metadata.correlation_id, deadline.clone()),
                        (*at, command.clone()),
                    );
                }
                Timed::Cancel { deadline } => {
                    pending.remove(&DeadlineKey::new(metadata.correlation_id, deadline.clone()));
                }
            }
        }
        let mut pending: Vec<_> = pending
            .into_iter()
            .map(|(key, (at, command))| (key, at, command))
            .collect();
        pending.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        pending
    }

    /// Asserts deadline `name` is pending after the events, with `command`.
    #[track_caller]
    #[allow(clippy::needless_pass_by_value)] // by value reads best: `.then_scheduled("x", C::X)`
    pub fn then_scheduled(self, name: &str, command: C) -> Self {
        let pending = self.pending();
        let found: Vec<&C> = pending
            .iter()
            .filter(|(key, _, _)| key.name == name)
            .map(|(_, _, c)| c)
            .collect();
        assert!(
            found.contains(&&command),
            "process manager `{}`: no pending deadline `{name}` with {command:?}\n  pending:\n{}",
            PM::NAME,
            numbered(&pending)
        );
        self
    }

    /// Asserts no deadline `name` is pending after the events: never scheduled, or cancelled.
    #[track_caller]
    pub fn then_not_scheduled(self, name: &str) -> Self {
        let pending = self.pending();
        let found: Vec<_> = pending
            .iter()
            .filter(|(key, _, _)| key.name == name)
            .collect();
        assert!(
            found.is_empty(),
            "process manager `{}`: deadline `{name}` is still pending\n{}",
            PM::NAME,
            numbered(&found)
        );
        self
    }

    /// The commands that go out once `elapsed` has passed since the last event was recorded:
    /// the pending deadlines due by then, soonest first.
    pub fn due_after(&self, elapsed: std::time::Duration) -> Vec<C> {
        let Some(start) = self.last_recorded_at else {
            return Vec::new();
        };
        let now = start + elapsed;
        self.pending()
            .into_iter()
            .filter(|(_, at, _)| *at <= now)
            .map(|(_, _, command)| command)
            .collect()
    }

    /// Asserts that once `elapsed` has passed since the last event, exactly `expected` go out.
    #[track_caller]
    pub fn then_after(
        self,
        elapsed: std::time::Duration,
        expected: impl IntoIterator<Item = C>,
    ) -> Self {
        let expected: Vec<_> = expected.into_iter().collect();
        let actual = self.due_after(elapsed);
        assert!(
            actual == expected,
            "process manager `{}`: other commands are due after {elapsed:?} than expected\n{}",
            PM::NAME,
            diff_lists(&expected, &actual)
        );
        self
    }
}

fn numbered<T: Debug>(items: &[T]) -> String {
    if items.is_empty() {
        return "    (none)\n".to_owned();
    }
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        let _ = writeln!(out, "    [{i}] {item:?}");
    }
    out
}

/// Expected and actual lists side by side, with the first difference marked.
fn diff_lists<T: Debug + PartialEq>(expected: &[T], actual: &[T]) -> String {
    let first_difference = expected
        .iter()
        .zip(actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    let mut out = String::new();
    let _ = writeln!(out, "  expected ({}):", expected.len());
    out.push_str(&numbered(expected));
    let _ = writeln!(out, "  actual ({}):", actual.len());
    out.push_str(&numbered(actual));
    let _ = write!(out, "  first difference at index {first_difference}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Counter, CounterCommand, CounterError, CounterEvent};

    fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
        let payload = std::panic::catch_unwind(f).expect_err("the assertion should fail");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default()
    }

    #[test]
    fn passing_scenario() {
        given_commands::<Counter>([CounterCommand::Add(1), CounterCommand::Add(2)])
            .when(CounterCommand::Add(4))
            .then_events([CounterEvent::Added { amount: 4 }])
            .then_state(Counter { value: 7 });
    }

    #[test]
    fn wrong_events_show_both_lists() {
        let message = panic_message(|| {
            given::<Counter>([])
                .when(CounterCommand::Add(4))
                .then_events([CounterEvent::Added { amount: 5 }]);
        });
        assert!(message.contains("expected (1)"), "{message}");
        assert!(message.contains("Added { amount: 5 }"), "{message}");
        assert!(message.contains("Added { amount: 4 }"), "{message}");
        assert!(message.contains("first difference at index 0"), "{message}");
    }

    #[test]
    fn unexpected_rejection_and_unexpected_success_fail() {
        let message = panic_message(|| {
            given::<Counter>([])
                .when(CounterCommand::Add(0))
                .then_events([]);
        });
        assert!(message.contains("was rejected"), "{message}");
        let message = panic_message(|| {
            given::<Counter>([])
                .when(CounterCommand::Add(1))
                .then_error(CounterError::Zero);
        });
        assert!(message.contains("succeeded"), "{message}");
        let message = panic_message(|| {
            given::<Counter>([])
                .when(CounterCommand::Add(1))
                .then_state(Counter { value: 2 });
        });
        assert!(message.contains("state after"), "{message}");
    }

    #[test]
    fn rejected_given_command_fails_the_setup() {
        let message = panic_message(|| {
            given_commands::<Counter>([CounterCommand::Add(0)]);
        });
        assert!(message.contains("given command"), "{message}");
    }

    #[test]
    fn error_matcher() {
        given::<Counter>([])
            .when(CounterCommand::Add(0))
            .then_error_matches(|e| matches!(e, CounterError::Zero));
    }

    #[tokio::test]
    async fn async_scenario_goes_through_the_store() {
        let metadata = CommandMetadata::root().with_actor("user:1");
        let then = given::<Counter>([CounterEvent::Added { amount: 1 }])
            .when_async(CounterCommand::Add(2), metadata.clone())
            .await
            .then_events([CounterEvent::Added { amount: 2 }])
            .then_state(Counter { value: 3 });
        let stored = &then.envelopes()[0];
        assert_eq!(stored.version, 2);
        assert_eq!(stored.metadata.causation_id, Some(metadata.command_id));
        assert_eq!(stored.metadata.actor.as_deref(), Some("user:1"));

        given::<Counter>([])
            .when_async(CounterCommand::Add(0), CommandMetadata::root())
            .await
            .then_error(CounterError::Zero);
    }

    /// A projection that fails on everything it is given.
    struct Failing;

    impl Projection for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }

        async fn apply(&self, _: &RecordedEvent) -> Result<(), crate::HandlerError> {
            Err(crate::HandlerError::new("refused"))
        }
    }

    /// The async fixtures cannot rely on `#[track_caller]` inside their futures: their failure
    /// messages name the test line that called them.
    #[test]
    fn async_fixture_failures_name_the_calling_line() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let events = EventLog::new()
            .append(
                &StreamId::new("Counter", "c"),
                [CounterEvent::Added { amount: 1 }],
            )
            .events()
            .to_vec();
        let here = |line: u32| format!("{}:{line}:", file!());

        let line = line!() + 1;
        let projected = when_projected(&Failing, &events);
        let message = panic_message(std::panic::AssertUnwindSafe(|| runtime.block_on(projected)));
        assert!(message.contains(&here(line)), "{message}");

        let line = line!() + 1;
        let batched = when_projected_in_batches(&Failing, &events, 8);
        let message = panic_message(std::panic::AssertUnwindSafe(|| runtime.block_on(batched)));
        assert!(message.contains(&here(line)), "{message}");
    }
}
