//! A seeded nemesis over a three-node R3 cluster (issue 17). Writers deposit on hot accounts
//! (every writer) and cold ones (one writer each) and place and pay orders through the
//! repository, a balance projection runs live on the JetStream runner and the shipping saga (a
//! process manager) ships every paid order, while a schedule drawn from a seed injects faults:
//!
//! - `kill`: SIGKILL of one node (the stream leader or any node), restarted after a moment;
//! - `pause`: SIGSTOP of one node for longer than an election timeout, then SIGCONT;
//! - `power`: every node killed at once, then all restarted;
//! - `partition`: one node's routes cut (through loopback proxies), then healed;
//! - `client-cut`: every client connection dropped mid-request and refused for a moment.
//!
//! Every route and client connection goes through a [`cqrs_test_server::Proxy`]; everything is
//! on loopback, every wait is bounded, and the servers, proxies and directories go on drop.
//!
//! Once the schedule has healed: every acknowledged command's event is present exactly once,
//! versions are gapless, nothing is present that no writer attempted, the live projection equals
//! a rebuild, every paid order was shipped once by the saga, and no writer was told `Conflict`
//! for a write only it makes. The events are counted until the histories read (direct gets, which
//! a follower may answer) hold as many events as the stream's leader counts; wrong answers and
//! unshipped orders that a stale read explains are also counted apart in the summary
//! (`stale_refusals`, `wrong_answers_by_kind`).
//!
//! `cargo test -p cqrs-tests --test nemesis -- --nocapture` runs the short schedule (one fault of
//! each kind); `NEMESIS_SEEDS=20 NEMESIS_SEED=1 cargo test -p
//! cqrs-tests --test nemesis -- --ignored --nocapture many_seeds` the long run, and `... --ignored lazy_fsync_power_loss` the
//! power-loss schedule under the default (lazy) fsync.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unnecessary_literal_bound
)]

mod nemesis {
    pub(crate) mod check;
    pub(crate) mod faults;
    pub(crate) mod workload;
}

use cqrs_test_server::SyncInterval;
use nemesis::faults::{Kind, schedule, schedule_of};
use nemesis::workload::{Outcome, run};

/// The seed of the short schedule; any seed gives one fault of each kind in some order.
const CI_SEED: u64 = 17;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_seeded_schedule_loses_and_doubles_nothing() {
    let faults = schedule(CI_SEED, Kind::ALL.len(), true);
    let outcome = run(CI_SEED, SyncInterval::Always, faults).await;
    println!("{}", outcome.summary());
    outcome.assert_ok();
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `NEMESIS_SEEDS` seeds (20 unless set) from `NEMESIS_SEED` (1 unless set), `NEMESIS_FAULTS`
/// random faults each (6 unless set; all of kind `NEMESIS_KIND`, e.g. `partition`, if set).
/// Each seed runs on its own cluster; a failing seed is reported with its summary and the run
/// goes on, then the test fails if any seed did. With `NEMESIS_KEEP_LOGS=<dir>`, the servers'
/// logs of a seed that lost, doubled or invented events, or whose live projection missed some,
/// are kept in `<dir>/seed-<seed>/`; with `NEMESIS_TRACE` set, see [`trace_runners`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: about two minutes per seed"]
async fn many_seeds() {
    trace_runners();
    let first = env_u64("NEMESIS_SEED", 1);
    let seeds = env_u64("NEMESIS_SEEDS", 20);
    let faults = usize::try_from(env_u64("NEMESIS_FAULTS", 6)).unwrap_or(6);
    let mut failures = Vec::new();
    let only = std::env::var("NEMESIS_KIND").ok().map(|name| {
        Kind::named(&name).unwrap_or_else(|| panic!("NEMESIS_KIND={name}: no such fault kind"))
    });
    for seed in first..first + seeds {
        let plan = match only {
            Some(kind) => schedule_of(seed, faults, kind),
            None => schedule(seed, faults, false),
        };
        let outcome = tokio::spawn(run(seed, SyncInterval::Always, plan)).await;
        match outcome {
            Ok(outcome) => {
                println!("{}", outcome.summary());
                if let Err(why) = outcome.verdict() {
                    println!("seed={seed} FAILED: {why}");
                    failures.push(format!("seed={seed}: {why}"));
                }
            }
            Err(panic) => {
                let why = panic_message(panic);
                println!("seed={seed} FAILED (panic): {why}");
                failures.push(format!("seed={seed}: panic: {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "failing seeds: {failures:#?}");
}

/// With `NEMESIS_TRACE` set, the projection runners' debug events (which server hosts each
/// partition's reader, from where it reads) go to stderr, stamped, beside the faults.
fn trace_runners() {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    if std::env::var_os("NEMESIS_TRACE").is_none() {
        return;
    }
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("cqrs_nats::projection", tracing::Level::DEBUG)
        .with_default(tracing::Level::WARN);
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer));
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".to_owned()),
        Err(error) => error.to_string(),
    }
}

/// The power-loss schedule (every node killed with SIGKILL at once, `NEMESIS_FAULTS` times, 5
/// unless set) under nats-server's default fsync and, for comparison, under `sync_interval:
/// always`, for `NEMESIS_SEEDS` seeds (1 unless set) from `NEMESIS_SEED`: reports what is lost,
/// and fails only if `sync_interval: always` loses or doubles anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a report: run it to see what the default fsync loses"]
async fn lazy_fsync_power_loss() {
    let first = env_u64("NEMESIS_SEED", 1);
    let seeds = env_u64("NEMESIS_SEEDS", 1);
    let faults = usize::try_from(env_u64("NEMESIS_FAULTS", 5)).unwrap_or(5);
    for seed in first..first + seeds {
        for sync in [SyncInterval::Default, SyncInterval::Always] {
            let plan = schedule_of(seed, faults, Kind::PowerLoss);
            let outcome: Outcome = run(seed, sync, plan).await;
            println!("{}", outcome.summary());
            if sync == SyncInterval::Always {
                outcome.assert_ok();
            }
        }
    }
}
