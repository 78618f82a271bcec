use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(version = 2)]
enum Event {
    Added {
        #[event(name = "amount")]
        amount: u64,
    },
}

// No second error: the type still implements the trait.
fn assert_event<E: DomainEvent>() {}

fn main() {
    assert_event::<Event>();
}
