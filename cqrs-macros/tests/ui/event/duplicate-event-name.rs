use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum Event {
    Added { amount: u64 },
    #[event(name = "Added")]
    AddedAgain { amount: u64 },
    #[event(name = "")]
    Nameless,
}

// No second error: the type still implements the trait.
fn assert_event<E: DomainEvent>() {}

fn main() {
    assert_event::<Event>();
}
