use cqrs_core::{Aggregate, DomainEvent, InvalidTransition};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum DoorEvent {
    Opened,
    Closed,
}

#[derive(Debug, Clone)]
enum DoorCommand {
    Open,
    Close,
}

#[derive(Debug, thiserror::Error)]
enum DoorError {
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[derive(Clone, Copy, Aggregate)]
#[aggregate(command = DoorCommand, event = DoorEvent, error = DoorError)]
union Door {
    a: u32,
    b: f32,
}

fn main() {}
