//! Starting a projection: its checkpoints, its membership, its supervisor; and what the
//! runner's tasks share.

use crate::deadletter::DeadLetters;
use crate::store::JetStreamEventStore;
use crate::subject::{Subjects, validate_name};
use async_nats::jetstream::stream;
use cqrs_core::projection::versioned_name;
use cqrs_core::{EventFilter, Projection, StoreError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::watch;
use uuid::Uuid;

use super::checkpoint::{Checkpoints, read_live};
use super::config::ProjectionConfig;
use super::handle::JetStreamProjectionHandle;
use super::membership::Membership;
use super::supervisor::supervise;
use super::{OP, context_subjects};

/// Runs projections on a [`JetStreamEventStore`].
#[derive(Debug)]
pub struct JetStreamProjectionRunner;

pub(super) struct Shared<P> {
    pub(super) projection: P,
    pub(super) filter: EventFilter,
    pub(super) stream: stream::Stream,
    pub(super) subjects: Subjects,
    pub(super) dead_letters: DeadLetters,
    pub(super) checkpoints: Checkpoints,
    pub(super) config: ProjectionConfig,
    /// The name this version runs under ([`versioned_name`]).
    pub(super) name: String,
    /// The projection's own name and version.
    pub(super) base: String,
    pub(super) version: u32,
    /// Set once a switch-over made another version the live one: this runner stopped.
    pub(super) retired: AtomicBool,
    /// This worker's id (its key in the workers' bucket, the owner in its checkpoints).
    pub(super) worker: String,
    /// The checkpoint of a partition that has none yet ([`ProjectionConfig::start_from`]).
    pub(super) start: u64,
    pub(super) progress: Progress,
    pub(super) lease: Lease,
    /// The workers of the projection this worker sees live (itself included).
    pub(super) live: watch::Sender<Vec<String>>,
}

/// What a runner has processed: the highest position overall and per partition.
#[derive(Debug)]
pub(super) struct Progress {
    pub(super) highest: watch::Sender<u64>,
    pub(super) partitions: Vec<AtomicU64>,
}

impl Progress {
    pub(super) fn record(&self, partition: u32, position: u64) {
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

    pub(super) fn of(&self, partition: u32) -> u64 {
        self.partitions
            .get(partition as usize)
            .map_or(0, |p| p.load(Ordering::SeqCst))
    }
}

/// How long this worker may still act as the owner of its partitions: until its last
/// acknowledged heartbeat, counted from when it was sent, is one heartbeat short of the time
/// after which the other workers count it gone. A worker that was paused (or cut off) past it
/// handles nothing more until a heartbeat goes through again, by when the others may have
/// taken its partitions: their checkpoints then tell its lanes so.
#[derive(Debug, Default)]
pub(super) struct Lease {
    until: Mutex<Option<Instant>>,
}

impl Lease {
    /// A heartbeat sent at `sent` was stored: the lease runs until `sent + term`.
    pub(super) fn renew(&self, until: Instant) {
        if let Ok(mut current) = self.until.lock() {
            *current = Some(current.map_or(until, |c| c.max(until)));
        }
    }

    /// Whether the lease holds now.
    pub(super) fn valid(&self) -> bool {
        self.until
            .lock()
            .ok()
            .and_then(|until| *until)
            .is_some_and(|until| Instant::now() < until)
    }
}

impl JetStreamProjectionRunner {
    /// Starts `projection`: joins the projection's workers and, on each partition this worker
    /// is assigned, takes the partition's checkpoint and reads on from it.
    pub async fn spawn<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        // Provisioning awaits many requests: keep callers' futures small.
        Box::pin(Self::start(store, projection, config)).await
    }

    pub(super) async fn start<P: Projection>(
        store: &JetStreamEventStore,
        projection: P,
        config: ProjectionConfig,
    ) -> Result<JetStreamProjectionHandle<P>, StoreError> {
        let base = projection.name().to_owned();
        let version = projection.version();
        let name = versioned_name(&base, version);
        validate_name("projection", &name).map_err(|e| StoreError::Backend {
            operation: OP,
            source: Box::new(e),
        })?;
        let (stream, subjects) = context_subjects(store).await?;
        let replicas = stream.cached_info().config.num_replicas;
        let dead_letters = DeadLetters::provision(store.jetstream(), &subjects, replicas).await?;
        let checkpoints = Checkpoints::open(store.jetstream(), &subjects, &name, replicas).await?;
        let (live, _) = read_live(checkpoints.kv(), &base).await?;
        if live.retires(version) {
            return Err(StoreError::Backend {
                operation: OP,
                source: format!(
                    "projection `{base}` version {version} was retired by a switch-over to \
                     version {} (run that version or a later one)",
                    live.next.unwrap_or(live.version)
                )
                .into(),
            });
        }
        let start = config.start.checkpoint(&stream).await?;
        let filter = projection.filter();
        let worker = Uuid::now_v7().simple().to_string();
        let membership =
            Membership::join(store, &subjects, &name, &worker, &config, replicas).await?;
        let (highest, checkpoint) = watch::channel(0);
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
            stream,
            subjects,
            dead_letters,
            checkpoints,
            config,
            name,
            base,
            version,
            retired: AtomicBool::new(false),
            worker,
            start,
            progress,
            lease: Lease::default(),
            live: watch::channel(Vec::new()).0,
        });
        let task = tokio::spawn(supervise(Arc::clone(&shared), membership, stop_rx));
        Ok(JetStreamProjectionHandle {
            shared,
            checkpoint,
            stop: stop_tx,
            task,
        })
    }
}
