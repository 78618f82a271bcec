//! Projections, process managers and read models on JetStream: checkpoints, parking, malformed
//! messages, rebuilds and time travel, two workers of one projection, sagas, read-your-writes
//! and the KV read-model store. Each test starts its own nats-server.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::items_after_statements,
    clippy::unnecessary_literal_bound,
    clippy::too_many_lines
)]

mod checkpoints;
mod parking;
mod read_models;
mod rebuilds;
mod sagas;
mod support;
mod workers;
