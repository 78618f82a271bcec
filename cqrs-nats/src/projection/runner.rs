//! Starting a projection: its consumers, its membership, its supervisor; and what the runner's
//! tasks share.

use crate::deadletter::DeadLetters;
use crate::store::JetStreamEventStore;
use crate::subject::{Subjects, validate_name};
use async_nats::jetstream::stream;
use cqrs_core::{EventFilter, Projection, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::watch;

use super::admin::ensure_consumer;
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
    pub(super) store: JetStreamEventStore,
    pub(super) stream: stream::Stream,
    pub(super) subjects: Subjects,
    pub(super) dead_letters: DeadLetters,
    pub(super) config: ProjectionConfig,
    pub(super) name: String,
    pub(super) progress: Progress,
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

    pub(super) async fn start<P: Projection>(
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
}
