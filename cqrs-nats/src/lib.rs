//! NATS JetStream as the event store of `cqrs-core`.
#![forbid(unsafe_code)]

pub mod command;
