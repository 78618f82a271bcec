//! Operations on a projection's consumers that the CLI and operators use: rebuild, delete,
//! reset, the dead letters, the live workers.

use crate::deadletter::DeadLetters;
use crate::store::JetStreamEventStore;
use crate::subject::Subjects;
use async_nats::jetstream::consumer::{self, AckPolicy, FromConsumer, PriorityPolicy, pull};
use async_nats::jetstream::{self, kv, stream};
use cqrs_core::{EventFilter, Projection, StoreError};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

use super::config::ProjectionConfig;
use super::config::StartFrom;
use super::handle::JetStreamProjectionHandle;
use super::lag::{Lag, lag_of};
use super::membership::Heartbeat;
use super::membership::MISSED_HEARTBEATS;
use super::names::PARTITION_METADATA;
use super::names::PROJECTION_METADATA;
use super::names::consumer_name;
use super::names::filter_subjects_in;
use super::names::split_filters;
use super::names::workers_bucket;
use super::runner::JetStreamProjectionRunner;
use super::{OP, context_subjects, is_consumer_not_found, unavailable};

impl JetStreamProjectionRunner {
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

    /// How far projection `name` is behind the head of the stream, per partition and in total
    /// (see [`Lag`]); works whether or not its runners are running. A projection without
    /// consumers has no lag.
    pub async fn lag(store: &JetStreamEventStore, name: &str) -> Result<Lag, StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        lag_of(&stream, name, subjects.partitions()).await
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
pub(super) async fn existing_stream(
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
pub(super) async fn reset_on(
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
pub(super) const CLOCK_SLACK: Duration = Duration::from_secs(60);

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
pub(super) async fn ensure_consumer(
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
