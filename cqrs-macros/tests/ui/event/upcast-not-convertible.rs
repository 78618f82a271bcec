use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedV1 {
    amount: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedV2 {
    amount: u64,
}

// AddedV1 -> AddedV2 exists, AddedV2 -> Event does not.
impl From<AddedV1> for AddedV2 {
    fn from(v1: AddedV1) -> Self {
        AddedV2 { amount: v1.amount.into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum Event {
    #[event(version = 3, upcast(from = 1, with = AddedV1), upcast(from = 2, with = AddedV2))]
    Added { amount: u64 },
}

fn main() {}
