use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum MemberEvent {
    Registered {
        member_id: String,
        #[personal(subject = member_id)]
        name: String,
        #[personal(subject = member_id, replacement = [0])]
        email: String,
        #[personal(replacement = "", subject = member_id, subject = member_id)]
        phone: String,
        #[personal(replacement = None)]
        address: Option<String>,
        #[personal(subject = member_id, mask = true)]
        birthday: Option<String>,
    },
}

fn main() {}
