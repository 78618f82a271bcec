use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedV1 {
    amount: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum Event {
    #[event(version = 2, upcast(from = 1, with = AddedV1), upcast(from = 2, with = AddedV1))]
    Added { amount: u64 },
}

// No second error: the type still implements the trait.
fn assert_event<E: DomainEvent>() {}

fn main() {
    assert_event::<Event>();
}
