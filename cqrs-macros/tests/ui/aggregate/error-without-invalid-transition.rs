use cqrs_core::{Aggregate, Command, DomainEvent, transitions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum DoorEvent {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Command)]
enum DoorCommand {
    Open,
    Close,
}

// No way to hold an InvalidTransition.
#[derive(Debug, thiserror::Error)]
#[error("door stuck")]
struct DoorError;

#[derive(Debug, Clone, Default, Aggregate)]
#[aggregate(command = DoorCommand, event = DoorEvent, error = DoorError)]
enum Door {
    #[default]
    Closed,
    Open,
}

#[transitions]
impl Door {
    #[transition(from = Closed, on = Open, to = Open)]
    fn open(&self) -> Result<Vec<DoorEvent>, DoorError> {
        Ok(vec![DoorEvent::Opened])
    }

    #[transition(from = Open, on = Close, to = Closed)]
    fn close(&self) -> Result<Vec<DoorEvent>, DoorError> {
        Ok(vec![DoorEvent::Closed])
    }

    fn evolve(self, event: &DoorEvent) -> Self {
        match event {
            DoorEvent::Opened => Door::Open,
            DoorEvent::Closed => Door::Closed,
        }
    }
}

fn main() {}
