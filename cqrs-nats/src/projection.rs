//! Projections on JetStream: one durable pull consumer per projection, explicit ack as the
//! checkpoint, poison events parked on the dead-letter stream, rebuilds and time travel.
//!
//! [`JetStreamProjectionRunner::spawn`] runs any [`Projection`] (read models, reactors, process
//! managers) live:
//!
//! - **Consumer.** A durable pull consumer named after the projection (1 to 64 characters of
//!   `[A-Za-z0-9_-]`) on the context's events stream, explicit ack, deliver policy "all" for a
//!   new consumer (a new projection starts from history; see [`StartFrom`]). Aggregate types and
//!   tenants of the projection's [`EventFilter`] become filter subjects; the rest of the filter
//!   (event types, time bounds) is applied on the client, and the events it drops are acked and
//!   count as processed.
//! - **Order.** Messages are processed one at a time, in delivery order, and acked after the
//!   projection handled them: the server's ack floor is the checkpoint, so a restarted runner
//!   resumes after the last acked event. `max_ack_pending` is 1 by default, so the server never
//!   has two events of the projection in flight: nothing is reordered even when a message is
//!   redelivered (lost ack, crashed worker). A larger window
//!   ([`ProjectionConfig::max_in_flight`]) is faster but a failover may then deliver a younger
//!   event of an aggregate before an older one that was in flight on the failed worker.
//! - **Several workers.** Every runner of a projection pulls in the consumer's pinned priority
//!   group (`PriorityPolicy::PinnedClient`, nats-server 2.11+): the server delivers to one
//!   pinned runner at a time and moves the pin to a standby runner when the pinned one stops
//!   pulling for `priority_timeout` (or stops gracefully, which unpins at once). That is
//!   failover, not scale-out: throughput is one runner's (see `docs/partitioned-projections.md`
//!   for the partitioned step). Pinning is not a hard exclusivity guarantee, so read-model
//!   writes stay fenced by [`cqrs_core::read_model::apply_once`].
//! - **Failures.** A failing `apply` is retried in-process with the [`RetryPolicy`]'s backoff
//!   ([`cqrs_core::projection::deliver`]); while it runs, the runner sends `+WPI` (progress) so
//!   the server does not redeliver. After `max_attempts` the event is parked on
//!   `<context>.deadletter.<projection>` ([`crate::deadletter`]), acked, and the projection
//!   moves on. A message that is not a readable event (garbage headers, a malformed envelope)
//!   is parked at once, never retried in a loop.
//! - **Rebuild and time travel.** [`JetStreamProjectionRunner::rebuild`] deletes the consumer and
//!   starts again from the first event (into a fresh read model); [`replay`] reads from a
//!   position or a point in time through an ordered consumer, without touching the live
//!   consumer; [`cqrs_core::projection::catch_up`] works on the store too.
//! - **Stopping.** [`JetStreamProjectionHandle::stop`] finishes the event in hand, naks what was
//!   received but not started, drops the pull request, releases the pin and only then acks the
//!   last event, so the next one goes to a standby or successor at once. A message that is on
//!   the wire at that very moment is redelivered after the ack wait.
//! - **Throughput.** With one event in flight every event costs a round trip (ack, then the
//!   next delivery): about 10k events/s on loopback (`examples/replay_bench.rs`);
//!   `max_in_flight(256)` is several times faster. For a large history, replay it with [`replay`]
//!   (an ordered consumer, close to a bare read) into a fresh read model, then start the live
//!   runner on a new consumer at [`StartFrom::Position`] (the replay's checkpoint + 1).

use crate::deadletter::{DeadLetter, DeadLetters};
use crate::headers;
use crate::store::JetStreamEventStore;
use crate::subject::{Subjects, validate_name};
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, PriorityPolicy, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, AckKind, stream};
use cqrs_core::projection::{CatchUp, ParkedEvent, RetryPolicy, WaitTimeout, deliver};
use cqrs_core::{EventFilter, Projection, RecordedEvent, StoreError};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

const OP: &str = "projection";

fn unavailable(reason: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable {
        operation: OP,
        reason: reason.to_string(),
    }
}

/// Where a projection's new consumer starts. An existing consumer keeps its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// From the first event: a new projection built from history.
    #[default]
    Beginning,
    /// From this stream position (inclusive).
    Position(u64),
    /// From the first event stored at or after this time.
    Time(OffsetDateTime),
    /// Only events appended after the consumer is created.
    New,
}

impl StartFrom {
    fn deliver_policy(self) -> DeliverPolicy {
        match self {
            Self::Beginning | Self::Position(0) => DeliverPolicy::All,
            Self::Position(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
            Self::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
            Self::New => DeliverPolicy::New,
        }
    }
}

/// Settings of a JetStream projection runner.
#[derive(Debug, Clone)]
pub struct ProjectionConfig {
    retry: RetryPolicy,
    ack_wait: Duration,
    max_in_flight: usize,
    pinned: bool,
    group: String,
    priority_timeout: Duration,
    pull_expiry: Duration,
    start: StartFrom,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            ack_wait: Duration::from_secs(30),
            max_in_flight: 1,
            pinned: true,
            group: "cqrs".to_owned(),
            priority_timeout: Duration::from_secs(60),
            pull_expiry: Duration::from_secs(10),
            start: StartFrom::Beginning,
        }
    }
}

impl ProjectionConfig {
    /// Defaults: [`RetryPolicy::default`], 30 s ack wait, one event in flight, pinned group
    /// `cqrs` with a 60 s priority timeout, pulls expiring after 10 s, new consumers from the
    /// beginning.
    pub fn new() -> Self {
        Self::default()
    }

    /// How failing events are retried before they are parked.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long the server waits for an ack before redelivering (progress is sent while a
    /// handler runs, so a slow handler is not redelivered).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_millis(100));
        self
    }

    /// The consumer's `max_ack_pending`: events delivered ahead of the acked one. 1 (the
    /// default) keeps per-aggregate order through redeliveries and failovers; more is faster but
    /// a failover can reorder an aggregate's events.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Whether runners pull in a pinned priority group (one active runner per projection,
    /// failover to standbys; the default), or as plain pullers of the durable consumer.
    pub fn pinned(mut self, pinned: bool) -> Self {
        self.pinned = pinned;
        self
    }

    /// How long the pinned runner may go without pulling before the server pins a standby
    /// (the failover time after a crash). Kept above the pull expiry.
    pub fn priority_timeout(mut self, timeout: Duration) -> Self {
        self.priority_timeout = timeout;
        self
    }

    /// How long one pull request lasts (kept below the priority timeout).
    pub fn pull_expiry(mut self, expiry: Duration) -> Self {
        self.pull_expiry = expiry.max(Duration::from_millis(100));
        self
    }

    /// Where a new consumer starts (an existing one keeps its checkpoint).
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    fn effective_priority_timeout(&self) -> Duration {
        self.priority_timeout
            .max(self.pull_expiry.saturating_mul(2))
            .max(Duration::from_secs(1))
    }
}

/// The context's subjects, recovered from the events stream (`<context>.events.>`).
async fn context_subjects(
    store: &JetStreamEventStore,
) -> Result<(stream::Stream, Subjects), StoreError> {
    let stream = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .map_err(unavailable)?;
    let subjects = stream
        .cached_info()
        .config
        .subjects
        .iter()
        .find_map(|s| s.strip_suffix(".events.>"))
        .map(Subjects::new)
        .ok_or_else(|| unavailable("the events stream has no `<context>.events.>` subject"))?
        .map_err(unavailable)?;
    Ok((stream, subjects))
}

/// Most filter subjects one consumer gets; wider filters filter on the client.
const MAX_FILTER_SUBJECTS: usize = 64;

/// The consumer filter subjects that narrow `filter` on the server (the runner applies the whole
/// filter anyway). Empty: the whole context.
pub fn filter_subjects(subjects: &Subjects, filter: &EventFilter) -> Vec<String> {
    let mut types: Vec<Option<&str>> = filter
        .aggregate_types
        .iter()
        .map(|t| Some(t.as_str()))
        .collect();
    let mut tenants: Vec<Option<Option<&str>>> = filter
        .tenants
        .iter()
        .map(|t| Some(Some(t.as_str())))
        .collect();
    types.sort_unstable();
    types.dedup();
    tenants.sort_unstable();
    tenants.dedup();
    if types.is_empty() && tenants.is_empty() {
        return Vec::new();
    }
    if types.is_empty() {
        types.push(None);
    }
    if tenants.is_empty() {
        tenants.push(None);
    }
    if types.len() * tenants.len() > MAX_FILTER_SUBJECTS {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(types.len() * tenants.len());
    for tenant in &tenants {
        for aggregate_type in &types {
            match subjects.filter(*tenant, *aggregate_type) {
                Ok(subject) => out.push(subject),
                // A name no subject can carry: let the client-side filter decide.
                Err(_) => return Vec::new(),
            }
        }
    }
    out
}

fn split_filters(mut filters: Vec<String>) -> (String, Vec<String>) {
    if filters.len() == 1 {
        (filters.pop().unwrap_or_default(), Vec::new())
    } else {
        (String::new(), filters)
    }
}

/// Runs projections on a [`JetStreamEventStore`].
#[derive(Debug)]
pub struct JetStreamProjectionRunner;

struct Shared<P> {
    projection: P,
    filter: EventFilter,
    store: JetStreamEventStore,
    stream: stream::Stream,
    subjects: Subjects,
    dead_letters: DeadLetters,
    config: ProjectionConfig,
    name: String,
}

impl JetStreamProjectionRunner {
    /// Starts `projection` on its durable consumer (created if missing, its configuration
    /// updated otherwise), resuming after the consumer's last acked event.
    pub async fn spawn<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        let name = projection.name().to_owned();
        validate_name("projection", &name).map_err(|e| StoreError::Backend {
            operation: OP,
            source: Box::new(e),
        })?;
        let (stream, subjects) = context_subjects(store).await?;
        let replicas = stream.cached_info().config.num_replicas;
        let dead_letters = DeadLetters::provision(store.jetstream(), &subjects, replicas).await?;
        let (filter_subject, filter_subjects) =
            split_filters(filter_subjects(&subjects, &projection.filter()));
        let mut consumer_config = pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("cqrs projection {name}")),
            deliver_policy: config.start.deliver_policy(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_ack_pending: i64::try_from(config.max_in_flight).unwrap_or(i64::MAX),
            filter_subject,
            filter_subjects,
            ..Default::default()
        };
        if config.pinned {
            consumer_config.priority_policy = PriorityPolicy::PinnedClient;
            consumer_config.priority_groups = vec![config.group.clone()];
            consumer_config.priority_timeout = config.effective_priority_timeout();
        }
        let consumer = match stream.create_consumer(consumer_config.clone()).await {
            Ok(consumer) => consumer,
            // An existing consumer keeps its deliver policy; update the rest.
            Err(create_error) => {
                let existing = stream
                    .consumer_info(&name)
                    .await
                    .map_err(|_| unavailable(&create_error))?;
                consumer_config.deliver_policy = existing.config.deliver_policy;
                stream
                    .create_consumer(consumer_config)
                    .await
                    .map_err(|e| unavailable(format!("{create_error}; then: {e}")))?
            }
        };
        let start = consumer.cached_info().ack_floor.stream_sequence;
        let (checkpoint_tx, checkpoint) = watch::channel(start);
        let (stop_tx, stop_rx) = watch::channel(false);
        let filter = projection.filter();
        let shared = Arc::new(Shared {
            projection,
            filter,
            store: store.clone(),
            stream,
            subjects,
            dead_letters,
            config,
            name,
        });
        let task = tokio::spawn(run(Arc::clone(&shared), consumer, checkpoint_tx, stop_rx));
        Ok(JetStreamProjectionHandle {
            shared,
            checkpoint,
            stop: stop_tx,
            task,
        })
    }

    /// Rebuilds `projection` from the first event: deletes its durable consumer (the old
    /// checkpoint) and spawns it again. Give it a fresh read model; stop the old runners first.
    pub async fn rebuild<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        Self::delete_consumer(store, projection.name()).await?;
        Self::spawn(store, projection, config.start_from(StartFrom::Beginning)).await
    }

    /// Deletes the durable consumer of projection `name` (its checkpoint); absent is fine.
    pub async fn delete_consumer(
        store: &JetStreamEventStore,
        name: &str,
    ) -> Result<(), StoreError> {
        let (stream, _) = context_subjects(store).await?;
        match stream.delete_consumer(name).await {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The dead-letter stream of the store's context.
    pub async fn dead_letters(store: &JetStreamEventStore) -> Result<DeadLetters, StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        DeadLetters::provision(
            store.jetstream(),
            &subjects,
            stream.cached_info().config.num_replicas,
        )
        .await
    }
}

/// Where a [`replay`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// From this stream position (inclusive; 0 and 1 are the beginning).
    Position(u64),
    /// From the first event stored at or after this time.
    Time(OffsetDateTime),
}

/// Time travel without touching the live consumer: replays the events from `from` to the
/// stream's head (as of the call) into `projection` through an ordered consumer, filtered as
/// narrowly as the projection's filter allows. Failing events are retried and then returned as
/// parked (not written to the dead-letter stream); an unreadable message ends the replay with
/// [`StoreError::MalformedEnvelope`].
pub async fn replay<P: Projection + ?Sized>(
    store: &JetStreamEventStore,
    projection: &P,
    from: ReplayFrom,
    policy: &RetryPolicy,
) -> Result<CatchUp, StoreError> {
    let (stream, subjects) = context_subjects(store).await?;
    let head = stream.cached_info().state.last_sequence;
    let filter = projection.filter();
    let (filter_subject, filter_subjects) = split_filters(filter_subjects(&subjects, &filter));
    let deliver_policy = match from {
        ReplayFrom::Position(p) => DeliverPolicy::ByStartSequence {
            start_sequence: p.max(1),
        },
        ReplayFrom::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
    };
    let mut outcome = CatchUp::default();
    if head == 0 {
        return Ok(outcome);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(unavailable)?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(outcome);
    }
    let mut messages = consumer.messages().await.map_err(unavailable)?;
    loop {
        let Some(message) = messages.next().await else {
            return Err(unavailable("the consumer ended before the head"));
        };
        let mut message = message.map_err(unavailable)?;
        let info = message.info().map_err(unavailable)?;
        let (sequence, pending, time) = (info.stream_sequence, info.pending, info.published);
        if sequence > head {
            break;
        }
        let stored = StreamMessage {
            subject: message.message.subject.clone(),
            sequence,
            headers: message.message.headers.take().unwrap_or_default(),
            payload: std::mem::take(&mut message.message.payload),
            time,
        };
        let event = headers::decode(&subjects, &stored)?;
        outcome.checkpoint = sequence;
        if filter.matches(&event) {
            match deliver(projection, &event, policy).await {
                Ok(()) => outcome.applied += 1,
                Err(parked) => outcome.parked.push(parked),
            }
        }
        if pending == 0 || sequence >= head {
            break;
        }
    }
    Ok(outcome)
}

/// Messages one pull request asks for. The server hands out at most `max_ack_pending` at a
/// time, but an outstanding request lets it deliver the next one as soon as an ack arrives.
const PULL_BATCH: usize = 256;

/// The runner's loop: pulls, handles one message at a time, and on stop hands back what it has
/// not started and releases the pin.
async fn run<P: Projection>(
    shared: Arc<Shared<P>>,
    consumer: consumer::Consumer<pull::Config>,
    checkpoint: watch::Sender<u64>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut failures = 0u32;
    'pulling: loop {
        if *stop.borrow() {
            break;
        }
        let mut builder = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(shared.config.pull_expiry)
            .heartbeat(shared.config.pull_expiry / 2);
        if shared.config.pinned {
            builder = builder.group(shared.config.group.clone());
        }
        let mut messages = match builder.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                failures += 1;
                tracing::warn!(projection = %shared.name, %error, "cannot pull; retrying");
                if pause(&mut stop, failures).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut stop) => None,
                next = messages.next() => Some(next),
            };
            let Some(next) = next else {
                release(&shared, messages, None, &checkpoint).await;
                return Ok(());
            };
            match next {
                Some(Ok(message)) => {
                    failures = 0;
                    let done = handle(&shared, message, &stop).await;
                    if *stop.borrow() {
                        release(&shared, messages, done, &checkpoint).await;
                        return Ok(());
                    }
                    if let Some(done) = done {
                        done.ack(&checkpoint).await;
                    }
                }
                Some(Err(error)) if error.kind() == pull::MessagesErrorKind::ConsumerDeleted => {
                    tracing::warn!(projection = %shared.name, "the consumer was deleted; stopping");
                    return Err(unavailable(format!(
                        "the consumer of projection `{}` was deleted",
                        shared.name
                    )));
                }
                Some(Err(error)) => {
                    failures += 1;
                    tracing::warn!(projection = %shared.name, %error, "pull failed; pulling again");
                    if pause(&mut stop, failures).await {
                        break 'pulling;
                    }
                    continue 'pulling;
                }
                None => {
                    failures += 1;
                    if pause(&mut stop, failures).await {
                        break 'pulling;
                    }
                    continue 'pulling;
                }
            }
        }
    }
    // Stopped between pull streams.
    unpin(&shared).await;
    Ok(())
}

/// Hands the pin to a standby at once instead of after the priority timeout.
async fn unpin<P>(shared: &Shared<P>) {
    if shared.config.pinned {
        let _unpinned = shared
            .stream
            .unpin_consumer(&shared.name, &shared.config.group)
            .await;
    }
}

/// A handled message, still to be acked.
struct Done {
    message: jetstream::Message,
    sequence: u64,
}

impl Done {
    /// Acks it (the checkpoint on the server) and advances the local checkpoint.
    async fn ack(self, checkpoint: &watch::Sender<u64>) {
        if let Err(error) = self.message.ack().await {
            // Redelivered later; `apply_once` absorbs it.
            tracing::warn!(%error, position = self.sequence, "ack failed");
        }
        checkpoint.send_if_modified(|c| {
            let newer = self.sequence > *c;
            if newer {
                *c = self.sequence;
            }
            newer
        });
    }
}

/// Resolves once the runner is asked to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _stopped = stop.wait_for(|s| *s).await;
}

/// Stopping: naks the messages already received but not started, so that the server hands them
/// to the next runner at once instead of after the ack wait; drops the pull stream (its inbox
/// goes away) and releases the pin; only then acks the last handled event, so that the server
/// delivers the next one to another runner rather than to the pull request of this one.
async fn release<P>(
    shared: &Shared<P>,
    mut messages: pull::Stream,
    last: Option<Done>,
    checkpoint: &watch::Sender<u64>,
) {
    use futures::FutureExt;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%error, "nak failed");
        }
    }
    drop(messages);
    unpin(shared).await;
    if let Some(last) = last {
        last.ack(checkpoint).await;
    }
    // Acks are fire-and-forget publishes: make sure they left before reporting the checkpoint.
    let _flushed = shared.store.client().flush().await;
}

/// Sleeps a backoff after `failures` failures; true when asked to stop meanwhile.
async fn pause(stop: &mut watch::Receiver<bool>, failures: u32) -> bool {
    let backoff = Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(failures.min(6)))
        .min(Duration::from_secs(2));
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(backoff) => false,
    }
}

/// Processes one message: decode, filter, deliver with retries (sending progress), park on
/// failure. Returns it to be acked, unless it could not be parked because the runner stops.
async fn handle<P: Projection>(
    shared: &Shared<P>,
    mut message: jetstream::Message,
    stop: &watch::Receiver<bool>,
) -> Option<Done> {
    let (sequence, delivered, time) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered, info.published),
        Err(error) => {
            tracing::warn!(projection = %shared.name, %error, "a message without JetStream metadata; ignored");
            return None;
        }
    };
    let stored = StreamMessage {
        subject: message.message.subject.clone(),
        sequence,
        headers: message.message.headers.take().unwrap_or_default(),
        payload: message.message.payload.clone(),
        time,
    };
    let span = tracing::debug_span!(
        "cqrs.nats.project",
        projection = %shared.name,
        position = sequence,
        delivered,
        aggregate_type = tracing::field::Empty,
        aggregate_id = tracing::field::Empty,
        version = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    );
    let handled = async {
        match headers::decode(&shared.subjects, &stored) {
            Err(error) => {
                tracing::warn!(%error, "unreadable message; parking it");
                park(shared, &message, &stored, &error.to_string(), 1, stop).await
            }
            Ok(event) => {
                let span = tracing::Span::current();
                span.record("aggregate_type", event.aggregate_type.as_str());
                span.record("aggregate_id", event.aggregate_id.as_str());
                span.record("version", event.version);
                span.record(
                    "correlation_id",
                    tracing::field::display(event.metadata.correlation_id),
                );
                if shared.filter.matches(&event)
                    && let Err(parked) = deliver_with_progress(shared, &message, &event).await
                {
                    park(
                        shared,
                        &message,
                        &stored,
                        &parked.error,
                        parked.attempts,
                        stop,
                    )
                    .await
                } else {
                    true
                }
            }
        }
    }
    .instrument(span)
    .await;
    handled.then_some(Done { message, sequence })
}

/// [`deliver`] while telling the server every third of the ack wait that the event is still
/// being worked on.
async fn deliver_with_progress<P: Projection>(
    shared: &Shared<P>,
    message: &jetstream::Message,
    event: &RecordedEvent,
) -> Result<(), ParkedEvent> {
    let delivery = deliver(&shared.projection, event, &shared.config.retry);
    tokio::pin!(delivery);
    let period = shared.config.ack_wait / 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            outcome = &mut delivery => return outcome,
            _ = ticker.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "progress ack failed");
                }
            }
        }
    }
}

/// Publishes the message to the dead-letter stream, retrying (with progress acks) until it is
/// stored (true) or the runner is stopped (false): the original is acked only once parked.
async fn park<P: Projection>(
    shared: &Shared<P>,
    message: &jetstream::Message,
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
                tracing::warn!(%error, attempts, "parked on the dead-letter stream");
                return true;
            }
            Err(park_error) => {
                failures += 1;
                tracing::error!(%park_error, failures, "cannot park the event; retrying");
                let _progress = message.ack_with(AckKind::Progress).await;
                let mut stop = stop.clone();
                if pause(&mut stop, failures).await {
                    // Stopping: leave it unacked so that it is delivered again.
                    return false;
                }
            }
        }
    }
}

/// Control of a projection running on JetStream. Mirrors
/// [`cqrs_core::projection::ProjectionHandle`]. Dropping the handle stops the runner as
/// [`Self::stop`] does, in the background.
#[derive(Debug)]
pub struct JetStreamProjectionHandle<P> {
    shared: Arc<Shared<P>>,
    checkpoint: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), StoreError>>,
}

impl<P> std::fmt::Debug for Shared<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<P: Projection> JetStreamProjectionHandle<P> {
    /// The projection.
    pub fn projection(&self) -> &P {
        &self.shared.projection
    }

    /// The stream position of the last event this runner processed (applied, parked or filtered
    /// out), or the consumer's ack floor when it started.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Read-your-writes: waits until the projection has processed `position` (e.g. the position
    /// of the last event a command committed), or `timeout` passes. Works on every runner of the
    /// projection, pinned or standby: besides this runner's checkpoint it asks the server, where
    /// an ack floor at or beyond `position`, or nothing pending and nothing unacked (a filtered
    /// consumer never sees positions outside its filter), means done.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checkpoint = self.checkpoint.clone();
        loop {
            if *checkpoint.borrow_and_update() >= position {
                return Ok(());
            }
            if let Ok(info) = self.shared.stream.consumer_info(&self.shared.name).await
                && (info.ack_floor.stream_sequence >= position
                    || (info.num_pending == 0
                        && info.num_ack_pending == 0
                        && self.stream_has(position).await))
            {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(WaitTimeout {
                    projection: self.shared.name.clone(),
                    wanted: position,
                    reached: self.checkpoint(),
                    timeout,
                });
            }
            let nap = (deadline - now).min(Duration::from_millis(20));
            let _changed = tokio::time::timeout(nap, checkpoint.changed()).await;
        }
    }

    /// Whether the events stream holds `position` already (so "nothing pending" covers it).
    async fn stream_has(&self, position: u64) -> bool {
        let mut stream = self.shared.stream.clone();
        stream
            .info()
            .await
            .is_ok_and(|info| info.state.last_sequence >= position)
    }

    /// The events parked by this projection (on the dead-letter stream, so those of every
    /// runner and earlier runs), oldest first. Unreadable messages are left out: see
    /// [`Self::dead_letters`].
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, StoreError> {
        Ok(self
            .dead_letters()
            .await?
            .iter()
            .filter_map(DeadLetter::parked_event)
            .collect())
    }

    /// Every message parked by this projection, readable or not.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.shared.dead_letters.list(&self.shared.name).await
    }

    /// Delivers the parked events again (after a fix); those that now succeed are removed from
    /// the dead-letter stream. Returns how many succeeded.
    pub async fn replay_parked(&self) -> Result<usize, StoreError> {
        let mut succeeded = 0;
        for letter in self.dead_letters().await? {
            let Ok(event) = &letter.event else {
                continue;
            };
            if deliver(&self.shared.projection, event, &self.shared.config.retry)
                .await
                .is_ok()
            {
                self.shared.dead_letters.remove(letter.sequence).await?;
                succeeded += 1;
            }
        }
        Ok(succeeded)
    }

    /// Stops gracefully: finishes and acks the current event, stops pulling, releases the pin.
    /// Returns the checkpoint. An error means the runner had stopped on its own before (e.g. its
    /// consumer was deleted).
    pub async fn stop(self) -> Result<u64, StoreError> {
        self.stop.send_replace(true);
        let outcome = self
            .task
            .await
            .map_err(|e| unavailable(format!("the runner task failed: {e}")))?;
        outcome.map(|()| *self.checkpoint.borrow())
    }

    /// Stops at once, as a crash would: the event in hand is neither finished nor acked (the
    /// server redelivers it after the ack wait) and the pin stays until the priority timeout
    /// passes. For failover drills and tests; use [`Self::stop`] otherwise.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Whether the runner task has ended (stopped, or failed: see [`Self::stop`]).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
