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
    Open,
}

#[transitions]
impl Door {
    #[transition(from = Closed, on = Open)]
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

// No second error: the type still implements the trait.
fn assert_aggregate<A: Aggregate>() {}

fn main() {
    assert_aggregate::<Door>();
}
