//! What tenant-scoped reads cost: full loads of aggregates through a store opened with
//! `StoreConfig::tenant_scoped_reads(true)` against the operator's default read path (batched
//! direct gets), in the same run.
//!
//! Run with: `cargo run --release -p cqrs-nats --example tenant_load_bench` (needs `nats-server`
//! on PATH or `NATS_SERVER_BIN`; `bash scripts/test.sh` installs it). Knobs: `AGGREGATES`
//! (default 200), `EVENTS_PER_AGGREGATE` (default 20), `ROUNDS` (default 3).
//!
//! Variants, each loading every aggregate from its first event, one load at a time and 16 at a
//! time; the best round of each is printed, then one JSON line per variant with `ratio` against
//! `direct` (the operator's path) at the same concurrency:
//! - `direct`: the operator's store, one batched direct get per page;
//! - `scoped`: a tenant-scoped store, whose pages go through the operator's
//!   [`TenantReadService`](cqrs_nats::TenantReadService), which the bench runs (before it, they
//!   went through a consumer created per page).
#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::unnecessary_literal_bound
)]

use cqrs_core::{EventStore, ExpectedVersion, Metadata, NewEvent, SerializedEvent, StreamId};
use cqrs_nats::{JetStreamEventStore, StoreConfig, TenantReadService};
use futures::{StreamExt, TryStreamExt};
use std::time::Instant;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn stream(a: usize) -> StreamId {
    StreamId::new("Account", format!("acc-{a}")).with_tenant("t1")
}

async fn fill(store: &JetStreamEventStore, aggregates: usize, per_aggregate: usize) {
    futures::stream::iter(0..aggregates)
        .for_each_concurrent(16, |a| async move {
            let events = (0..per_aggregate)
                .map(|i| {
                    let mut metadata = Metadata::standalone();
                    metadata.tenant = Some("t1".to_owned());
                    NewEvent::new(
                        cqrs_core::metadata::new_id(),
                        SerializedEvent {
                            event_type: "Deposited".to_owned(),
                            schema_version: 1,
                            data: format!("{{\"amount\":{i}}}").into_bytes(),
                        },
                        metadata,
                    )
                })
                .collect();
            store
                .append(&stream(a), ExpectedVersion::NoStream, events, None)
                .await
                .expect("fill");
        })
        .await;
}

/// Loads every aggregate fully, `concurrency` at a time; returns loads per second.
async fn load_all(
    store: &JetStreamEventStore,
    aggregates: usize,
    per_aggregate: usize,
    concurrency: usize,
) -> f64 {
    let started = Instant::now();
    futures::stream::iter(0..aggregates)
        .for_each_concurrent(concurrency, |a| async move {
            let events: Vec<_> = store
                .load(&stream(a), 1)
                .await
                .expect("load")
                .try_collect()
                .await
                .expect("events");
            assert_eq!(events.len(), per_aggregate);
        })
        .await;
    aggregates as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let aggregates = env_usize("AGGREGATES", 200);
    let per_aggregate = env_usize("EVENTS_PER_AGGREGATE", 20);
    let rounds = env_usize("ROUNDS", 3);
    let server = cqrs_test_server::NatsServer::start()
        .await
        .expect("start nats-server");
    let url = server.url();
    // Pages of 256: an aggregate of up to 256 events is one request on either path.
    let config = || StoreConfig::new("bench").load_batch(256);
    let operator = JetStreamEventStore::connect(&url, config())
        .await
        .expect("operator store");
    let _reads = TenantReadService::new(&operator)
        .spawn()
        .await
        .expect("tenant read service");
    let tenant = JetStreamEventStore::connect(&url, config().tenant_scoped_reads(true))
        .await
        .expect("tenant store");
    fill(&operator, aggregates, per_aggregate).await;
    println!("{aggregates} aggregates of {per_aggregate} events, best of {rounds} rounds, loads/s");

    for concurrency in [1, 16] {
        let (mut direct, mut scoped) = (0f64, 0f64);
        for _ in 0..rounds {
            direct = direct.max(load_all(&operator, aggregates, per_aggregate, concurrency).await);
            scoped = scoped.max(load_all(&tenant, aggregates, per_aggregate, concurrency).await);
        }
        println!(
            "concurrency {concurrency:>2}: direct {direct:>8.0}  scoped {scoped:>8.0}  {:.2}x",
            scoped / direct
        );
        for (variant, rate) in [("direct", direct), ("scoped", scoped)] {
            println!(
                "{{\"variant\": \"{variant}_c{concurrency}\", \"loads_per_s\": {rate:.0}, \"events_per_s\": {:.0}, \"ratio\": {:.3}}}",
                rate * per_aggregate as f64,
                rate / direct
            );
        }
    }
}
