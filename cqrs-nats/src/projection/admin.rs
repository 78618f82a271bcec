//! Operations on a projection's checkpoints that the CLI and operators use: rebuild, delete,
//! reset, lag, the dead letters, the live workers.

use crate::deadletter::DeadLetters;
use crate::store::JetStreamEventStore;
use crate::subject::Subjects;
use async_nats::jetstream::{self, kv, stream};
use cqrs_core::projection::versioned_name;
use cqrs_core::{Projection, StoreError};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;

use super::checkpoint::{Checkpoints, LiveVersion, read_live, write_live};
use super::config::{ProjectionConfig, StartFrom};
use super::handle::JetStreamProjectionHandle;
use super::lag::Lag;
use super::membership::{Heartbeat, MISSED_HEARTBEATS};
use super::names::workers_bucket;
use super::runner::JetStreamProjectionRunner;
use super::{OP, context_subjects, unavailable_because};

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
        let checkpoints = match Checkpoints::existing(store.jetstream(), &subjects, name).await? {
            Some(checkpoints) => checkpoints.read_all(subjects.partitions()).await?,
            None => BTreeMap::new(),
        };
        Lag::of_checkpoints(&stream, &checkpoints).await
    }

    /// The live version of projection `name` (see [`Projection::version`]): the one readers
    /// should read. 1 until a switch-over made another one live.
    pub async fn live_version(store: &JetStreamEventStore, name: &str) -> Result<u32, StoreError> {
        let (_, subjects) = context_subjects(store).await?;
        match Checkpoints::existing(store.jetstream(), &subjects, name).await? {
            Some(checkpoints) => Ok(read_live(checkpoints.kv(), name).await?.0.version),
            None => Ok(1),
        }
    }

    /// Makes version `to` of projection `name` the live one — only once it has caught up: a
    /// checkpoint on every partition, and no further behind the head than the live version is
    /// (give or take an event in flight per partition). The switch goes in three steps, so that a
    /// reader that looks the live version up before each read never sees a gap or a step back:
    /// the live version is marked as being switched from, and its runners (which watch it)
    /// pause and release their checkpoints; version `to` catches up with where they stopped;
    /// then `to` becomes the live version, the old runners stop for good and the old
    /// checkpoints are deleted. If `to` does not get there within `patience`, the switch is
    /// rolled back (the old runners carry on) and the outcome is [`SwitchOver::NotCaughtUp`].
    /// Interrupted half-way (the caller died), the old runners stay paused, readers read the
    /// old version unchanged, and calling this again completes the switch. The old read model
    /// is the application's to drop.
    pub async fn switch_over(
        store: &JetStreamEventStore,
        name: &str,
        to: u32,
        patience: Duration,
    ) -> Result<SwitchOver, StoreError> {
        let (stream, subjects) = context_subjects(store).await?;
        let replicas = stream.cached_info().config.num_replicas;
        let target = versioned_name(name, to);
        let checkpoints =
            Checkpoints::open(store.jetstream(), &subjects, &target, replicas).await?;
        let kv = checkpoints.kv();
        let (live, revision) = read_live(kv, name).await?;
        if to <= live.version {
            return Ok(SwitchOver::AlreadyLive { live: live.version });
        }
        let partitions = usize::try_from(subjects.partitions()).unwrap_or(usize::MAX);
        let old_name = versioned_name(name, live.version);
        // How far the target is behind, and how far behind the live version it is.
        let old = checkpoints.of(&old_name);
        let behind = || async {
            let built = checkpoints.read_all(subjects.partitions()).await?;
            let lag = Lag::of_checkpoints(&stream, &built).await?.total;
            let live = old.read_all(subjects.partitions()).await?;
            let live_lag = Lag::of_checkpoints(&stream, &live).await?.total;
            let missing = partitions.saturating_sub(built.len());
            Ok::<_, StoreError>((lag, lag.saturating_sub(live_lag), missing))
        };
        let (lag, behind_live, missing) = behind().await?;
        // Caught up: every partition taken, and no further behind than the live version than
        // an event in flight per partition (the wait below closes that gap exactly).
        let slack = u64::from(subjects.partitions());
        if live.next != Some(to) && (missing > 0 || behind_live > slack) {
            return Ok(SwitchOver::NotCaughtUp {
                lag,
                partitions_without_checkpoint: missing,
            });
        }
        // 1. The old version's runners stop.
        let from = live.version;
        let mut revision = revision;
        if live.next != Some(to) {
            let switching = LiveVersion {
                version: from,
                next: Some(to),
            };
            let Some(moved) = write_live(kv, name, switching, revision).await? else {
                let (live, _) = read_live(kv, name).await?;
                return Ok(SwitchOver::AlreadyLive { live: live.version });
            };
            revision = moved;
        }
        // 2. The new version catches up with where they stopped.
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let stopped = old.read_all(subjects.partitions()).await?;
            let new = checkpoints.read_all(subjects.partitions()).await?;
            // Released, or held by workers that are gone (crashed) and apply nothing more.
            let released = stopped.values().all(|c| c.owner.is_none())
                || !live_workers(store.jetstream(), &subjects)
                    .await?
                    .contains_key(&old_name);
            let caught_up = stopped
                .iter()
                .all(|(k, c)| new.get(k).is_some_and(|n| n.position >= c.position))
                && new.len() == partitions;
            if released && caught_up {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                // Rolled back: the old version's runners take their partitions again.
                if let Err(moved) = settle_live(kv, name, from, revision).await? {
                    return Ok(moved);
                }
                let (lag, _, missing) = behind().await?;
                return Ok(SwitchOver::NotCaughtUp {
                    lag,
                    partitions_without_checkpoint: missing,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // 3. The new version is live; the old checkpoints go.
        if let Err(moved) = settle_live(kv, name, to, revision).await? {
            return Ok(moved);
        }
        let mut removed = 0;
        for partition in 0..subjects.partitions() {
            if old.delete(partition).await? {
                removed += 1;
            }
        }
        Ok(SwitchOver::Switched {
            from,
            to,
            checkpoints_removed: removed,
        })
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

/// Records `version` as the live version of `name`, no switch under way, if the entry is still
/// at `revision`; when someone else moved it, the outcome to report instead.
async fn settle_live(
    kv: &kv::Store,
    name: &str,
    version: u32,
    revision: u64,
) -> Result<Result<(), SwitchOver>, StoreError> {
    let live = LiveVersion {
        version,
        next: None,
    };
    if write_live(kv, name, live, revision).await?.is_some() {
        return Ok(Ok(()));
    }
    let (live, _) = read_live(kv, name).await?;
    Ok(Err(SwitchOver::AlreadyLive { live: live.version }))
}

/// What [`JetStreamProjectionRunner::switch_over`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwitchOver {
    /// The version asked for is live now; the runners of `from` stop and its checkpoints were
    /// deleted.
    Switched {
        /// The version that was live.
        from: u32,
        /// The version live now.
        to: u32,
        /// Checkpoints of `from` deleted.
        checkpoints_removed: usize,
    },
    /// Not done: the version asked for has not caught up yet (run it until it has, then switch
    /// again). Nothing changed (a switch that ran out of patience was rolled back).
    NotCaughtUp {
        /// Its events behind the head.
        lag: u64,
        /// Partitions it has not taken yet.
        partitions_without_checkpoint: usize,
    },
    /// Refused: this version, or a later one, is live already. Nothing changed.
    AlreadyLive {
        /// The live version.
        live: u32,
    },
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
        Err(e) => return Err(unavailable_because("getting the stream", e)),
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
    let existing: Vec<u32> = checkpoints
        .read_all(subjects.partitions())
        .await?
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
    match js.get_stream(crate::layout::kv_stream(&bucket)).await {
        Ok(_) => {}
        Err(e) if crate::error::is_stream_not_found(&e) => {
            return Ok(BTreeMap::new());
        }
        Err(e) => return Err(unavailable_because("getting the stream", e)),
    }
    let kv = js
        .get_key_value(&bucket)
        .await
        .map_err(|e| unavailable_because("opening the workers bucket", e))?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .map_err(|e| unavailable_because("listing the workers", e))?
        .try_collect()
        .await
        .map_err(|e| unavailable_because("listing the workers", e))?;
    let default_ttl = ProjectionConfig::default()
        .heartbeat
        .saturating_mul(MISSED_HEARTBEATS);
    let mut beats = Vec::with_capacity(keys.len());
    for key in keys {
        let Some((projection, _worker)) = key.split_once('.') else {
            continue;
        };
        let Some(entry) = kv
            .entry(key.as_str())
            .await
            .map_err(|e| unavailable_because("reading a worker entry", e))?
        else {
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
