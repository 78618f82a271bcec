use cqrs_core::{Aggregate, Command, DomainEvent, InvalidTransition, transitions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum DoorEvent {
    Opened,
    Closed,
}

#[derive(Debug, Clone, Command)]
enum DoorCommand {
    Open { force: u32, silently: bool },
    Close,
}

#[derive(Debug, thiserror::Error)]
enum DoorError {
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[derive(Debug, Clone, Default, Aggregate)]
#[aggregate(command = DoorCommand, event = DoorEvent, error = DoorError)]
enum Door {
    #[default]
    Closed,
    Open,
}

#[transitions]
impl Door {
    // `Open` has named fields: `on = Open`, not `on = Open(..)`.
    #[transition(from = Closed, on = Open(..), to = Open)]
    fn open(&self, force: u32, silently: bool) -> Result<Vec<DoorEvent>, DoorError> {
        let _ = (force, silently);
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
