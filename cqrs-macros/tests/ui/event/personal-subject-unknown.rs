use cqrs_core::DomainEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
enum MemberEvent {
    Registered {
        member_id: String,
        #[personal(subject = member, replacement = "")]
        name: String,
        #[personal(subject = name, replacement = "")]
        email: String,
        #[personal(subject = nickname, replacement = "")]
        nickname: String,
        #[personal(subject = member_id, replacement = "")]
        #[personal(subject = member_id, replacement = "-")]
        phone: String,
    },
}

fn main() {}
