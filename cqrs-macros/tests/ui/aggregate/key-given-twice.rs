use cqrs_core::{Aggregate, Command, DomainEvent, InvalidTransition, transitions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum DoorEvent {
    Opened,
}

#[derive(Debug, Clone, Command)]
enum DoorCommand {
    Open,
}

#[derive(Debug, thiserror::Error)]
enum DoorError {
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

// A key repeated within one attribute, and across two: each repetition is reported at its key.
#[derive(Debug, Clone, Default, Aggregate)]
#[aggregate(command = DoorCommand, event = DoorEvent, error = DoorError, name = "Door", name = "Gate")]
#[aggregate(command = DoorCommand)]
enum Door {
    #[default]
    #[aggregate(terminal, terminal)]
    Closed,
}

#[transitions]
impl Door {
    #[transition(from = Closed, on = Open, to = Closed, to = Closed)]
    fn open(&self) -> Result<Vec<DoorEvent>, DoorError> {
        Ok(vec![DoorEvent::Opened])
    }

    fn evolve(self, _event: &DoorEvent) -> Self {
        self
    }
}

fn main() {}
