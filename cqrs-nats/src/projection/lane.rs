//! One partition's loop: take the partition's checkpoint, read on from it in order (see
//! [`open_reader`]), hand the projection batches of what is at hand, commit the checkpoint;
//! park what fails; release the partition when handing it over.

use crate::headers;
use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use cqrs_core::metrics::{
    PROJECTION_EVENTS, PROJECTION_HANDLER_DURATION, PROJECTION_LAG, PROJECTION_PARKED,
    PROJECTION_READER_RESTARTS,
};
use cqrs_core::projection::deliver_batch;
use cqrs_core::{Projection, RecordedEvent, StoreError};
use futures::{FutureExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

use crate::gaps::{Gap, Watch};

use super::checkpoint::Checkpoint;
use super::names::{filter_subjects_in, split_filters};
use super::runner::Shared;
use super::{unavailable, unavailable_because};

/// One partition's loop. Returns when asked to stop (after releasing the partition), when the
/// partition's checkpoint moved under it (another worker took it, or an operator reset it), or
/// when this worker's lease lapsed; the supervisor starts it again while the partition is this
/// worker's.
pub(super) async fn run<P: Projection>(
    shared: std::sync::Arc<Shared<P>>,
    partition: u32,
    mut stop: watch::Receiver<bool>,
) {
    let filter = filter_subjects_in(&shared.subjects, &shared.filter, Some(partition));
    let Some(mut owned) = take(&shared, partition, filter, &mut stop).await else {
        return;
    };
    shared.progress.record(partition, owned.committed.position);
    let mut failures = 0u32;
    let mut handled = owned.handled;
    loop {
        match read(&shared, &mut owned, &mut stop).await {
            Ended::Stopped => {
                owned.release(&shared).await;
                return;
            }
            Ended::Lost => return,
            Ended::Failed(error) => {
                // The backoff grows only while the partition makes no progress.
                if owned.handled > handled {
                    (failures, handled) = (0, owned.handled);
                }
                failures += 1;
                tracing::warn!(projection = %shared.name, partition, error = %cqrs_core::error::report(&error), "reading the partition failed; reading on from the last handled event");
                if pause(&mut stop, failures).await {
                    owned.release(&shared).await;
                    return;
                }
            }
        }
    }
}

/// Why reading a partition ended.
enum Ended {
    /// Asked to stop: release the partition.
    Stopped,
    /// The partition is no longer this lane's (or its lease lapsed): leave without a write.
    Lost,
    /// The consumer failed: read again from the last handled event.
    Failed(StoreError),
}

/// A partition this lane owns: its checkpoint as committed (at `revision`) and how far it has
/// handled events since.
struct Owned {
    partition: u32,
    revision: u64,
    committed: Checkpoint,
    handled: u64,
    last_commit: Instant,
    /// The last write failed (at `last_commit`): the next is tried a commit interval later.
    failing: bool,
}

impl Owned {
    /// Commits the handled position if it moved: false once the checkpoint is no longer this
    /// lane's. A failed write is retried at the next commit.
    async fn commit<P>(&mut self, shared: &Shared<P>) -> bool {
        if self.handled == self.committed.position
            || (self.failing && self.last_commit.elapsed() < shared.config.commit_interval)
        {
            return true;
        }
        let next = Checkpoint {
            position: self.handled,
            ..self.committed.clone()
        };
        self.write(shared, next).await.unwrap_or(true)
    }

    /// Writes `next` over the revision this lane holds: `Some(false)` when that revision moved,
    /// `None` when the write failed.
    async fn write<P>(&mut self, shared: &Shared<P>, next: Checkpoint) -> Option<bool> {
        match shared
            .checkpoints
            .write(self.partition, &next, self.revision)
            .await
        {
            Ok(Some(revision)) => {
                self.revision = revision;
                self.committed = next;
                self.last_commit = Instant::now();
                self.failing = false;
                Some(true)
            }
            Ok(None) => {
                tracing::info!(projection = %shared.name, partition = self.partition, "the checkpoint moved: another worker took the partition, or it was reset");
                Some(false)
            }
            Err(error) => {
                // Tried again after the commit interval, not after every batch or idle
                // moment: while the bucket elects a leader each attempt fails at once.
                self.last_commit = Instant::now();
                self.failing = true;
                tracing::warn!(projection = %shared.name, partition = self.partition, %error, "cannot commit the checkpoint; retrying");
                None
            }
        }
    }

    /// Commits the handled position with no owner, so that the next owner takes the partition
    /// at once. Retried for a while; if it cannot be written, the next owner takes the
    /// partition once this worker's heartbeats stop.
    async fn release<P>(mut self, shared: &Shared<P>) {
        let next = Checkpoint {
            position: self.handled,
            owner: None,
            filter: self.committed.filter.clone(),
        };
        for failures in 1..=8 {
            if self.write(shared, next.clone()).await.is_some() {
                return;
            }
            tokio::time::sleep(backoff(failures)).await;
        }
    }
}

/// Takes the partition: reads its checkpoint and writes it back with this worker as the
/// owner, which moves its revision so that no earlier owner can commit any more. A partition
/// still owned by another live worker is waited for (that worker releases it once it sees this
/// one, or stops counting as live once its heartbeats stop). `None`: stopped meanwhile.
async fn take<P>(
    shared: &Shared<P>,
    partition: u32,
    filter: Vec<String>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Owned> {
    let mut waits = 0u32;
    loop {
        if *stop.borrow() {
            return None;
        }
        if shared.lease.valid() {
            match shared.checkpoints.read(partition).await {
                Ok(read) => {
                    let held = read.checkpoint.as_ref().and_then(|c| {
                        c.owner.as_deref().filter(|owner| {
                            *owner != shared.worker
                                && shared.live.borrow().iter().any(|w| w == owner)
                        })
                    });
                    if held.is_none() {
                        let position = read
                            .checkpoint
                            .as_ref()
                            .map_or(shared.start, |c| c.position);
                        let mine = Checkpoint {
                            position,
                            owner: Some(shared.worker.clone()),
                            filter: filter.clone(),
                        };
                        match shared
                            .checkpoints
                            .write(partition, &mine, read.revision)
                            .await
                        {
                            Ok(Some(revision)) => {
                                tracing::debug!(projection = %shared.name, partition, position, "took the partition");
                                return Some(Owned {
                                    partition,
                                    revision,
                                    committed: mine,
                                    handled: position,
                                    last_commit: Instant::now(),
                                    failing: false,
                                });
                            }
                            // Written by another in between: read it again.
                            Ok(None) => {}
                            Err(error) => {
                                tracing::warn!(projection = %shared.name, partition, %error, "cannot take the partition; retrying");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(projection = %shared.name, partition, %error, "cannot read the checkpoint; retrying");
                }
            }
        }
        waits += 1;
        // Waiting for a release is short; keep polling briskly.
        if pause(stop, waits.min(3)).await {
            return None;
        }
    }
}

/// Reads the partition from the last handled event on, in batches, until stopped, lost or
/// failed.
async fn read<P: Projection>(
    shared: &Shared<P>,
    owned: &mut Owned,
    stop: &mut watch::Receiver<bool>,
) -> Ended {
    let mut messages = match open_reader(shared, owned).await {
        Ok(messages) => messages,
        Err(error) => return Ended::Failed(error),
    };
    // The consumer numbers what it delivers 1, 2, ...: a number skipped is a message lost on
    // the way (a reconnect), so the reader ends and reads on from the last handled event.
    let mut delivered = 0u64;
    // One timer for the reader's idle checks, not one per idle wait: waits are many when the
    // reader keeps up with the head.
    let mut idle = tokio::time::interval_at(tokio::time::Instant::now() + IDLE_CHECK, IDLE_CHECK);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let max = shared.config.max_batch;
    let linger = shared.config.batch_linger;
    let mut carried: Option<jetstream::Message> = None;
    let mut batch: Vec<jetstream::Message> = Vec::with_capacity(max);
    loop {
        let first = if let Some(message) = carried.take() {
            message
        } else {
            {
                // Idle: what is handled is committed before waiting.
                if !owned.commit(shared).await {
                    return Ended::Lost;
                }
                match wait_next(shared, owned, &mut messages, &mut idle, stop).await {
                    Ok(Some(message)) => message,
                    Ok(None) => return Ended::Stopped,
                    Err(error) => return Ended::Failed(error),
                }
            }
        };
        if let Err(error) = admit(shared, owned, &first, &mut delivered).await {
            return Ended::Failed(error);
        }
        batch.push(first);
        let mut failed = None;
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            let next = match messages.next().now_or_never() {
                Some(next) => next,
                None if linger.is_zero() => break,
                None => match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            match yielded(next) {
                Ok(message) => match in_order(&message, &mut delivered) {
                    Ok(_) => batch.push(message),
                    Err(error) => {
                        failed = Some(error);
                        break;
                    }
                },
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
        }
        // The fence: nothing is handled once asked to stop, or once the lease lapsed (the
        // others may have taken the partition by now).
        if *stop.borrow() {
            return Ended::Stopped;
        }
        if !shared.lease.valid() {
            tracing::warn!(projection = %shared.name, partition = owned.partition, "the worker's lease lapsed (paused, or cut off from the server); handling nothing until it is renewed");
            return Ended::Lost;
        }
        let done = match handle(shared, owned.partition, &mut batch, stop).await {
            Ok(done) => done,
            Err(ended) => return ended,
        };
        owned.handled = owned.handled.max(done);
        shared.progress.record(owned.partition, done);
        if let Some(error) = failed {
            return Ended::Failed(error);
        }
        if owned.last_commit.elapsed() >= shared.config.commit_interval
            && !owned.commit(shared).await
        {
            return Ended::Lost;
        }
        if let Some(next) = messages.next().now_or_never() {
            match yielded(next) {
                Ok(message) => carried = Some(message),
                Err(error) => return Ended::Failed(error),
            }
        }
    }
}

/// How long a reader may deliver nothing before the leader is asked whether it holds events
/// for it (checked on the ticks of the reader's idle timer); doubled (up to `IDLE_CHECK_MAX`)
/// each time the leader holds none.
const IDLE_CHECK: Duration = Duration::from_secs(2);
const IDLE_CHECK_MAX: Duration = Duration::from_secs(32);

/// Waits for the reader's next message while idle (`None`: asked to stop). A reader whose
/// consumer stays silent while the stream's leader holds an event for it is stalled and ends,
/// to read on from the last handled event: the nemesis left readers on a replica that had
/// caught up after a partition silent for good, heartbeats and all, until the next event was
/// written (so at the end of a workload, never).
async fn wait_next<P: Projection>(
    shared: &Shared<P>,
    owned: &Owned,
    messages: &mut pull::Stream,
    idle: &mut tokio::time::Interval,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<jetstream::Message>, StoreError> {
    let since = tokio::time::Instant::now();
    let mut quiet = IDLE_CHECK;
    loop {
        tokio::select! {
            biased;
            () = stopped(stop) => return Ok(None),
            next = messages.next() => return yielded(next).map(Some),
            _ = idle.tick() => {}
        }
        if since.elapsed() < quiet {
            continue;
        }
        let first =
            crate::gaps::first_after(&shared.stream, &owned.committed.filter, owned.handled).await;
        let Ok(Some(first)) = first else {
            // Nothing for it (or the leader cannot tell now): keep waiting, asking less often.
            quiet = (quiet * 2).min(IDLE_CHECK_MAX);
            continue;
        };
        // It may be on its way: one heartbeat's grace.
        tokio::select! {
            biased;
            () = stopped(stop) => return Ok(None),
            next = messages.next() => return yielded(next).map(Some),
            () = tokio::time::sleep(READER_HEARTBEAT) => {}
        }
        ::metrics::counter!(PROJECTION_READER_RESTARTS, "projection" => shared.name.clone(), "reason" => "stalled")
            .increment(1);
        tracing::warn!(projection = %shared.name, partition = owned.partition, handled = owned.handled, first, "the partition's reader stalled: the stream's leader holds an event for it, its consumer delivered nothing; reading again");
        return Err(unavailable(format!(
            "the partition's reader stalled: the stream's leader holds event {first}, its consumer delivered nothing after {} for {} s",
            owned.handled,
            (since.elapsed()).as_secs()
        )));
    }
}

/// The message the reader yielded, or why the reader ends.
fn yielded(
    next: Option<Result<jetstream::Message, pull::MessagesError>>,
) -> Result<jetstream::Message, StoreError> {
    match next {
        Some(Ok(message)) => Ok(message),
        Some(Err(error)) => Err(unavailable_because("reading the partition", error)),
        None => Err(unavailable("the partition's consumer ended")),
    }
}

/// How often the server tells an idle reader that its consumer is alive, and the most a pull
/// request waits.
///
/// Why not async-nats' ordered consumer: it notices a consumer that died with its server (the
/// stream leader's SIGKILL) only after two missed idle heartbeats of 15 s, and during that time
/// the partition stood still (`tests/tests/failover.rs` caught up 22 s after a kill). The
/// reader here is the same ephemeral, unacknowledged, in-memory, one-replica consumer, asks for
/// a heartbeat every `READER_HEARTBEAT`, ends on the second one missed (async-nats' pull stream
/// reports it), on a consumer that is gone, or on a gap in the delivery numbers — and the lane
/// reads on from the last handled event.
const READER_HEARTBEAT: Duration = Duration::from_secs(1);
const READER_EXPIRES: Duration = Duration::from_secs(30);

/// A reader of the partition's events after the last handled one: an ephemeral consumer with a
/// short idle heartbeat, removed by the server 30 s after its reader is gone (as async-nats'
/// ordered consumer is).
async fn open_reader<P: Projection>(
    shared: &Shared<P>,
    owned: &Owned,
) -> Result<pull::Stream, StoreError> {
    let (filter_subject, filter_subjects) = split_filters(owned.committed.filter.clone());
    let start_sequence = owned.handled + 1;
    // Tests make one reader start past events, or one that delivers nothing.
    #[cfg(test)]
    let (start_sequence, filter_subject, filter_subjects) = match tests::take_fault() {
        Some(tests::Fault::StartLate(by)) => (start_sequence + by, filter_subject, filter_subjects),
        Some(tests::Fault::Silent) => (
            start_sequence,
            shared.subjects.guards(Some("silent")),
            Vec::new(),
        ),
        None => (start_sequence, filter_subject, filter_subjects),
    };
    let consumer = shared
        .stream
        .create_consumer(pull::Config {
            filter_subject,
            filter_subjects,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
            ack_policy: AckPolicy::None,
            max_deliver: 1,
            memory_storage: true,
            num_replicas: 1,
            inactive_threshold: READER_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|error| unavailable_because("reading the partition", error))?;
    let host = consumer
        .cached_info()
        .cluster
        .as_ref()
        .and_then(|cluster| cluster.leader.as_deref());
    tracing::debug!(projection = %shared.name, partition = owned.partition, from = owned.handled + 1, host, "reading the partition");
    consumer
        .stream()
        .max_messages_per_batch(READER_BATCH)
        .heartbeat(READER_HEARTBEAT)
        .expires(READER_EXPIRES)
        .messages()
        .await
        .map_err(|error| unavailable_because("reading the partition", error))
}

/// How many messages one pull request asks for (as async-nats' ordered consumer).
const READER_BATCH: usize = 500;

/// Checks that `message` is the one after the `delivered` ones, and counts it. Its position.
fn in_order(message: &jetstream::Message, delivered: &mut u64) -> Result<u64, StoreError> {
    let info = message
        .info()
        .map_err(|e| unavailable_because("reading the partition", e))?;
    let number = info.consumer_sequence;
    if number != *delivered + 1 {
        return Err(unavailable(format!(
            "the partition's consumer delivered message {number} after {delivered}: messages were lost on the way"
        )));
    }
    *delivered = number;
    Ok(info.stream_sequence)
}

/// Admits the first message of a batch: in order ([`in_order`]) and, for a reader's first
/// message, nothing before it that the stream's leader holds (see [`crate::gaps`]): a reader
/// that starts past events is read again from the last handled one. One request per reader;
/// later events come in order from the consumer's server.
async fn admit<P: Projection>(
    shared: &Shared<P>,
    owned: &Owned,
    message: &jetstream::Message,
    delivered: &mut u64,
) -> Result<(), StoreError> {
    let position = in_order(message, delivered)?;
    if *delivered > 1 {
        return Ok(());
    }
    match Watch::after(owned.handled)
        .check(&shared.stream, &owned.committed.filter, position)
        .await
    {
        Ok(Gap::Closed) => Ok(()),
        Ok(Gap::Skipped(first)) => {
            ::metrics::counter!(PROJECTION_READER_RESTARTS, "projection" => shared.name.clone(), "reason" => "started_late")
                .increment(1);
            tracing::warn!(projection = %shared.name, partition = owned.partition, after = owned.handled, first, delivered = position, "the partition's reader started past events the stream's leader holds; reading again from the last handled one");
            Err(unavailable(format!(
                "the partition's reader was handed event {position} first, after {}, but the stream's leader holds event {first} in between",
                owned.handled
            )))
        }
        Err(unchecked) => Err(unavailable(unchecked.to_string())),
    }
}

/// Records a handled batch: its events, the projection's time for it, and the partition's lag.
fn record_batch(
    projection: &str,
    partition: u32,
    events: usize,
    took: std::time::Duration,
    pending: Option<u64>,
) {
    let name = projection.to_owned();
    ::metrics::counter!(PROJECTION_EVENTS, "projection" => name.clone()).increment(events as u64);
    ::metrics::histogram!(PROJECTION_HANDLER_DURATION, "projection" => name.clone())
        .record(took.as_secs_f64());
    if let Some(pending) = pending {
        #[allow(clippy::cast_precision_loss)] // a lag is far below 2^52 events
        ::metrics::gauge!(PROJECTION_LAG, "projection" => name, "partition" => partition.to_string())
            .set(pending as f64);
    }
}

/// Handles a batch (emptied): decodes it, parks what is unreadable, hands the projection the
/// events its filter wants in one [`deliver_batch`], parks what that gives back. The position
/// up to which every event is handled (0 for a batch with nothing in it), or why the lane
/// gave the batch up: stopped while delivering ([`must_give_up`]) or parking, or its lease
/// lapsed while delivering.
async fn handle<P: Projection>(
    shared: &Shared<P>,
    partition: u32,
    batch: &mut Vec<jetstream::Message>,
    stop: &watch::Receiver<bool>,
) -> Result<u64, Ended> {
    let mut stored = Vec::with_capacity(batch.len());
    // What the consumer still holds after this batch: the partition's lag once it is handled.
    let pending = batch
        .last()
        .and_then(|m| m.info().ok())
        .map(|info| info.pending);
    for message in batch.drain(..) {
        match headers::from_consumer(message) {
            Ok(message) => stored.push(message),
            Err(reason) => {
                tracing::warn!(projection = %shared.name, %reason, "ignored");
            }
        }
    }
    let Some(last) = stored.last().map(|m| m.sequence) else {
        // Nothing readable as a JetStream message: nothing moves.
        return Ok(0);
    };
    let first = stored.first().map_or(last, |m| m.sequence);
    let span = tracing::debug_span!(
        "cqrs.nats.project",
        projection = %shared.name,
        partition,
        first_position = first,
        last_position = last,
        events = stored.len(),
    );
    async {
        let mut events: Vec<RecordedEvent> = Vec::with_capacity(stored.len());
        let mut unreadable = Vec::new();
        for message in &stored {
            match headers::decode(&shared.subjects, message) {
                Ok(event) => {
                    if shared.filter.matches(&event) {
                        events.push(event);
                    }
                }
                Err(error) => {
                    tracing::warn!(position = message.sequence, %error, "unreadable message; parking it");
                    unreadable.push((message, error.to_string(), 1));
                }
            }
        }
        let batch_span = tracing::Span::current();
        for event in &events {
            cqrs_core::trace::link(&batch_span, event.metadata.trace.as_deref());
        }
        let started = std::time::Instant::now();
        // A delivery may wait out a transient failure for minutes (the projection's
        // `RetryPolicy`): the lane gives it up rather than hold a partition it no longer owns
        // or a stop (the events are delivered again from the checkpoint).
        let parked = tokio::select! {
            parked = deliver_batch(&shared.projection, &events, &shared.config.retry) => parked,
            ended = must_give_up(shared, stop) => return Err(ended),
        };
        record_batch(&shared.name, partition, events.len(), started.elapsed(), pending);
        let mut to_park = unreadable;
        for event in &parked {
            if let Some(message) = stored.iter().find(|m| m.sequence == event.event.position) {
                to_park.push((message, event.error.clone(), event.attempts));
            }
        }
        let mut done = last;
        if !to_park.is_empty() {
            ::metrics::counter!(PROJECTION_PARKED, "projection" => shared.name.clone())
                .increment(to_park.len() as u64);
        }
        for (message, error, attempts) in to_park {
            if !park(shared, message, &error, attempts, stop).await {
                // Stopping before it is parked: it is handled again from the checkpoint.
                done = done.min(message.sequence.saturating_sub(1));
            }
        }
        Ok(done)
    }
    .instrument(span)
    .await
}

/// How many heartbeats a stopped lane waits for the batch it is delivering (a stop, or a
/// hand-over of the partition): time to finish a slow batch, not to wait out the retries of a
/// transient failure.
const STOP_GRACE_HEARTBEATS: u32 = 5;

/// Resolves when a lane must give up the batch it is delivering: once the worker's lease has
/// lapsed (checked four times a heartbeat; the other workers take the partition only a
/// heartbeat after that), or [`STOP_GRACE_HEARTBEATS`] after being asked to stop.
async fn must_give_up<P>(shared: &Shared<P>, stop: &watch::Receiver<bool>) -> Ended {
    let heartbeat = shared.config.heartbeat;
    let grace = heartbeat.saturating_mul(STOP_GRACE_HEARTBEATS);
    let tick = (heartbeat / 4).max(Duration::from_millis(10));
    let mut stopping_since = None;
    loop {
        tokio::time::sleep(tick).await;
        if !shared.lease.valid() {
            tracing::warn!(projection = %shared.name, "the worker's lease lapsed while delivering; giving the batch up to be delivered again from the checkpoint");
            return Ended::Lost;
        }
        if *stop.borrow() && stopping_since.get_or_insert_with(Instant::now).elapsed() >= grace {
            tracing::info!(projection = %shared.name, "stopped while delivering; the batch is delivered again from the checkpoint");
            return Ended::Stopped;
        }
    }
}

/// Publishes the message to the dead-letter stream, retrying until it is stored (true) or the
/// runner is stopped (false).
async fn park<P: Projection>(
    shared: &Shared<P>,
    stored: &StreamMessage,
    error: &str,
    attempts: u32,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut failures = 0;
    loop {
        match shared
            .dead_letters
            .park(&shared.name, stored, error, attempts)
            .await
        {
            Ok(_) => {
                tracing::warn!(position = stored.sequence, %error, attempts, "parked on the dead-letter stream");
                return true;
            }
            Err(park_error) => {
                failures += 1;
                tracing::error!(%park_error, failures, "cannot park the event; retrying");
                let mut stop = stop.clone();
                if pause(&mut stop, failures).await {
                    return false;
                }
            }
        }
    }
}

/// Resolves once the runner is asked to stop.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _stopped = stop.wait_for(|s| *s).await;
}

/// The wait after `failures` failures: 100 ms, doubling, at most 2 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(failures.min(6)))
        .min(Duration::from_secs(2))
}

/// Sleeps a backoff after `failures` failures; true when asked to stop meanwhile.
pub(super) async fn pause(stop: &mut watch::Receiver<bool>, failures: u32) -> bool {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(backoff(failures)) => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::{JetStreamEventStore, JetStreamProjectionRunner, ProjectionConfig, StoreConfig};
    use cqrs_core::{
        EventStore, ExpectedVersion, HandlerError, Metadata, NewEvent, Projection, RecordedEvent,
        SerializedEvent, StreamId,
    };
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    /// A fault for the next reader opened (once): `n` events late, or `u64::MAX` for a reader
    /// whose consumer delivers nothing.
    static FAULT: AtomicU64 = AtomicU64::new(0);

    /// What is wrong with a reader a test opens.
    pub(super) enum Fault {
        /// It starts this many events past the last handled one.
        StartLate(u64),
        /// Its consumer delivers nothing (filtered on a subject no event is on).
        Silent,
    }

    pub(super) fn take_fault() -> Option<Fault> {
        match FAULT.swap(0, Ordering::SeqCst) {
            0 => None,
            u64::MAX => Some(Fault::Silent),
            by => Some(Fault::StartLate(by)),
        }
    }

    /// Records the positions it is handed.
    struct Positions(Arc<Mutex<Vec<u64>>>);

    impl Projection for Positions {
        fn name(&self) -> &'static str {
            "positions"
        }

        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(event.position);
            Ok(())
        }
    }

    /// A runner of [`Positions`] over five stored events, its first reader opened with `fault`:
    /// the positions it handled once `wait_for(5)` returned.
    async fn five_events_read_by_a_reader_with(fault: u64, context: &str) -> Vec<u64> {
        let server = cqrs_test_server::NatsServer::start()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store =
            JetStreamEventStore::connect(server.url(), StoreConfig::new(context).partitions(1))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        let events = (0..5)
            .map(|_| {
                NewEvent::new(
                    cqrs_core::metadata::new_id(),
                    SerializedEvent {
                        event_type: "Added".to_owned(),
                        schema_version: 1,
                        data: b"{}".to_vec(),
                    },
                    Metadata::standalone(),
                )
            })
            .collect();
        store
            .append(
                &StreamId::new("Counter", "c1"),
                ExpectedVersion::NoStream,
                events,
                None,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        FAULT.store(fault, Ordering::SeqCst);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runner = JetStreamProjectionRunner::spawn(
            &store,
            Positions(Arc::clone(&seen)),
            ProjectionConfig::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        runner
            .wait_for(5, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            FAULT.load(Ordering::SeqCst),
            0,
            "the faulty reader was opened"
        );
        runner.stop().await.unwrap_or_else(|e| panic!("{e}"));
        seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    // One test, so that the two faults never meet in one reader.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_the_leader_disagrees_with_is_made_again() {
        assert_eq!(
            five_events_read_by_a_reader_with(2, "late").await,
            [1, 2, 3, 4, 5],
            "a reader that starts past events is caught before anything after them is handled"
        );
        assert_eq!(
            five_events_read_by_a_reader_with(u64::MAX, "silent").await,
            [1, 2, 3, 4, 5],
            "a reader that stays silent while the leader holds events is made again"
        );
    }
}
