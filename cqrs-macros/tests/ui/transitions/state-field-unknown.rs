use cqrs_core::{Aggregate, Command, DomainEvent, InvalidTransition, transitions};
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
    Open { since: u64 },
}

// The `Open` state has no field `angle`.
#[transitions]
impl Door {
    #[transition(from = Closed, on = Open, to = Open)]
    fn open(&self) -> Result<Vec<DoorEvent>, DoorError> {
        Ok(vec![DoorEvent::Opened])
    }

    #[transition(from = Open { angle }, on = Close, to = Closed)]
    fn close(&self, angle: &u64) -> Result<Vec<DoorEvent>, DoorError> {
        let _ = angle;
        Ok(vec![DoorEvent::Closed])
    }

    fn evolve(self, event: &DoorEvent) -> Self {
        match event {
            DoorEvent::Opened => Door::Open { since: 0 },
            DoorEvent::Closed => Door::Closed,
        }
    }
}

fn main() {}
