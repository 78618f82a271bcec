//! Support for the code that `cqrs-macros` generates. Not part of the API: anything here may
//! change in any release.

pub use crate::aggregate::{Aggregate, InvalidTransition};
pub use crate::event::{
    DecodeError, DomainEvent, EncodeError, EventSchema, decode_body, decode_variant, encode_variant,
};
pub use crate::state_machine::{State, StateMachine, Transition};

/// The half of an `Aggregate` impl that `#[transitions]` writes: `#[derive(Aggregate)]` delegates
/// `decide`, `evolve`, `command_name`, `declared_target` and `transition_table` to it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` derives `Aggregate` but has no `#[transitions]` impl block",
    label = "`Aggregate` is derived here",
    note = "add `#[cqrs_core::transitions] impl {Self} {{ ... }}` holding the handlers (state machines) or `fn decide` (plain aggregates), and `fn evolve(self, event: &Event) -> Self`"
)]
pub trait Transitions: Aggregate {
    /// See [`Aggregate::decide`].
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// See [`Aggregate::evolve`].
    fn evolve(self, event: &Self::Event) -> Self;

    /// See [`Aggregate::command_name`].
    fn command_name(command: &Self::Command) -> &'static str {
        let _ = command;
        std::any::type_name::<Self::Command>()
    }

    /// See [`Aggregate::declared_target`].
    fn declared_target(&self, command: &Self::Command) -> Option<&'static str> {
        let _ = command;
        None
    }

    /// See [`Aggregate::transition_table`].
    fn transition_table() -> Option<StateMachine> {
        None
    }
}

/// The states of an enum aggregate, written by `#[derive(Aggregate)]`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an enum of states: only a state-machine aggregate declares `#[transition]`s",
    label = "`#[transition]` handlers need an enum state with `#[derive(Aggregate)]`",
    note = "a struct aggregate writes `fn decide(&self, command) -> Result<Vec<Event>, Error>` in its `#[transitions]` block instead"
)]
pub trait StateEnum: Aggregate {
    /// Every variant, in declaration order.
    const STATES: &'static [State];
}

/// The conversion the generated `decide` uses for undeclared (state, command) pairs.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` of a state-machine aggregate must implement `From<cqrs_core::InvalidTransition>`",
    label = "undeclared (state, command) pairs return an `InvalidTransition` converted into `{Self}`",
    note = "add a variant such as `#[error(transparent)] InvalidTransition(#[from] cqrs_core::InvalidTransition)` to `{Self}`"
)]
pub trait FromInvalidTransition {
    /// Converts the error.
    fn from_invalid_transition(error: InvalidTransition) -> Self;
}

impl<E: From<InvalidTransition>> FromInvalidTransition for E {
    fn from_invalid_transition(error: InvalidTransition) -> Self {
        E::from(error)
    }
}

/// The error for a (state, command) pair that no transition declares.
pub fn invalid_transition<A>(state: &A, command: &A::Command) -> A::Error
where
    A: Aggregate,
    A::Error: FromInvalidTransition,
{
    A::Error::from_invalid_transition(InvalidTransition {
        aggregate: A::TYPE,
        state: state.state_name(),
        command: A::command_name(command),
    })
}

/// The state machine of `A`, from its states and the table `#[transitions]` wrote.
pub fn state_machine<A: StateEnum>(
    commands: &'static [&'static str],
    transitions: &'static [Transition],
) -> StateMachine {
    StateMachine {
        aggregate: A::TYPE,
        initial: A::default().state_name(),
        states: A::STATES,
        commands,
        transitions,
    }
}

/// The event type of the placeholder impl emitted next to `#[derive(Aggregate)]` errors.
#[derive(Debug, Clone)]
pub enum NoEvent {}

impl DomainEvent for NoEvent {
    fn event_type(&self) -> &'static str {
        match *self {}
    }
    fn schema_version(&self) -> u32 {
        match *self {}
    }
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        match *self {}
    }
    fn decode(event_type: &str, _: u32, _: &[u8]) -> Result<Self, DecodeError> {
        Err(DecodeError::UnknownEventType {
            event_type: event_type.to_owned(),
        })
    }
    fn catalog() -> &'static [EventSchema] {
        &[]
    }
}
