use cqrs_core::DomainEvent;

#[derive(Clone, Copy, DomainEvent)]
union Event {
    a: u32,
    b: f32,
}

fn main() {}
