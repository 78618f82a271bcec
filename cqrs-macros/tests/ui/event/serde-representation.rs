use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event {
    Added { amount: u64 },
}

// No second error: the type still implements the trait.
fn assert_event<E: DomainEvent>() {}

fn main() {
    assert_event::<Event>();
}
