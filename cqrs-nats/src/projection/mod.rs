//! Projections on JetStream: per partition a checkpoint in a KV bucket that the partition's
//! owner moves by compare-and-set, an ordered consumer reading on from it, batches of what is
//! at hand, poison events parked on the dead-letter stream; rebuilds, resets and time travel.
//!
//! [`JetStreamProjectionRunner::spawn`] runs any [`Projection`](cqrs_core::Projection) (read
//! models, reactors, process managers) live:
//!
//! - **Checkpoints.** Each partition of the events stream (see [`crate::subject`]) has a
//!   [`Checkpoint`] at `<projection>.<k>` in the bucket `PROJECTION_CHECKPOINTS_<CONTEXT>`
//!   ([`checkpoints_bucket`]): the last position handled, the worker that owns the partition,
//!   and the filter subjects it is read with (the projection's aggregate types and tenants,
//!   narrowed to the partition; the rest of the [`EventFilter`](cqrs_core::EventFilter) is
//!   applied on the client). A partition without a checkpoint starts where
//!   [`ProjectionConfig::start_from`] says. Projection names are 1 to 64 characters of
//!   `[A-Za-z0-9_-]`.
//! - **Order.** The owner of a partition reads it from the position after its checkpoint (an
//!   ephemeral unacknowledged consumer checked like an ordered one: a gap in its delivery
//!   numbers, a consumer gone, or two missed 1 s idle heartbeats end the reader and it reads on
//!   from the last handled event, so a consumer lost with its server costs seconds) and hands the projection the events in stream order, in batches
//!   ([`Projection::apply_batch`](cqrs_core::Projection::apply_batch); up to
//!   [`ProjectionConfig::max_batch`] events of what has arrived, never waiting to fill one
//!   unless [`ProjectionConfig::batch_linger`] says so). It commits the checkpoint when the
//!   partition goes idle and at least every [`ProjectionConfig::commit_interval`] while it is
//!   busy. A new owner starts from the committed checkpoint, so nothing younger can overtake
//!   anything older: an aggregate's events are applied in order through handovers, crashes and
//!   failovers; after a crash, what was handled since the last commit is handled again
//!   (at-least-once, which [`cqrs_core::read_model::apply_once`] absorbs).
//! - **Fencing.** Every checkpoint write is a compare-and-set on the revision its writer read:
//!   taking a partition writes it with the new owner, so the worker it was taken from can commit
//!   nothing more, and a watch on the checkpoints stops that worker's lane at once. A worker
//!   applies a batch only while its lease holds — until one heartbeat before the others would
//!   count it gone, measured from when its last stored heartbeat was sent — so a worker that was
//!   paused (SIGSTOP, a stalled VM) or cut off past that applies nothing on waking, and takes
//!   partitions again only from their checkpoints. A batch whose apply had already begun when
//!   the pause hit completes; read models written with `apply_once` refuse what is older than
//!   what they hold.
//! - **Several workers.** Every runner of a projection announces itself in the KV bucket
//!   `PROJECTION_WORKERS_<CONTEXT>` ([`workers_bucket`]; [`live_workers`] counts them) every
//!   heartbeat and watches the others (a joining worker takes no partition before it has read
//!   the announcements already there); partition `k` belongs to the `k mod n`-th of the `n`
//!   live workers in start order. When the workers change, the old owner finishes its batch,
//!   commits and releases the checkpoint (no owner); the new owner takes it at once. A partition
//!   still owned by a live worker is waited for; one whose owner stopped announcing itself for
//!   five heartbeats is taken.
//! - **Failures.** A failing batch is delivered again event by event, and a failing event is
//!   retried in-process with the [`RetryPolicy`](cqrs_core::projection::RetryPolicy)'s backoff
//!   ([`cqrs_core::projection::deliver_batch`]); after `max_attempts` it is parked on
//!   `<context>.deadletter.<projection>` ([`crate::deadletter`]) and its neighbours go on. A
//!   transient failure ([`HandlerError::is_transient`](cqrs_core::HandlerError::is_transient))
//!   uses up no attempts for the policy's `transient_patience`; a lane whose lease lapses
//!   meanwhile gives the delivery up at once, one that is stopped (or hands its partition
//!   over) five heartbeats later (the event is delivered again from the checkpoint). A message that is not a readable event is parked at once.
//! - **Rebuild, reset and time travel.** [`JetStreamProjectionRunner::rebuild`] deletes the
//!   checkpoints and starts again from the first event (into a fresh read model);
//!   [`JetStreamProjectionRunner::reset`] (or [`reset_checkpoints`], without a store: the CLI's
//!   `replay`) moves the checkpoints, and running workers carry on from there; [`replay`] reads
//!   from a position or a point in time without touching the checkpoints.
//! - **Versions (blue/green).** A projection has a
//!   [`version`](cqrs_core::Projection::version); version `n > 1` runs as `<name>_v<n>`
//!   ([`versioned_name`]) with checkpoints and workers of its own, so version 2 is built from the
//!   first event beside the live version 1 (into a read model of its own, named after it).
//!   [`JetStreamProjectionRunner::switch_over`] makes it live only once it has caught up: the
//!   live version is marked as being switched from (the entry `<name>.live` in the checkpoints
//!   bucket, which its runners watch: they pause and release), the new version catches up with
//!   where they stopped, then it becomes the live version, the old runners stop and the old
//!   checkpoints are deleted (or, past the caller's patience, the switch is rolled back and the
//!   old runners carry on).
//!   Readers ask [`JetStreamProjectionRunner::live_version`] which model to read and never see
//!   a gap or a step back. A retired version refuses to start again.
//! - **Stopping.** [`JetStreamProjectionHandle::stop`] finishes the batch in hand on every
//!   partition, commits and releases each checkpoint, and withdraws the worker's announcement;
//!   [`JetStreamProjectionHandle::abort`] stops as a crash would.
//!
//! **Why this design.** The runner before it kept one durable pull consumer per partition with
//! explicit acks as the checkpoint and at most one unacked event (a larger window let a
//! failover deliver a younger event before an older one still unacked on the failed worker).
//! Each event then cost an ack round trip: 0.29-0.31x a bare ordered-consumer read on loopback
//! (`examples/replay_bench.rs`), 0.75-0.80x with 256 in flight and the reordering risk. `AckPolicy::All`
//! with pipelined pulls keeps the window but not the order: after a crash the server delivers
//! new events before it redelivers the unacked ones (after the ack wait), so a takeover must
//! reset the consumer to its ack floor anyway — a checkpoint, in the consumer's clothes, that a
//! deposed worker could still ack past. An ordered consumer from a checkpoint that the worker owns has no
//! window at all (it reads as fast as a replay), the checkpoint moves only by compare-and-set
//! (so a deposed worker cannot move it), and the commit is one KV write per batch or interval
//! instead of one ack per event.
//!
//! Layout: `config` (where a partition starts, how it runs), `checkpoint` (the KV entries and
//! their compare-and-set), `names` (workers' bucket, filter subjects), `runner` (starting, the
//! lease), `membership` (the workers' heartbeats and watch) and `assignment` (the pure rule that
//! turns what the watch showed into owned partitions), `supervisor` (lanes per owned partition,
//! handovers, the checkpoint watch), `lane` (one partition's take-read-apply-commit loop,
//! parking, release), `handle` (read-your-writes, lag, dead letters, stop), `lag` (how far
//! behind), `admin` (rebuild, reset, live workers) and `replay` (time travel).

use crate::store::JetStreamEventStore;
use crate::subject::Subjects;
use async_nats::jetstream::stream;
use cqrs_core::StoreError;

mod admin;
mod assignment;
mod checkpoint;
mod config;
mod handle;
mod lag;
mod lane;
mod membership;
mod names;
mod replay;
mod runner;
mod supervisor;

pub use admin::{SwitchOver, live_workers, reset_checkpoints};
pub use checkpoint::{
    Checkpoint, LiveVersion, checkpoints_bucket, read_checkpoints, read_live_versions,
};
pub use config::{ProjectionConfig, StartFrom};
pub use cqrs_core::projection::versioned_name;
pub use handle::JetStreamProjectionHandle;
pub use lag::Lag;
pub(crate) use names::filter_subjects;
pub use names::workers_bucket;
pub use replay::{ReplayFrom, replay};
pub use runner::JetStreamProjectionRunner;

const OP: &str = "projection";

fn unavailable(reason: impl std::fmt::Display) -> StoreError {
    crate::store::unavailable(OP, reason)
}

fn unavailable_because(
    what: impl Into<String>,
    source: impl Into<cqrs_core::error::BoxError>,
) -> StoreError {
    crate::store::unavailable_because(OP, what, source)
}

/// The context's events stream and subjects.
async fn context_subjects(
    store: &JetStreamEventStore,
) -> Result<(stream::Stream, Subjects), StoreError> {
    let stream = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .map_err(|e| unavailable_because("getting the stream", e))?;
    Ok((stream, store.subjects().clone()))
}
