//! Projection replay throughput of the framework against a bare async-nats read of the same
//! stream, in the same run.
//!
//! Run with: `cargo run --release -p cqrs-nats --example replay_bench` (needs `nats-server` on
//! PATH or `NATS_SERVER_BIN`; `bash scripts/test.sh` installs it), or point it at a server with
//! `NATS_URL=nats://127.0.0.1:4222`. Knobs: `EVENTS` (default 100000), `AGGREGATES` (default
//! 1000).
//!
//! The stream is filled through the store itself, by a child process (so that the writes'
//! memory does not count in the reads' peaks): one atomic batch append of `EVENTS / AGGREGATES`
//! events per aggregate, 16 appends in flight, so every message carries the full framework
//! headers. Then, each from the first event to the head:
//! - `catch_up`: `cqrs_core::projection::catch_up` over `read_all` (ordered consumer, decode,
//!   filter, deliver) into a counting projection;
//! - `replay`: `cqrs_nats::projection::replay` (ordered consumer, same decode and deliver);
//! - `runner`: the live projection runner in its default configuration (per partition: the
//!   checkpoint taken, an ordered consumer from it, batches of what is at hand applied event by
//!   event through the default `apply_batch`, the checkpoint committed when idle and every
//!   200 ms); `runner_batched`: the same with a projection that overrides `apply_batch`;
//!   `runner_unbatched`: batches of one event; `runner_2_workers`: two default runners sharing
//!   the partitions;
//! - bare: an async-nats ordered pull consumer counting messages, no decoding.
//!
//! The read-only passes (bare, `catch_up`, `replay`) run twice, interleaved, and each runner
//! variant twice (a projection of its own each time); the best rate of each is printed, with its ratio to the bare read, then one JSON line per variant: `variant`,
//! `events_per_s`, `ratio` (to `bare`, measured in the same run) and `max_rss_mb` (the process's
//! peak resident memory during the variant's passes, Linux only, else `null`). With
//! `EVENTS=1000000` the peaks show whether memory grows with history.
#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::unnecessary_literal_bound
)]

use cqrs_core::projection::{RetryPolicy, catch_up};
use cqrs_core::{
    EventStore, ExpectedVersion, HandlerError, Metadata, NewEvent, Projection, RecordedEvent,
    SerializedEvent, StreamId,
};
use cqrs_nats::async_nats::jetstream::consumer::{DeliverPolicy, pull};
use cqrs_nats::projection::{ReplayFrom, replay};
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, ProjectionConfig,
    StoreConfig,
};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Counts the events it is given.
struct Count {
    name: &'static str,
    seen: Arc<AtomicU64>,
}

/// Counts the events it is given, a batch at a time.
struct CountBatches(Count);

impl Projection for CountBatches {
    fn name(&self) -> &str {
        self.0.name
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.apply(event).await
    }

    async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
        self.0
            .seen
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Projection for Count {
    fn name(&self) -> &str {
        self.name
    }

    async fn apply(&self, _event: &RecordedEvent) -> Result<(), HandlerError> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn count(name: &'static str) -> (Count, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    (
        Count {
            name,
            seen: Arc::clone(&seen),
        },
        seen,
    )
}

async fn fill(store: &JetStreamEventStore, aggregates: usize, per_aggregate: usize) -> u64 {
    let tasks: Vec<_> = (0..16)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut head = 0;
                for a in (w..aggregates).step_by(16) {
                    let events = (0..per_aggregate)
                        .map(|i| {
                            NewEvent::new(
                                cqrs_core::metadata::new_id(),
                                SerializedEvent {
                                    event_type: "Added".to_owned(),
                                    schema_version: 1,
                                    data: format!("{{\"Added\":{{\"amount\":{i}}}}}").into_bytes(),
                                },
                                Metadata::standalone(),
                            )
                        })
                        .collect();
                    let committed = store
                        .append(
                            &StreamId::new("Counter", format!("c{a}")),
                            ExpectedVersion::NoStream,
                            events,
                            None,
                        )
                        .await
                        .expect("append");
                    head = head.max(committed.events.last().map_or(0, |e| e.position));
                }
                head
            })
        })
        .collect();
    let mut head = 0;
    for task in tasks {
        head = head.max(task.await.expect("writer"));
    }
    head
}

async fn bare(store: &JetStreamEventStore, head: u64) -> u64 {
    let stream = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let mut n = 0;
    while let Some(message) = messages.next().await {
        let message = message.expect("message");
        n += 1;
        let info = message.info().expect("info");
        if info.stream_sequence >= head {
            break;
        }
    }
    n
}

/// Runs projection `name` on `workers` runners with `config` sharing its partitions until
/// together they handled everything up to `head`; returns how many events they applied.
async fn runner(
    store: &JetStreamEventStore,
    name: &'static str,
    config: ProjectionConfig,
    workers: usize,
    batched: bool,
    head: u64,
) -> u64 {
    let seen = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..workers {
        let projection = Count {
            name,
            seen: Arc::clone(&seen),
        };
        let handle = if batched {
            JetStreamProjectionRunner::spawn(store, CountBatches(projection), config.clone())
                .await
                .map(Either::Batched)
        } else {
            JetStreamProjectionRunner::spawn(store, projection, config.clone())
                .await
                .map(Either::Single)
        };
        handles.push(handle.expect("spawn"));
    }
    for handle in &handles {
        match handle {
            Either::Single(h) => h.wait_for(head, Duration::from_secs(600)).await,
            Either::Batched(h) => h.wait_for(head, Duration::from_secs(600)).await,
        }
        .expect("runner reached the head");
    }
    for handle in handles {
        match handle {
            Either::Single(h) => h.stop().await,
            Either::Batched(h) => h.stop().await,
        }
        .expect("stop");
    }
    seen.load(Ordering::Relaxed)
}

/// A runner of either projection.
enum Either {
    Single(JetStreamProjectionHandle<Count>),
    Batched(JetStreamProjectionHandle<CountBatches>),
}

/// The live runner's variants, each run twice (the best rate counts, as for the read-only
/// passes), each pass a projection of its own from the first event.
async fn live_runs(
    store: &JetStreamEventStore,
    head: u64,
) -> Vec<(&'static str, &'static str, Run)> {
    let live = [
        (
            "runner",
            "runner (default)",
            ProjectionConfig::new(),
            1,
            false,
        ),
        (
            "runner_batched",
            "runner, batch apply",
            ProjectionConfig::new(),
            1,
            true,
        ),
        (
            "runner_unbatched",
            "runner, batches of 1",
            ProjectionConfig::new().max_batch(1),
            1,
            false,
        ),
        (
            "runner_2_workers",
            "runner, default, 2 workers sharing",
            ProjectionConfig::new(),
            2,
            false,
        ),
    ];
    let names = [
        ["runner_a", "runner_b"],
        ["batched_a", "batched_b"],
        ["unbatched_a", "unbatched_b"],
        ["pair_a", "pair_b"],
    ];
    let mut runs = Vec::new();
    for ((variant, what, config, workers, batched), names) in live.into_iter().zip(names) {
        let mut run = Run::default();
        for name in names {
            reset_peak();
            let started = Instant::now();
            let n = runner(store, name, config.clone(), workers, batched, head).await;
            run.record(head as f64 / started.elapsed().as_secs_f64(), peak_mb());
            // At least once: a handover between workers may hand an event over twice.
            assert!(n >= head, "{variant} applied {n} of {head}");
            if n > head {
                println!("{variant}: {} delivered again during handovers", n - head);
            }
        }
        runs.push((variant, what, run));
    }
    runs
}

/// Set (to the context) in the child process that fills the stream.
const FILL_CONTEXT: &str = "REPLAY_BENCH_FILL_CONTEXT";

#[tokio::main]
async fn main() {
    let events = env_usize("EVENTS", 100_000);
    let aggregates = env_usize("AGGREGATES", 1000).max(1);
    let per_aggregate = (events / aggregates).clamp(1, 1000);
    let (_server, url) = if let Ok(url) = std::env::var("NATS_URL") {
        (None, url)
    } else {
        let server = cqrs_test_server::NatsServer::start()
            .await
            .expect("start nats-server");
        let url = server.url();
        (Some(server), url)
    };
    // The stream is filled by a child process (this program again, told so by `FILL_CONTEXT`),
    // so that the memory the writes leave with the allocator does not set a floor under every
    // variant's peak: the peaks below are the reads' own.
    if let Ok(context) = std::env::var(FILL_CONTEXT) {
        let store = JetStreamEventStore::connect(url.as_str(), StoreConfig::new(context))
            .await
            .expect("connect");
        let started = Instant::now();
        let head = fill(&store, aggregates, per_aggregate).await;
        println!(
            "{aggregates} aggregates x {per_aggregate} events = {head} events, filled in {:.2?}",
            started.elapsed()
        );
        return;
    }
    let context = format!("replay{}", std::process::id());
    let filled = std::process::Command::new(std::env::current_exe().expect("this program"))
        .env(FILL_CONTEXT, &context)
        .env("NATS_URL", &url)
        .status()
        .expect("run the filling child");
    assert!(filled.success(), "filling the stream failed");
    let store = JetStreamEventStore::connect(url.as_str(), StoreConfig::new(context))
        .await
        .expect("connect");
    let head = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .expect("stream")
        .cached_info()
        .state
        .last_sequence;
    let policy = RetryPolicy::default();
    let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();

    // The read-only passes run twice, interleaved, and the best rate of each counts, to damp the
    // noise of a shared machine; the peak memory of each is the higher of its two passes.
    let mut bare_run = Run::default();
    let mut catch_up_run = Run::default();
    let mut replay_run = Run::default();
    for _ in 0..2 {
        reset_peak();
        let started = Instant::now();
        let n = bare(&store, head).await;
        bare_run.record(rate(n, started.elapsed()), peak_mb());
        assert_eq!(n, head, "bare read everything");

        let (projection, seen) = count("catchup");
        reset_peak();
        let started = Instant::now();
        let outcome = catch_up(&store, &projection, 0, &policy)
            .await
            .expect("catch_up");
        catch_up_run.record(
            rate(seen.load(Ordering::Relaxed), started.elapsed()),
            peak_mb(),
        );
        assert_eq!(outcome.applied, head);

        let (projection, seen) = count("replay");
        reset_peak();
        let started = Instant::now();
        let outcome = replay(&store, &projection, ReplayFrom::Position(1), &policy)
            .await
            .expect("replay");
        replay_run.record(
            rate(seen.load(Ordering::Relaxed), started.elapsed()),
            peak_mb(),
        );
        assert_eq!(outcome.applied, head);
    }

    let mut variants = vec![
        ("catch_up", "catch_up (read_all)", catch_up_run),
        ("replay", "replay (ordered consumer)", replay_run),
    ];
    variants.extend(live_runs(&store, head).await);
    report(bare_run, &variants);
}

/// Prints each variant's rate and ratio to `bare`, then one JSON line per variant.
fn report(bare: Run, variants: &[(&str, &str, Run)]) {
    let bare_rate = bare.rate;
    println!("bare async-nats ordered consumer      {bare_rate:>10.0} ev/s");
    for (_, what, run) in variants {
        println!(
            "{what:<37} {:>10.0} ev/s  {:.2}x",
            run.rate,
            run.rate / bare_rate
        );
    }
    for (variant, _, run) in std::iter::once(&("bare", "", bare)).chain(variants) {
        println!(
            "{{\"variant\": \"{variant}\", \"events_per_s\": {:.0}, \"ratio\": {:.3}, \"max_rss_mb\": {}}}",
            run.rate,
            run.rate / bare_rate,
            run.max_rss_mb
                .map_or_else(|| "null".to_owned(), |mb| format!("{mb:.1}"))
        );
    }
}

/// The best rate of a variant and the highest peak memory of its passes.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    rate: f64,
    max_rss_mb: Option<f64>,
}

impl Run {
    fn record(&mut self, rate: f64, peak_mb: Option<f64>) {
        self.rate = self.rate.max(rate);
        self.max_rss_mb = match (self.max_rss_mb, peak_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Starts a pass: the process's peak resident memory is reset to what it holds now (Linux: the
/// kernel's high-water mark, reset by writing 5 to `/proc/self/clear_refs`). Without the reset
/// the peak is the process's so far: still an upper bound.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident memory since [`reset_peak`] (`VmHWM`) in MiB; `None` off Linux.
fn peak_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
