//! Projections on JetStream: one durable pull consumer per projection, explicit ack as the
//! checkpoint, poison events parked on the dead-letter stream, rebuilds and time travel.
//!
//! [`JetStreamProjectionRunner::spawn`] runs any [`Projection`](cqrs_core::Projection) (read models, reactors, process
//! managers) live:
//!
//! - **Consumers.** One durable pull consumer per partition of the events stream (see
//!   [`crate::subject`]), named `<projection>_p<k>` ([`consumer_name`]; projection names are 1
//!   to 64 characters of `[A-Za-z0-9_-]`), filtered on `<context>.events.<k>.>`, explicit ack,
//!   deliver policy "all" for a new consumer (a new projection starts from history; see
//!   [`StartFrom`]). Aggregate types and tenants of the projection's [`EventFilter`](cqrs_core::EventFilter) narrow the
//!   filter subjects; the rest of the filter (event types, time bounds) is applied on the
//!   client, and the events it drops are acked and count as processed.
//! - **Order.** An aggregate's events all lie in one partition. Each partition's messages are
//!   processed one at a time, in delivery order, and acked after the projection handled them:
//!   the server's ack floor is the partition's checkpoint, so a restarted runner resumes after
//!   the last acked event. `max_ack_pending` is 1 by default, so the server never has two
//!   events of a partition in flight: nothing is reordered even when a message is redelivered
//!   (lost ack, crashed worker) or a partition moves to another worker. A larger window
//!   ([`ProjectionConfig::max_in_flight`]) is faster but a failover may then deliver a younger
//!   event of an aggregate before an older one that was in flight on the failed worker.
//!   Partitions run concurrently, so one worker already has up to one event per partition in
//!   flight.
//! - **Several workers.** Every runner of a projection announces itself in the KV bucket
//!   `PROJECTION_WORKERS_<CONTEXT>` ([`workers_bucket`]; [`live_workers`] counts them) every
//!   heartbeat and watches the others (a joining worker takes no partition before it has read
//!   the announcements already there, so it never grabs, and then releases, others' partitions);
//!   partition `k` belongs to the `k mod n`-th of the `n` live workers in start order, so the
//!   work is shared evenly and each partition has one owner. When a worker joins or stops the
//!   partitions are handed over (the old owner finishes the event in hand, stops pulling,
//!   releases the pin, acks); when a worker disappears without stopping, the others take its
//!   partitions after five missed heartbeats and the server moves the pin after the priority
//!   timeout. Runners pull in each consumer's pinned priority group
//!   (`PriorityPolicy::PinnedClient`, nats-server 2.11+), so even two workers that both believe
//!   they own a partition get its events one at a time, through one of them. Pinning is not a
//!   hard exclusivity guarantee, so read-model writes stay fenced by
//!   [`cqrs_core::read_model::apply_once`].
//! - **Failures.** A failing `apply` is retried in-process with the [`RetryPolicy`](cqrs_core::projection::RetryPolicy)'s backoff
//!   ([`cqrs_core::projection::deliver`]); while it runs, the runner sends `+WPI` (progress) so
//!   the server does not redeliver. After `max_attempts` the event is parked on
//!   `<context>.deadletter.<projection>` ([`crate::deadletter`]), acked, and the projection
//!   moves on. A message that is not a readable event (garbage headers, a malformed envelope)
//!   is parked at once, never retried in a loop.
//! - **Rebuild and time travel.** [`JetStreamProjectionRunner::rebuild`] deletes the consumers and
//!   starts again from the first event (into a fresh read model);
//!   [`JetStreamProjectionRunner::reset`] (or [`reset_consumers`], without a store: the CLI's
//!   `replay`) moves the checkpoints of running workers; [`replay`] reads from a
//!   position or a point in time through an ordered consumer, without touching the live
//!   consumer; [`cqrs_core::projection::catch_up`] works on the store too.
//! - **Stopping.** [`JetStreamProjectionHandle::stop`] finishes the event in hand on every
//!   partition, naks what was received but not started, drops the pull request, releases the pin
//!   and only then acks the last event, so the next one goes to a successor at once; then it
//!   withdraws the worker's announcement. A message that is on the wire at that very moment
//!   (the partition was idle when the stop came) is redelivered after the ack wait, 5 s by
//!   default, during which that partition waits.
//! - **Throughput.** With one event in flight per partition every event costs a round trip (ack,
//!   then the next delivery), and the partitions overlap those round trips: about 0.3-0.4x a bare
//!   ordered-consumer read on loopback with 8 partitions (`examples/replay_bench.rs`), against
//!   about 0.9x with `max_in_flight(256)`. More workers add the CPU of more processes, not more
//!   events in flight. For a large history, replay it with [`replay`] (an ordered consumer, as fast
//!   as a bare read) into a fresh read model, then start the live runner on a new consumer at
//!   [`StartFrom::Position`] (the replay's checkpoint + 1).
//!
//! Layout: `config` (where a projection starts, how it runs), `names` (consumer and bucket names,
//! filter subjects), `runner` (starting: consumers, membership, supervisor), `membership` (the
//! workers' heartbeats and watch) and `assignment` (the pure rule that turns what the watch showed
//! into owned partitions), `supervisor` (lanes per owned partition, handovers), `lane` (one
//! partition's pull-handle-ack loop, retries, parking), `handle` (read-your-writes, lag, dead letters,
//! stop), `lag` (how far behind), `admin` (rebuild, reset, live workers) and `replay` (time travel).

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

pub use admin::{live_workers, reset_checkpoints};
pub use checkpoint::{Checkpoint, checkpoints_bucket, read_checkpoints};
pub use config::{ProjectionConfig, StartFrom};
pub use handle::JetStreamProjectionHandle;
pub use lag::Lag;
pub use names::{filter_subjects, filter_subjects_in, workers_bucket};
pub use replay::{ReplayFrom, replay};
pub use runner::JetStreamProjectionRunner;

const OP: &str = "projection";

fn unavailable(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        operation: OP,
        reason: reason.to_string(),
    }
}

/// The context's events stream and subjects.
async fn context_subjects(
    store: &JetStreamEventStore,
) -> Result<(stream::Stream, Subjects), StoreError> {
    let stream = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .map_err(unavailable)?;
    Ok((stream, store.subjects().clone()))
}
