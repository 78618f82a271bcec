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

#[derive(Debug, Clone, Default, Aggregate)]
#[aggregate(command = DoorCommand, event = DoorEvent, error = DoorError)]
struct Door {
    open: bool,
}

#[transitions]
impl Door {
    #[transition(from = Closed, on = Open, to = Open)]
    fn open(&self) -> Result<Vec<DoorEvent>, DoorError> {
        Ok(vec![DoorEvent::Opened])
    }

    fn evolve(self, _event: &DoorEvent) -> Self {
        Door { open: true }
    }
}

fn main() {}
