//! Operations on a projection's checkpoints that the CLI and operators use: rebuild, delete,
//! reset, lag, the dead letters, the live workers.

use crate::deadletter::DeadLetters;
use crate::store::JetStreamEventStore;
use crate::subject::Subjects;
use async_nats::jetstream::{self, kv, stream};
use cqrs_core::{Projection, StoreError};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

use super::checkpoint::{Checkpoints, read_checkpoints};
use super::config::{ProjectionConfig, StartFrom};
use super::handle::JetStreamProjectionHandle;
use super::lag::Lag;
use super::membership::{Heartbeat, MISSED_HEARTBEATS};
use super::names::workers_bucket;
use super::runner::JetStreamProjectionRunner;
use super::{OP, context_subjects, unavailable};

impl JetStreamProjectionRunner {
    /// Rebuilds `projection` from the first event: deletes its checkpoints and spawns it again.
    /// Give it a fresh read model; stop the old runners first (a running one would start over
    /// too, from where its configuration says).
    pub async fn rebuild<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        Self::delete_checkpoints(store, projection.name()).await?;
        Self::spawn(store, projection, config.start_from(StartFrom::Beginning)).await
    }

    /// Deletes the checkpoints of projection `name`; absent is fine. Returns how many there were.
    pub async fn delete_checkpoints(
        store: &JetStreamEventStore,
        name: &str,
    ) -> Result<usize, StoreError> {
        let (_, subjects) = context_subjects(store).await?;
        let Some(checkpoints) = Checkpoints::existing(store.jetstream(), &subjects, name).await?
        else {
            return Ok(0);
        };
        let mut deleted = 0;
        for partition in 0..subjects.partitions() {
            if checkpoints.delete(partition).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// Moves the checkpoints of projection `name` to `from`; running workers see their
    /// checkpoints move and carry on from there. Read models that apply events once per
    /// position (`apply_once`) skip what they hold already, so clear them first to rebuild.
    /// Returns the number of partitions reset (0: the projection has never run).
    /// [`reset_checkpoints`] does the same without a store.
    pub async fn reset(
        store: &JetStreamEventStore,
        name: &str,
        from: StartFrom,
    ) -> Result<usize, StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        reset_on(store.jetstream(), &stream, &subjects, name, from).await
    }

    /// How far projection `name` is behind the head of the stream, per partition and in total
    /// (see [`Lag`]); works whether or not its runners are running. A projection without
    /// checkpoints has no lag.
    pub async fn lag(store: &JetStreamEventStore, name: &str) -> Result<Lag, StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        let checkpoints = read_checkpoints(store.jetstream(), &subjects)
            .await?
            .remove(name)
            .unwrap_or_default();
        Lag::of_checkpoints(&stream, &checkpoints).await
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
/// `replay`); its running workers carry on from there. Works on the context's existing events
/// stream and checkpoints only and creates nothing: a context without a stream is an error.
/// Returns the number of partitions reset (0: the projection has no checkpoints in this
/// context).
pub async fn reset_checkpoints(
    js: &jetstream::Context,
    context: &str,
    name: &str,
    from: StartFrom,
) -> Result<usize, StoreError> {
    let (stream, subjects) = existing_stream(js, context).await?;
    reset_on(js, &stream, &subjects, name, from).await
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

/// Sets the existing checkpoints of projection `name` to the checkpoint `from` means.
async fn reset_on(
    js: &jetstream::Context,
    stream: &stream::Stream,
    subjects: &Subjects,
    name: &str,
    from: StartFrom,
) -> Result<usize, StoreError> {
    let Some(checkpoints) = Checkpoints::existing(js, subjects, name).await? else {
        return Ok(0);
    };
    let existing: Vec<u32> = read_checkpoints(js, subjects)
        .await?
        .remove(name)
        .unwrap_or_default()
        .into_keys()
        .collect();
    if existing.is_empty() {
        return Ok(0);
    }
    let position = from.checkpoint(stream).await?;
    for partition in &existing {
        checkpoints.reset(*partition, position).await?;
    }
    Ok(existing.len())
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
