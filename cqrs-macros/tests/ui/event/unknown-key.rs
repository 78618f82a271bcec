use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum Event {
    #[event(rename = "Plus", name = "Plus", name = "More")]
    Added { amount: u64 },
}

// No second error: the type still implements the trait.
fn assert_event<E: DomainEvent>() {}

fn main() {
    assert_event::<Event>();
}
