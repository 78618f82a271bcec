//! Projections on JetStream: one durable pull consumer per projection, explicit ack as the
//! checkpoint, poison events parked on the dead-letter stream, rebuilds and time travel.
//!
//! [`JetStreamProjectionRunner::spawn`] runs any [`Projection`] (read models, reactors, process
//! managers) live:
//!
//! - **Consumers.** One durable pull consumer per partition of the events stream (see
//!   [`crate::subject`]), named `<projection>_p<k>` ([`consumer_name`]; projection names are 1
//!   to 64 characters of `[A-Za-z0-9_-]`), filtered on `<context>.events.<k>.>`, explicit ack,
//!   deliver policy "all" for a new consumer (a new projection starts from history; see
//!   [`StartFrom`]). Aggregate types and tenants of the projection's [`EventFilter`] narrow the
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
//! - **Failures.** A failing `apply` is retried in-process with the [`RetryPolicy`]'s backoff
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

use crate::deadletter::{DeadLetter, DeadLetters};
use crate::headers;
use crate::store::JetStreamEventStore;
use crate::subject::{Subjects, validate_name};
use async_nats::jetstream::consumer::{
    self, AckPolicy, DeliverPolicy, FromConsumer, PriorityPolicy, pull,
};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, AckKind, kv, stream};
use cqrs_core::projection::{CatchUp, ParkedEvent, RetryPolicy, WaitTimeout, deliver};
use cqrs_core::{EventFilter, Projection, RecordedEvent, StoreError};
use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

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
    heartbeat: Duration,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            ack_wait: Duration::from_secs(5),
            max_in_flight: 1,
            pinned: true,
            group: "cqrs".to_owned(),
            priority_timeout: Duration::from_secs(60),
            pull_expiry: Duration::from_secs(10),
            start: StartFrom::Beginning,
            heartbeat: Duration::from_secs(2),
        }
    }
}

impl ProjectionConfig {
    /// Defaults: [`RetryPolicy::default`], 5 s ack wait, one event in flight per partition,
    /// pinned group `cqrs` with a 60 s priority timeout, pulls expiring after 10 s, new consumers
    /// from the beginning, a worker heartbeat every 2 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// How failing events are retried before they are parked.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// How long the server waits for an ack before redelivering (progress is sent every third of
    /// it while a handler runs, so a slow handler is not redelivered). It bounds how long a
    /// partition stalls when a worker crashes holding an event, or when a handover meets an
    /// event already on its way to the worker that let the partition go.
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

    /// How often a worker announces itself to the projection's other workers. A worker whose
    /// announcements stop for five heartbeats is gone and its partitions are shared among the
    /// others (who get them once the server unpins the gone worker after the priority timeout).
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(50));
        self
    }

    fn effective_priority_timeout(&self) -> Duration {
        self.priority_timeout
            .max(self.pull_expiry.saturating_mul(2))
            .max(Duration::from_secs(1))
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

/// Most filter subjects one consumer gets; wider filters filter on the client.
const MAX_FILTER_SUBJECTS: usize = 64;

/// The consumer filter subjects that narrow `filter` on the server (the runner applies the whole
/// filter anyway). Empty: the whole context.
pub fn filter_subjects(subjects: &Subjects, filter: &EventFilter) -> Vec<String> {
    filter_subjects_in(subjects, filter, None)
}

/// [`filter_subjects`] within one partition (`Some`): never empty then, the partition's
/// subjects at the widest.
pub fn filter_subjects_in(
    subjects: &Subjects,
    filter: &EventFilter,
    partition: Option<u32>,
) -> Vec<String> {
    let whole = || {
        partition
            .map(|k| subjects.partition_filter(k))
            .into_iter()
            .collect()
    };
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
        return whole();
    }
    if types.is_empty() {
        types.push(None);
    }
    if tenants.is_empty() {
        tenants.push(None);
    }
    if types.len() * tenants.len() > MAX_FILTER_SUBJECTS {
        return whole();
    }
    let mut out = Vec::with_capacity(types.len() * tenants.len());
    for tenant in &tenants {
        for aggregate_type in &types {
            match subjects.filter_in(partition, *tenant, *aggregate_type) {
                Ok(subject) => out.push(subject),
                // A name no subject can carry: let the client-side filter decide.
                Err(_) => return whole(),
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

/// The durable consumer of `projection` on `partition`: `<projection>_p<partition>`.
pub fn consumer_name(projection: &str, partition: u32) -> String {
    format!("{projection}_p{partition}")
}

/// Consumer metadata key naming the projection a consumer belongs to.
pub const PROJECTION_METADATA: &str = "cqrs.projection";
/// Consumer metadata key naming the partition a consumer reads.
pub const PARTITION_METADATA: &str = "cqrs.partition";

/// The KV bucket where the workers of the context's projections announce themselves:
/// `PROJECTION_WORKERS_<CONTEXT>`.
pub fn workers_bucket(subjects: &Subjects) -> String {
    format!(
        "PROJECTION_WORKERS_{}",
        subjects.context().to_ascii_uppercase()
    )
}

fn is_consumer_not_found(error: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as K;
    match error.kind() {
        K::NotFound => true,
        K::JetStream(js) => js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
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
    progress: Progress,
}

/// What a runner has processed: the highest position overall and per partition.
#[derive(Debug)]
struct Progress {
    highest: watch::Sender<u64>,
    partitions: Vec<AtomicU64>,
}

impl Progress {
    fn record(&self, partition: u32, position: u64) {
        if let Some(p) = self.partitions.get(partition as usize) {
            p.fetch_max(position, Ordering::SeqCst);
        }
        self.highest.send_if_modified(|c| {
            let newer = position > *c;
            if newer {
                *c = position;
            }
            newer
        });
    }

    fn of(&self, partition: u32) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, |p| p.load(Ordering::SeqCst))
    }
}

impl JetStreamProjectionRunner {
    /// Starts `projection`: creates its durable consumers (one per partition of the stream)
    /// if missing, updates their configuration otherwise, joins the projection's workers and
    /// pulls on the partitions this worker is assigned, resuming after each consumer's last
    /// acked event.
    pub async fn spawn<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        // Provisioning awaits many requests: keep callers' futures small.
        Box::pin(Self::start(store, projection, config)).await
    }

    async fn start<P: Projection>(
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
        let filter = projection.filter();
        let mut start = 0;
        let mut consumers = BTreeMap::new();
        for partition in 0..subjects.partitions() {
            let consumer =
                ensure_consumer(&stream, &subjects, &name, partition, &filter, &config).await?;
            start = start.max(consumer.cached_info().ack_floor.stream_sequence);
            consumers.insert(partition, consumer);
        }
        let membership = Membership::join(store, &subjects, &name, &config, replicas).await?;
        let (highest, checkpoint) = watch::channel(start);
        let progress = Progress {
            highest,
            partitions: (0..subjects.partitions())
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            projection,
            filter,
            store: store.clone(),
            stream,
            subjects,
            dead_letters,
            config,
            name,
            progress,
        });
        let task = tokio::spawn(supervise(
            Arc::clone(&shared),
            membership,
            consumers,
            stop_rx,
        ));
        Ok(JetStreamProjectionHandle {
            shared,
            checkpoint,
            stop: stop_tx,
            task,
        })
    }

    /// Rebuilds `projection` from the first event: deletes its durable consumers (the old
    /// checkpoints) and spawns it again. Give it a fresh read model; stop the old runners first.
    pub async fn rebuild<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        Self::delete_consumer(store, projection.name()).await?;
        Self::spawn(store, projection, config.start_from(StartFrom::Beginning)).await
    }

    /// Deletes the durable consumers of projection `name` (its checkpoints); absent is fine.
    pub async fn delete_consumer(
        store: &JetStreamEventStore,
        name: &str,
    ) -> Result<(), StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        for partition in 0..subjects.partitions() {
            match stream
                .delete_consumer(&consumer_name(name, partition))
                .await
            {
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), stream::ConsumerErrorKind::JetStream(js)
                        if js.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    /// Moves the checkpoints of projection `name` to `from`: each of its consumers is recreated
    /// with its current configuration and the new start, and running workers carry on from
    /// there. Read models that apply events once per position (`apply_once`) skip what they
    /// hold already, so clear them first to rebuild. Returns the number of consumers reset
    /// (0: the projection has never run). [`reset_consumers`] does the same without a store.
    pub async fn reset(
        store: &JetStreamEventStore,
        name: &str,
        from: StartFrom,
    ) -> Result<usize, StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        reset_on(&stream, &subjects, name, from).await
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

/// Moves the checkpoints of projection `name` in bounded context `context` to `from`, as
/// [`JetStreamProjectionRunner::reset`] does, from a bare JetStream context (the operator CLI's
/// `replay`): each of the projection's consumers is recreated with its current configuration and
/// the new start, and its running workers carry on from there. Works on the context's existing
/// events stream only and creates no stream, bucket or other consumer: a context without a
/// stream is an error. Returns the number of consumers reset (0: the projection has no
/// consumers in this context).
pub async fn reset_consumers(
    js: &jetstream::Context,
    context: &str,
    name: &str,
    from: StartFrom,
) -> Result<usize, StoreError> {
    let (stream, subjects) = existing_stream(js, context).await?;
    reset_on(&stream, &subjects, name, from).await
}

/// The events stream of `context` and its subjects, if the stream exists (never creates it).
async fn existing_stream(
    js: &jetstream::Context,
    context: &str,
) -> Result<(stream::Stream, Subjects), StoreError> {
    let backend = |reason: String| StoreError::Backend {
        operation: OP,
        source: reason.into(),
    };
    let name = crate::StoreConfig::new(context).stream_name();
    let stream = match js.get_stream(&name).await {
        Ok(stream) => stream,
        Err(e) if crate::error::is_stream_not_found(&e) => {
            return Err(backend(format!(
                "context `{context}` has no events stream (no stream {name})"
            )));
        }
        Err(e) => return Err(unavailable(e)),
    };
    let subjects = Subjects::from_stream_config(&stream.cached_info().config).ok_or_else(|| {
        backend(format!(
            "stream {name} is not a partitioned events stream of this library"
        ))
    })?;
    Ok((stream, subjects))
}

/// Recreates the existing consumers of projection `name` on `stream` with start `from`.
async fn reset_on(
    stream: &stream::Stream,
    subjects: &Subjects,
    name: &str,
    from: StartFrom,
) -> Result<usize, StoreError> {
    let mut reset = 0;
    for partition in 0..subjects.partitions() {
        let consumer = consumer_name(name, partition);
        let existing = match stream.consumer_info(&consumer).await {
            Ok(info) => info.config.clone(),
            Err(e) if is_consumer_not_found(&e) => continue,
            Err(e) => return Err(unavailable(e)),
        };
        // The consumer as it is (filters, ack wait, pin group, metadata...), with the new start.
        let mut config = pull::Config::try_from_consumer_config(existing)
            .map_err(|e| unavailable(format!("consumer `{consumer}`: {e}")))?;
        config.deliver_policy = from.deliver_policy();
        stream
            .delete_consumer(&consumer)
            .await
            .map_err(unavailable)?;
        stream.create_consumer(config).await.map_err(unavailable)?;
        reset += 1;
    }
    Ok(reset)
}

/// How long past its time-to-live, by this machine's clock, a heartbeat still counts in
/// [`live_workers`]: room for clock skew between this machine and the server.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// The live workers of the projections of a context, by projection name, as they announce
/// themselves in [`workers_bucket`] (`<projection>.<worker id>`, put every heartbeat): a worker
/// is live while its last heartbeat is within its time-to-live of the newest heartbeat in the
/// bucket (both times are the server's), and not older than its time-to-live plus a minute by
/// this machine's clock (so that the announcements of workers that all crashed a while ago do
/// not count). Projections without live workers are absent; no bucket (no projection has run
/// in this context) is an empty map. Only reads.
pub async fn live_workers(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<BTreeMap<String, usize>, StoreError> {
    let bucket = workers_bucket(subjects);
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e) if crate::error::is_stream_not_found(&e) => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(unavailable(e)),
    }
    let kv = js.get_key_value(&bucket).await.map_err(unavailable)?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)?;
    let default_ttl = ProjectionConfig::default()
        .heartbeat
        .saturating_mul(MISSED_HEARTBEATS);
    let mut beats = Vec::with_capacity(keys.len());
    for key in keys {
        let Some((projection, _worker)) = key.split_once('.') else {
            continue;
        };
        let Some(entry) = kv.entry(key.as_str()).await.map_err(unavailable)? else {
            continue;
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let ttl = Heartbeat::ttl(&entry.value, default_ttl);
        beats.push((projection.to_owned(), entry.created, ttl));
    }
    let mut live = BTreeMap::new();
    let Some(newest) = beats.iter().map(|(_, at, _)| *at).max() else {
        return Ok(live);
    };
    let now = OffsetDateTime::now_utc();
    for (projection, at, ttl) in beats {
        if newest - at <= ttl && now - at <= ttl.saturating_add(CLOCK_SLACK) {
            *live.entry(projection).or_insert(0) += 1;
        }
    }
    Ok(live)
}

/// Creates the durable consumer of `name` on `partition`, or updates its configuration (an
/// existing consumer keeps its deliver policy and checkpoint).
async fn ensure_consumer(
    stream: &stream::Stream,
    subjects: &Subjects,
    name: &str,
    partition: u32,
    filter: &EventFilter,
    config: &ProjectionConfig,
) -> Result<consumer::Consumer<pull::Config>, StoreError> {
    let consumer = consumer_name(name, partition);
    let (filter_subject, filter_subjects) =
        split_filters(filter_subjects_in(subjects, filter, Some(partition)));
    let mut consumer_config = pull::Config {
        durable_name: Some(consumer.clone()),
        description: Some(format!(
            "cqrs projection {name}, partition {partition} of {}",
            subjects.partitions()
        )),
        deliver_policy: config.start.deliver_policy(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_ack_pending: i64::try_from(config.max_in_flight).unwrap_or(i64::MAX),
        filter_subject,
        filter_subjects,
        metadata: [
            (PROJECTION_METADATA.to_owned(), name.to_owned()),
            (PARTITION_METADATA.to_owned(), partition.to_string()),
        ]
        .into(),
        ..Default::default()
    };
    if config.pinned {
        consumer_config.priority_policy = PriorityPolicy::PinnedClient;
        consumer_config.priority_groups = vec![config.group.clone()];
        consumer_config.priority_timeout = config.effective_priority_timeout();
    }
    match stream.create_consumer(consumer_config.clone()).await {
        Ok(consumer) => Ok(consumer),
        // An existing consumer keeps its deliver policy; update the rest.
        Err(create_error) => {
            let existing = stream
                .consumer_info(&consumer)
                .await
                .map_err(|_| unavailable(&create_error))?;
            consumer_config.deliver_policy = existing.config.deliver_policy;
            stream
                .create_consumer(consumer_config)
                .await
                .map_err(|e| unavailable(format!("{create_error}; then: {e}")))
        }
    }
}

/// The workers of one projection, as announced in the workers bucket: each worker puts
/// `<projection>.<worker id>` every heartbeat and watches the others'. A worker whose last
/// heartbeat is older than its time-to-live (measured on the server's clock, against this
/// worker's own latest heartbeat) is gone. Partition `k` belongs to the `k mod n`-th of the `n`
/// live workers in id order (ids are UUID v7, so the oldest worker comes first).
struct Membership {
    kv: kv::Store,
    prefix: String,
    me: String,
    ttl: Duration,
    watch: Option<kv::Watch>,
    /// Whether the watch has delivered the announcements that were there when it started.
    /// Until then the other workers are unknown, and an assignment would take their partitions.
    caught_up: bool,
    /// Worker id -> (time of its last heartbeat, its time-to-live).
    members: BTreeMap<String, (OffsetDateTime, Duration)>,
}

/// A heartbeat's value.
#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    ttl_ms: u64,
}

impl Heartbeat {
    /// The value announcing a worker with time-to-live `ttl`.
    fn encode(ttl: Duration) -> Vec<u8> {
        serde_json::to_vec(&Self {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
        .unwrap_or_default()
    }

    /// The time-to-live a heartbeat value announces (`default` for one it cannot read).
    fn ttl(value: &[u8], default: Duration) -> Duration {
        serde_json::from_slice::<Self>(value).map_or(default, |h| Duration::from_millis(h.ttl_ms))
    }
}

/// Heartbeats missed before a worker counts as gone.
const MISSED_HEARTBEATS: u32 = 5;

impl Membership {
    async fn join(
        store: &JetStreamEventStore,
        subjects: &Subjects,
        projection: &str,
        config: &ProjectionConfig,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let bucket = workers_bucket(subjects);
        let js = store.jetstream();
        let kv = crate::bucket::open_or_create(
            js,
            kv::Config {
                bucket: bucket.clone(),
                description: format!(
                    "Workers of the projections of context {}",
                    subjects.context()
                ),
                history: 1,
                // Garbage collection of crashed workers' entries.
                max_age: Duration::from_secs(3600),
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unavailable(format!("bucket {bucket}: {e}")))?;
        let mut membership = Self {
            kv,
            prefix: format!("{projection}."),
            me: Uuid::now_v7().simple().to_string(),
            ttl: config.heartbeat.saturating_mul(MISSED_HEARTBEATS),
            watch: None,
            caught_up: false,
            members: BTreeMap::new(),
        };
        membership.beat().await;
        Ok(membership)
    }

    fn key(&self) -> String {
        format!("{}{}", self.prefix, self.me)
    }

    /// Announces this worker (again); a failure is logged and retried at the next beat.
    async fn beat(&mut self) {
        let value = Heartbeat::encode(self.ttl);
        if let Err(error) = self.kv.put(self.key(), value.into()).await {
            tracing::warn!(%error, "cannot announce the projection worker; retrying");
        }
        if self.watch.is_none() {
            match self
                .kv
                .watch_with_history(format!("{}*", self.prefix))
                .await
            {
                Ok(watch) => {
                    self.members.clear();
                    self.caught_up = false;
                    self.watch = Some(watch);
                }
                Err(error) => tracing::warn!(%error, "cannot watch the projection's workers"),
            }
        }
    }

    /// The next change of membership (pending forever without a watch).
    async fn changed(&mut self) -> Option<Result<kv::Entry, kv::WatcherError>> {
        match self.watch.as_mut() {
            Some(watch) => watch.next().await,
            None => std::future::pending().await,
        }
    }

    fn apply(&mut self, change: Option<Result<kv::Entry, kv::WatcherError>>) {
        match change {
            Some(Ok(entry)) => {
                let Some(worker) = entry.key.strip_prefix(&self.prefix) else {
                    return;
                };
                if entry.operation == kv::Operation::Put {
                    let ttl = Heartbeat::ttl(&entry.value, self.ttl);
                    self.members.insert(worker.to_owned(), (entry.created, ttl));
                } else {
                    self.members.remove(worker);
                }
                // Nothing more pending: the announcements of the time the watch began are in
                // (there is at least one, this worker's own, put before the watch started).
                self.caught_up |= entry.delta == 0;
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "watching the projection's workers failed; watching again");
                self.watch = None;
            }
            None => self.watch = None,
        }
    }

    /// Whether the other workers are known: the watch has caught up, or there is no watch (then
    /// this worker works alone until it can watch again).
    fn settled(&self) -> bool {
        self.caught_up || self.watch.is_none()
    }

    /// The partitions (of `partitions`) this worker owns now.
    fn assignment(&self, partitions: u32) -> Vec<u32> {
        // The server's clock: this worker's own latest heartbeat.
        let now = self.members.get(&self.me).map(|(at, _)| *at);
        let mut alive: Vec<&str> = self
            .members
            .iter()
            .filter(|(worker, (at, ttl))| {
                *worker == &self.me || now.is_none_or(|now| now - *at <= *ttl)
            })
            .map(|(worker, _)| worker.as_str())
            .collect();
        if !alive.contains(&self.me.as_str()) {
            alive.push(&self.me);
            alive.sort_unstable();
        }
        let index = alive.iter().position(|w| *w == self.me).unwrap_or(0);
        let workers = u32::try_from(alive.len()).unwrap_or(u32::MAX).max(1);
        (0..partitions)
            .filter(|k| (k % workers) as usize == index)
            .collect()
    }

    /// Leaves: the others take this worker's partitions at once.
    async fn leave(mut self) {
        self.watch = None;
        if let Err(error) = self.kv.purge(self.key()).await {
            tracing::debug!(%error, "cannot withdraw the worker's announcement; it expires");
        }
    }
}

/// A partition being worked on: its stop switch and task. Dropping it (the runner aborted)
/// aborts the task.
struct Lane {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), StoreError>>,
}

impl Lane {
    /// Waits for the task to end.
    async fn finish(mut self) -> Result<Result<(), StoreError>, tokio::task::JoinError> {
        (&mut self.task).await
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The runner's main task: keeps the membership current, runs one lane per owned partition,
/// hands partitions over when the workers change, restarts a lane whose consumer was
/// recreated ([`JetStreamProjectionRunner::reset`]), and stops all lanes on stop.
///
/// `created` holds the consumers just created or updated at start, so that the first lanes
/// need not ask for them again; later lanes look their consumer up.
async fn supervise<P: Projection>(
    shared: Arc<Shared<P>>,
    mut membership: Membership,
    mut created: BTreeMap<u32, consumer::Consumer<pull::Config>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut lanes: BTreeMap<u32, Lane> = BTreeMap::new();
    let mut releasing: Vec<Lane> = Vec::new();
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break Ok(()),
            _ = heartbeat.tick() => membership.beat().await,
            change = membership.changed() => membership.apply(change),
        }
        if !membership.settled() {
            // Joining: the other workers' announcements are still on their way.
            continue;
        }
        let owned = membership.assignment(shared.subjects.partitions());
        // Hand over what is no longer ours.
        let gone: Vec<u32> = lanes
            .keys()
            .copied()
            .filter(|k| !owned.contains(k))
            .collect();
        for partition in gone {
            if let Some(lane) = lanes.remove(&partition) {
                tracing::debug!(projection = %shared.name, partition, "handing the partition over");
                lane.stop.send_replace(true);
                releasing.push(lane);
            }
        }
        releasing.retain(|lane| !lane.task.is_finished());
        // Lanes that ended on their own: their consumer was deleted.
        let mut failed = None;
        let ended: Vec<u32> = lanes
            .iter()
            .filter(|(_, lane)| lane.task.is_finished())
            .map(|(k, _)| *k)
            .collect();
        for partition in ended {
            if let Some(lane) = lanes.remove(&partition)
                && let Ok(Err(error)) = lane.finish().await
                && !consumer_recreated(&shared, partition).await
            {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            break Err(error);
        }
        for partition in owned {
            if lanes.contains_key(&partition) {
                continue;
            }
            let consumer = match created.remove(&partition) {
                Some(consumer) => Ok(consumer),
                None => {
                    shared
                        .stream
                        .get_consumer::<pull::Config>(&consumer_name(&shared.name, partition))
                        .await
                }
            };
            match consumer {
                Ok(consumer) => {
                    let (stop_tx, stop_rx) = watch::channel(false);
                    let task = tokio::spawn(run(Arc::clone(&shared), partition, consumer, stop_rx));
                    lanes.insert(
                        partition,
                        Lane {
                            stop: stop_tx,
                            task,
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(projection = %shared.name, partition, %error, "cannot open the partition's consumer; retrying");
                }
            }
        }
        // Partitions that become ours later (after a reset, perhaps) look their consumer up.
        created.clear();
    };
    for lane in lanes.values() {
        lane.stop.send_replace(true);
    }
    for lane in lanes.into_values().chain(releasing) {
        match lane.finish().await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "a partition lane failed"),
            Err(error) => tracing::warn!(%error, "a partition lane panicked"),
        }
    }
    membership.leave().await;
    // Acks are fire-and-forget publishes: make sure they left before reporting the checkpoint.
    let _flushed = shared.store.client().flush().await;
    outcome
}

/// Whether the consumer of `partition` exists (again) after its lane saw it deleted: a reset
/// deletes and recreates it, so it is given a moment to come back.
async fn consumer_recreated<P>(shared: &Shared<P>, partition: u32) -> bool {
    let name = consumer_name(&shared.name, partition);
    for _ in 0..20 {
        match shared.stream.consumer_info(&name).await {
            Err(e) if is_consumer_not_found(&e) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // There, or unknown (the lane's restart will tell).
            _ => return true,
        }
    }
    false
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

/// How long a lane stopped while idle waits for an event already on its way.
const IDLE_STOP_GRACE: Duration = Duration::from_millis(50);

/// Messages one pull request asks for. The server hands out at most `max_ack_pending` at a
/// time, but an outstanding request lets it deliver the next one as soon as an ack arrives.
const PULL_BATCH: usize = 256;

/// One partition's loop: pulls, handles one message at a time, and on stop hands back what it
/// has not started and releases the pin.
async fn run<P: Projection>(
    shared: Arc<Shared<P>>,
    partition: u32,
    consumer: consumer::Consumer<pull::Config>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let lane = LaneRef {
        consumer: consumer_name(&shared.name, partition),
        partition,
    };
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
                tracing::warn!(projection = %shared.name, partition, %error, "cannot pull; retrying");
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
                // Stopped while idle. With a backlog the next event is already on its way (the
                // server sends it as soon as the last ack arrives): finish it and hand over with
                // it acked last, rather than letting it reach a dropped subscription, where it
                // would wait out the ack wait.
                let last = match tokio::time::timeout(IDLE_STOP_GRACE, messages.next()).await {
                    Ok(Some(Ok(message))) => handle(&shared, message, &stop).await,
                    _ => None,
                };
                release(&shared, &lane, messages, last).await;
                return Ok(());
            };
            match next {
                Some(Ok(message)) => {
                    failures = 0;
                    let done = handle(&shared, message, &stop).await;
                    if *stop.borrow() {
                        release(&shared, &lane, messages, done).await;
                        return Ok(());
                    }
                    if let Some(done) = done {
                        done.ack(&shared.progress, partition).await;
                    }
                }
                Some(Err(error)) if error.kind() == pull::MessagesErrorKind::ConsumerDeleted => {
                    tracing::warn!(projection = %shared.name, partition, "the consumer was deleted");
                    return Err(unavailable(format!(
                        "the consumer `{}` of projection `{}` was deleted",
                        lane.consumer, shared.name
                    )));
                }
                Some(Err(error)) => {
                    failures += 1;
                    tracing::warn!(projection = %shared.name, partition, %error, "pull failed; pulling again");
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
    unpin(&shared, &lane).await;
    Ok(())
}

/// The consumer and partition a lane works on.
struct LaneRef {
    consumer: String,
    partition: u32,
}

/// Hands the pin to a standby at once instead of after the priority timeout.
async fn unpin<P>(shared: &Shared<P>, lane: &LaneRef) {
    if shared.config.pinned {
        let _unpinned = shared
            .stream
            .unpin_consumer(&lane.consumer, &shared.config.group)
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
    async fn ack(self, progress: &Progress, partition: u32) {
        if let Err(error) = self.message.ack().await {
            // Redelivered later; `apply_once` absorbs it.
            tracing::warn!(%error, position = self.sequence, "ack failed");
        }
        progress.record(partition, self.sequence);
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
    lane: &LaneRef,
    mut messages: pull::Stream,
    last: Option<Done>,
) {
    use futures::FutureExt;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%error, "nak failed");
        }
    }
    drop(messages);
    unpin(shared, lane).await;
    if let Some(last) = last {
        last.ack(&shared.progress, lane.partition).await;
    }
    // Acks are fire-and-forget publishes: make sure they left before the lane reports done.
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

    /// The highest stream position this runner processed (applied, parked or filtered out), or
    /// the highest ack floor of the projection's consumers when it started. Partitions progress
    /// independently, so lower positions of other partitions may still be on their way: use
    /// [`Self::wait_for`] to know that a position was processed.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Read-your-writes: waits until the projection has processed every event up to
    /// `position` (e.g. the position of the last event a command committed), or `timeout`
    /// passes. Works on every runner of the projection, whichever worker owns which partition:
    /// a partition this runner works on counts as done when its progress reached `position`;
    /// for the others the server is asked, where an ack floor at or beyond `position`, or
    /// nothing unacked with nothing pending or everything up to `position` delivered (a
    /// filtered consumer never sees positions outside its filter), means done.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checkpoint = self.checkpoint.clone();
        let mut pending: Vec<u32> = (0..self.shared.subjects.partitions()).collect();
        loop {
            checkpoint.borrow_and_update();
            let mut still = Vec::with_capacity(pending.len());
            for partition in pending {
                if self.shared.progress.of(partition) < position
                    && !self.processed_on_server(partition, position).await
                {
                    still.push(partition);
                }
            }
            pending = still;
            if pending.is_empty() && self.stream_has(position).await {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(WaitTimeout {
                    projection: self.shared.name.clone(),
                    wanted: position,
                    reached: pending
                        .iter()
                        .map(|k| self.shared.progress.of(*k))
                        .min()
                        .unwrap_or_else(|| self.checkpoint()),
                    timeout,
                });
            }
            let nap = (deadline - now).min(Duration::from_millis(20));
            let _changed = tokio::time::timeout(nap, checkpoint.changed()).await;
        }
    }

    /// Whether the consumer of `partition` has processed every event up to `position`.
    async fn processed_on_server(&self, partition: u32, position: u64) -> bool {
        let name = consumer_name(&self.shared.name, partition);
        let Ok(info) = self.shared.stream.consumer_info(&name).await else {
            return false;
        };
        info.ack_floor.stream_sequence >= position
            || (info.num_ack_pending == 0
                && (info.num_pending == 0 || info.delivered.stream_sequence >= position))
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
