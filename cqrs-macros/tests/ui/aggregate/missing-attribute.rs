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

#[derive(Debug, Clone, Default, Aggregate)]
struct Door {
    open: bool,
}

fn main() {}
