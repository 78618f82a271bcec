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
    // The handler does not take `silently`.
    #[transition(from = Closed, on = Open, to = Open)]
    fn open(&self, force: u32) -> Result<Vec<DoorEvent>, DoorError> {
        let _ = force;
        Ok(vec![DoorEvent::Opened])
    }

    // A second handler of `Open` that forgets `force`.
    #[transition(from = Open, on = Open, to = Open)]
    fn reopen(&self, silently: bool) -> Result<Vec<DoorEvent>, DoorError> {
        let _ = silently;
        Ok(vec![])
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
