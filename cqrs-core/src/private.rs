//! Support for the code that `cqrs-macros` generates. Not part of the API: anything here may
//! change in any release.

pub use crate::aggregate::{Aggregate, InvalidTransition};
pub use crate::command::{Command, CommandField, CommandFields, CommandVariant};
pub use crate::event::{
    DecodeError, DomainEvent, EncodeError, EventSchema, decode_body, decode_variant, encode_variant,
};
pub use crate::personal::PersonalField;
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

/// The commands a state machine's `#[transitions]` handle, by variant name.
pub trait HandledCommands {
    /// The names given as `on = ...`.
    const HANDLED: &'static [&'static str];
}

/// Written by `#[derive(Command)]`: its variants, after checking at compile time that the
/// transitions of `A` handle each of them (the check panics at the unhandled variant).
#[diagnostic::on_unimplemented(
    message = "`{Self}`, the command type of a state machine, does not derive `Command`",
    label = "the transitions of `{A}` handle `{Self}`",
    note = "add `#[derive(cqrs_core::Command)]` to `{Self}`: `#[transitions]` checks that a transition handles each of its variants and that each handler takes its variant's fields"
)]
pub trait CheckedCommands<A: HandledCommands>: Command {
    /// `<Self as Command>::VARIANTS`, once every variant is handled.
    const VARIANTS: &'static [CommandVariant];
}

/// Whether `handled` names `command`.
#[must_use]
pub const fn handles(handled: &[&str], command: &str) -> bool {
    let mut i = 0;
    while i < handled.len() {
        if same(handled[i], command) {
            return true;
        }
        i += 1;
    }
    false
}

const fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// What is wrong with a handler's parameters for the variant it handles, if anything: a field
/// of a struct variant that no parameter takes, fewer parameters than a tuple variant has
/// fields, or a variant written in the other shape (`on = Pay` for `Pay(..)` and the reverse).
/// `None` as well when no variant is called `on`: the compiler reports that one.
#[must_use]
pub const fn handler_mismatch(
    variants: &[CommandVariant],
    on: &str,
    tuple: bool,
    handler: &str,
    parameters: &[&str],
) -> Option<Message> {
    let mut i = 0;
    while i < variants.len() {
        let variant = variants[i];
        if same(variant.name, on) {
            return mismatch(variant, tuple, handler, parameters);
        }
        i += 1;
    }
    None
}

const fn mismatch(
    variant: CommandVariant,
    tuple: bool,
    handler: &str,
    parameters: &[&str],
) -> Option<Message> {
    let message = Message::new()
        .push("`")
        .push(handler)
        .push("` handles `")
        .push(variant.name);
    match variant.fields {
        CommandFields::Named(fields) => {
            if tuple {
                return Some(
                    message
                        .push("`, which has named fields: write `on = ")
                        .push(variant.name)
                        .push("` (without `(..)`)"),
                );
            }
            let mut i = 0;
            while i < fields.len() {
                if !handles(parameters, fields[i].name) {
                    return Some(
                        message
                            .push("` but takes no parameter for its field `")
                            .push(fields[i].name)
                            .push("`; add `")
                            .push(fields[i].name)
                            .push(": ")
                            .push(fields[i].ty)
                            .push("` after `&self` (a handler's parameters bind the command's fields by name)"),
                    );
                }
                i += 1;
            }
            None
        }
        CommandFields::Unnamed(types) => {
            if !tuple {
                return Some(
                    message
                        .push("`, a tuple variant: write `on = ")
                        .push(variant.name)
                        .push("(..)` and take its fields in order after `&self`"),
                );
            }
            if parameters.len() < types.len() {
                let mut message = message
                    .push("(..)` but does not take all its fields; its parameters after `&self` bind them in order: `");
                let mut i = 0;
                while i < types.len() {
                    if i > 0 {
                        message = message.push(", ");
                    }
                    message = message.push("_: ").push(types[i]);
                    i += 1;
                }
                return Some(message.push("`"));
            }
            None
        }
        CommandFields::Unit => None,
    }
}

/// A compile-time error message (`handler_mismatch`), built in a fixed buffer because a const
/// cannot allocate. Parts that would overflow it are left out.
#[derive(Debug, Clone, Copy)]
pub struct Message {
    bytes: [u8; 512],
    len: usize,
}

impl Message {
    const fn new() -> Self {
        Message {
            bytes: [0; 512],
            len: 0,
        }
    }

    const fn push(mut self, part: &str) -> Self {
        let part = part.as_bytes();
        if self.len + part.len() > self.bytes.len() {
            return self;
        }
        let mut i = 0;
        while i < part.len() {
            self.bytes[self.len + i] = part[i];
            i += 1;
        }
        self.len += part.len();
        self
    }

    /// The message.
    #[must_use]
    pub const fn as_str(&self) -> &str {
        let (used, _) = self.bytes.split_at(self.len);
        // Whole `&str` parts only: always UTF-8.
        match core::str::from_utf8(used) {
            Ok(text) => text,
            Err(_) => "a handler's parameters do not match its command variant",
        }
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
