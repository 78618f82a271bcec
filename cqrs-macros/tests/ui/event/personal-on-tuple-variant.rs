use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum MemberEvent {
    Registered(String, #[personal(subject = member_id, replacement = "")] String),
}

fn main() {}
