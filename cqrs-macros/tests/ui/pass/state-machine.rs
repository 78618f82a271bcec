//! A state machine with unit, struct and tuple states, a `from` list, unit and struct commands,
//! a handler that binds the fields of the state it leaves, a renamed aggregate, terminal states,
//! and the generated table.
use cqrs_core::{Aggregate, Command, DomainEvent, InvalidTransition, transitions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum TicketEvent {
    Opened { title: String },
    Assigned { to: String },
    Closed,
}

#[derive(Debug, Clone, Command)]
enum TicketCommand {
    Open { title: String },
    Assign { to: String, note: String },
    Close,
    Rename(String),
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum TicketError {
    #[error("empty title")]
    EmptyTitle,
    #[error("the title is already {0}")]
    Unchanged(String),
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[derive(Debug, Clone, Default, PartialEq, Aggregate)]
#[aggregate(name = "support.Ticket", state_version = 2, command = TicketCommand, event = TicketEvent, error = TicketError)]
enum Ticket {
    #[default]
    New,
    Open { title: String },
    Assigned(String),
    #[aggregate(terminal)]
    Closed,
}

#[transitions]
impl Ticket {
    #[transition(from = New, on = Open, to = Open)]
    fn open(&self, title: String) -> Result<Vec<TicketEvent>, TicketError> {
        if title.is_empty() {
            return Err(TicketError::EmptyTitle);
        }
        Ok(vec![TicketEvent::Opened { title }])
    }

    #[transition(from = [Open, Assigned], on = Assign, to = Assigned)]
    fn assign(&self, to: String, note: String) -> Result<Vec<TicketEvent>, TicketError> {
        let _ = note;
        Ok(vec![TicketEvent::Assigned { to }])
    }

    #[transition(from = Open, on = Close, to = Closed)]
    #[transition(from = Assigned, on = Close, to = Closed)]
    fn close(&self) -> Result<Vec<TicketEvent>, TicketError> {
        Ok(vec![TicketEvent::Closed])
    }

    /// A tuple variant: `(..)` after its name, parameters bind its fields in order. `title` is
    /// the field of the `Open` state the ticket is in (by reference), `new` the command's.
    #[transition(from = Open { title }, on = Rename(..), to = Open)]
    fn rename(&self, title: &String, new: String) -> Result<Vec<TicketEvent>, TicketError> {
        if *title == new {
            return Err(TicketError::Unchanged(new));
        }
        Ok(vec![TicketEvent::Opened { title: new }])
    }

    /// Handlers and other methods live side by side.
    fn is_closed(&self) -> bool {
        matches!(self, Ticket::Closed)
    }

    fn evolve(self, event: &TicketEvent) -> Self {
        match event {
            TicketEvent::Opened { title } => Ticket::Open { title: title.clone() },
            TicketEvent::Assigned { to } => Ticket::Assigned(to.clone()),
            TicketEvent::Closed => Ticket::Closed,
        }
    }
}

fn main() {
    assert_eq!(Ticket::TYPE, "support.Ticket");
    assert_eq!(Ticket::STATE_VERSION, 2);

    let (ticket, _) = Ticket::New.transition(TicketCommand::Open { title: "t".into() }).unwrap();
    assert_eq!(ticket.state_name(), "Open");
    let (ticket, _) = ticket.transition(TicketCommand::Rename("u".into())).unwrap();
    assert_eq!(ticket, Ticket::Open { title: "u".into() });
    assert_eq!(
        ticket.decide(TicketCommand::Rename("u".into())),
        Err(TicketError::Unchanged("u".into()))
    );
    assert_eq!(Ticket::command_name(&TicketCommand::Rename("v".into())), "Rename");
    let assign = TicketCommand::Assign { to: "ann".into(), note: String::new() };
    assert_eq!(ticket.declared_target(&assign), Some("Assigned"));
    assert_eq!(Ticket::command_name(&assign), "Assign");
    let (ticket, _) = ticket.transition(assign).unwrap();
    assert_eq!(ticket, Ticket::Assigned("ann".into()));
    let (ticket, _) = ticket.transition(TicketCommand::Close).unwrap();
    assert!(ticket.is_closed());

    assert_eq!(
        Ticket::New.decide(TicketCommand::Open { title: String::new() }),
        Err(TicketError::EmptyTitle)
    );
    assert_eq!(
        Ticket::Closed.decide(TicketCommand::Close),
        Err(TicketError::InvalidTransition(InvalidTransition {
            aggregate: "support.Ticket",
            state: "Closed",
            command: "Close",
        }))
    );
    assert_eq!(Ticket::Closed.declared_target(&TicketCommand::Close), None);

    let machine = Ticket::state_machine();
    assert_eq!(machine.aggregate, "support.Ticket");
    assert_eq!(machine.initial, "New");
    let states: Vec<_> = machine.states.iter().map(|s| (s.name, s.terminal)).collect();
    assert_eq!(states, [("New", false), ("Open", false), ("Assigned", false), ("Closed", true)]);
    assert_eq!(machine.commands, ["Open", "Assign", "Close", "Rename"]);
    let table: Vec<_> = machine.transitions.iter().map(|t| (t.from, t.on, t.to, t.handler)).collect();
    assert_eq!(
        table,
        [
            ("New", "Open", "Open", "open"),
            ("Open", "Assign", "Assigned", "assign"),
            ("Assigned", "Assign", "Assigned", "assign"),
            ("Open", "Close", "Closed", "close"),
            ("Assigned", "Close", "Closed", "close"),
            ("Open", "Rename", "Open", "rename"),
        ]
    );
    assert!(machine.analyze().is_clean());
}
