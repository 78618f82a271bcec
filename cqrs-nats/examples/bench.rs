//! Throughput of the framework against bare async-nats on the same workload.
//!
//! Run with: `cargo run --release -p cqrs-nats --example bench` (needs `nats-server` on PATH or
//! `NATS_SERVER_BIN`; `bash scripts/test.sh` installs it), or point it at a server with
//! `NATS_URL=nats://127.0.0.1:4222`. Knobs: `ACCOUNTS` (default 200), `COMMANDS` per account
//! (default 20), `WRITERS` (comma-separated concurrency levels, default `1,16`).
//!
//! Workload: N accounts x M deposit commands, C concurrent writers, each writer owning N / C
//! accounts and running their commands one after another.
//! - framework: `Repository::execute` (load with the hot-aggregate cache, decide, append with the
//!   expected version, idempotency key, full metadata headers);
//! - store.append: `JetStreamEventStore::append` alone (expected version tracked by the writer,
//!   same headers), which isolates the store from the repository's load-before-decide;
//! - bare: `jetstream.send_publish` with `Nats-Expected-Last-Subject-Sequence`, awaited ack, the
//!   writer remembering each account's last sequence.
#![allow(clippy::print_stdout, clippy::expect_used, clippy::cast_precision_loss)]

use cqrs_core::doc::{Counter, CounterCommand};
use cqrs_core::{CommandMetadata, Repository};
use cqrs_nats::async_nats::jetstream;
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn framework(
    url: &str,
    context: &str,
    accounts: usize,
    commands: usize,
    writers: usize,
) -> Duration {
    let store = JetStreamEventStore::connect(url, StoreConfig::new(context))
        .await
        .expect("connect");
    let repo = Repository::<Counter, _>::new(store).with_cache(accounts);
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let repo = repo.clone();
            tokio::spawn(async move {
                for account in (w..accounts).step_by(writers) {
                    let id = format!("acc-{account}");
                    for _ in 0..commands {
                        repo.execute(
                            &id,
                            CounterCommand::Add(10),
                            CommandMetadata::root().with_actor("user:bench"),
                        )
                        .await
                        .expect("execute");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    start.elapsed()
}

async fn store_only(
    url: &str,
    context: &str,
    accounts: usize,
    commands: usize,
    writers: usize,
) -> Duration {
    use cqrs_core::{EventStore, ExpectedVersion, IdempotencyKey, NewEvent, StreamId};
    let store = JetStreamEventStore::connect(url, StoreConfig::new(context))
        .await
        .expect("connect");
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for account in (w..accounts).step_by(writers) {
                    let stream = StreamId::new("Counter", format!("acc-{account}"));
                    for version in 0..commands as u64 {
                        let command = CommandMetadata::root().with_actor("user:bench");
                        let key = IdempotencyKey::new(command.command_id.to_string());
                        let event = NewEvent::encode(
                            &cqrs_core::doc::CounterEvent::Added { amount: 10 },
                            key.event_id(0),
                            command.event_metadata(),
                        )
                        .expect("encode");
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Exact(version),
                                vec![event],
                                Some(&key),
                            )
                            .await
                            .expect("append");
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    start.elapsed()
}

async fn bare(
    url: &str,
    context: &str,
    accounts: usize,
    commands: usize,
    writers: usize,
) -> Duration {
    let client = cqrs_nats::async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: format!("BARE_{}", context.to_uppercase()),
        subjects: vec![format!("{context}.>")],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("stream");
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let js = js.clone();
            let context = context.to_owned();
            tokio::spawn(async move {
                for account in (w..accounts).step_by(writers) {
                    let subject = format!("{context}.Counter.acc-{account}");
                    let mut last = 0;
                    for _ in 0..commands {
                        let message = jetstream::message::PublishMessage::build()
                            .payload(br#"{"Added":{"amount":10}}"#.as_slice().into())
                            .expected_last_subject_sequence(last);
                        last = js
                            .send_publish(subject.clone(), message)
                            .await
                            .expect("publish")
                            .await
                            .expect("ack")
                            .sequence;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer");
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let accounts = env_usize("ACCOUNTS", 200);
    let commands = env_usize("COMMANDS", 20);
    let levels: Vec<usize> = std::env::var("WRITERS")
        .unwrap_or_else(|_| "1,16".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let (_server, url) = if let Ok(url) = std::env::var("NATS_URL") {
        (None, url)
    } else {
        let server = cqrs_test_server::NatsServer::start()
            .await
            .expect("start nats-server");
        let url = server.url();
        (Some(server), url)
    };
    let total = (accounts * commands) as f64;
    println!("{accounts} accounts x {commands} commands = {total} events per run");
    for (run, writers) in levels.into_iter().enumerate() {
        let fw = framework(&url, &format!("fw{run}"), accounts, commands, writers).await;
        let appends = store_only(&url, &format!("st{run}"), accounts, commands, writers).await;
        let bare_time = bare(&url, &format!("bare{run}"), accounts, commands, writers).await;
        let rate = |d: Duration| total / d.as_secs_f64();
        let (fw_rate, st_rate, bare_rate) = (rate(fw), rate(appends), rate(bare_time));
        println!(
            "C={writers:>3}: repository {fw_rate:>8.0} cmd/s ({:.2}x)   store.append {st_rate:>8.0} ev/s ({:.2}x)   bare async-nats {bare_rate:>8.0} msg/s",
            fw_rate / bare_rate,
            st_rate / bare_rate
        );
    }
}
