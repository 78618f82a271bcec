//! Aggregates as Mealy machines: `decide` is the output function, `evolve` the next-state
//! function, and `transition` the two together.

use crate::event::DomainEvent;
use crate::state_machine::StateMachine;
use std::fmt::Debug;

/// A consistency boundary whose state is the fold of its events.
///
/// Pure and synchronous: no I/O inside `decide` or `evolve`. Implement it with
/// `#[derive(Aggregate)]` (feature `macros`), or by hand:
///
/// ```
/// use cqrs_core::Aggregate;
/// # use cqrs_core::doc::{CounterEvent, CounterError};
/// #[derive(Debug, Clone, Default, PartialEq)]
/// struct Counter { value: u64 }
///
/// #[derive(Debug, Clone)]
/// enum CounterCommand { Add(u64) }
///
/// impl Aggregate for Counter {
///     const TYPE: &'static str = "Counter";
///     type Command = CounterCommand;
///     type Event = CounterEvent;
///     type Error = CounterError;
///
///     fn decide(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
///         match command {
///             CounterCommand::Add(0) => Err(CounterError::Zero),
///             CounterCommand::Add(n) => Ok(vec![CounterEvent::Added { amount: n }]),
///         }
///     }
///
///     fn evolve(self, event: &CounterEvent) -> Self {
///         match event {
///             CounterEvent::Added { amount } => Counter { value: self.value + amount },
///         }
///     }
/// }
///
/// let (state, events) = Counter::default().transition(CounterCommand::Add(2)).unwrap();
/// assert_eq!(state, Counter { value: 2 });
/// assert_eq!(events, vec![CounterEvent::Added { amount: 2 }]);
/// ```
pub trait Aggregate: Default + Clone + Debug + Send + Sync + 'static {
    /// Stable aggregate type name: part of every stream id and subject.
    const TYPE: &'static str;

    /// Schema version of the state as snapshots store it. Raise it whenever the state's
    /// serialised shape changes: older snapshots are then ignored and rebuilt from events.
    const STATE_VERSION: u32 = 1;

    /// Whether the aggregate declares its transitions (a state machine). The repository then
    /// refuses a command that has no transition from the current state — one with no
    /// [`declared_target`](Aggregate::declared_target) — with
    /// [`CommandError::InvalidTransition`](crate::CommandError::InvalidTransition), before
    /// `decide` runs.
    const STATE_MACHINE: bool = false;

    /// What can be asked of the aggregate.
    type Command: Clone + Debug + Send + Sync + 'static;
    /// What the aggregate records.
    type Event: DomainEvent;
    /// Why the aggregate refuses a command.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The output function: the events `command` produces in the current state, or why not.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// The next-state function: the state after `event`. Total: it never fails, because events
    /// are facts that already happened.
    #[must_use]
    fn evolve(self, event: &Self::Event) -> Self;

    /// Decide, then fold the events into the next state.
    fn transition(self, command: Self::Command) -> Result<(Self, Vec<Self::Event>), Self::Error> {
        let events = self.decide(command)?;
        let next = events.iter().fold(self, Self::evolve);
        Ok((next, events))
    }

    /// The state after `events`, starting from the initial (default) state.
    fn replay<'a, I>(events: I) -> Self
    where
        I: IntoIterator<Item = &'a Self::Event>,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }

    /// A short name of `command` for logs, spans and errors (the variant name when derived).
    fn command_name(command: &Self::Command) -> &'static str {
        let _ = command;
        std::any::type_name::<Self::Command>()
    }

    /// A short name of the current state for logs and errors (the variant name when derived).
    fn state_name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }

    /// For state-machine aggregates: the name of the state that the transition `command` takes
    /// from the current state declares as its target, if one is declared. The test fixtures
    /// check that the transition's events really land in that state (by [`state_name`]).
    ///
    /// [`state_name`]: Aggregate::state_name
    fn declared_target(&self, command: &Self::Command) -> Option<&'static str> {
        let _ = command;
        None
    }

    /// For state-machine aggregates: the transition table as data (states, commands, initial
    /// state, transitions), the same as the derived `State::state_machine()`, so that generic
    /// code — the operator CLI's `diagram`, documentation generators — can render and check it
    /// knowing only the type. `None` for aggregates that declare no transitions.
    fn transition_table() -> Option<StateMachine> {
        None
    }
}

/// A command arrived in a state that declares no transition for it.
///
/// State-machine aggregates return it (converted into their error type) instead of panicking or
/// silently doing nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{aggregate}: no transition for command `{command}` in state `{state}`; check the state before sending it, or declare the transition"
)]
pub struct InvalidTransition {
    /// Aggregate type name.
    pub aggregate: &'static str,
    /// State the aggregate was in.
    pub state: &'static str,
    /// Command that has no transition from that state.
    pub command: &'static str,
}
