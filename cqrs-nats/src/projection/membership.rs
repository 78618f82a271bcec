//! How the workers of a projection find each other: heartbeats in the workers' bucket and a
//! watch on the others'.

use crate::store::JetStreamEventStore;
use crate::subject::Subjects;
use async_nats::jetstream::{kv, stream};
use cqrs_core::StoreError;
use futures::StreamExt;
use std::time::Duration;

use super::assignment::Roster;
use super::config::ProjectionConfig;
use super::names::workers_bucket;
use super::unavailable_because;

/// The workers of one projection, as announced in the workers bucket: each worker puts
/// `<projection>.<worker id>` every heartbeat and watches the others'; what the watch shows goes
/// into a [`Roster`], which decides the partitions this worker owns.
pub(super) struct Membership {
    kv: kv::Store,
    prefix: String,
    ttl: Duration,
    watch: Option<kv::Watch>,
    roster: Roster,
}

/// A heartbeat's value.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Heartbeat {
    pub(super) ttl_ms: u64,
}

impl Heartbeat {
    /// The value announcing a worker with time-to-live `ttl`.
    pub(super) fn encode(ttl: Duration) -> Vec<u8> {
        serde_json::to_vec(&Self {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
        .unwrap_or_default()
    }

    /// The time-to-live a heartbeat value announces (`default` for one it cannot read).
    pub(super) fn ttl(value: &[u8], default: Duration) -> Duration {
        serde_json::from_slice::<Self>(value).map_or(default, |h| Duration::from_millis(h.ttl_ms))
    }
}

/// Heartbeats missed before a worker counts as gone.
pub(super) const MISSED_HEARTBEATS: u32 = 5;

impl Membership {
    pub(super) async fn join(
        store: &JetStreamEventStore,
        subjects: &Subjects,
        projection: &str,
        worker: &str,
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
        .map_err(|e| unavailable_because(format!("bucket {bucket}"), e))?;
        let mut membership = Self {
            kv,
            prefix: format!("{projection}."),
            ttl: config.heartbeat.saturating_mul(MISSED_HEARTBEATS),
            watch: None,
            roster: Roster::new(worker),
        };
        let _stored = membership.beat().await;
        Ok(membership)
    }

    pub(super) fn key(&self) -> String {
        format!("{}{}", self.prefix, self.roster.me())
    }

    /// Announces this worker (again); true once stored. A failure is logged and retried at the
    /// next beat.
    pub(super) async fn beat(&mut self) -> bool {
        let value = Heartbeat::encode(self.ttl);
        let stored = match self.kv.put(self.key(), value.into()).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "cannot announce the projection worker; retrying");
                false
            }
        };
        if self.watch.is_none() {
            match self
                .kv
                .watch_with_history(format!("{}*", self.prefix))
                .await
            {
                Ok(watch) => {
                    self.roster.restart();
                    self.watch = Some(watch);
                }
                Err(error) => tracing::warn!(%error, "cannot watch the projection's workers"),
            }
        }
        stored
    }

    /// How long after a stored heartbeat the other workers count this one gone.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The workers seen live, this one included.
    pub(super) fn live(&self) -> Vec<String> {
        self.roster.live().into_iter().map(str::to_owned).collect()
    }

    /// The next change of membership (pending forever without a watch).
    pub(super) async fn changed(&mut self) -> Option<Result<kv::Entry, kv::WatcherError>> {
        match self.watch.as_mut() {
            Some(watch) => watch.next().await,
            None => std::future::pending().await,
        }
    }

    pub(super) fn apply(&mut self, change: Option<Result<kv::Entry, kv::WatcherError>>) {
        match change {
            Some(Ok(entry)) => {
                let Some(worker) = entry.key.strip_prefix(&self.prefix) else {
                    return;
                };
                if entry.operation == kv::Operation::Put {
                    let ttl = Heartbeat::ttl(&entry.value, self.ttl);
                    self.roster
                        .announced(worker, entry.created, ttl, entry.delta);
                } else {
                    self.roster.withdrew(worker, entry.delta);
                }
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
    pub(super) fn settled(&self) -> bool {
        self.roster.caught_up() || self.watch.is_none()
    }

    /// The partitions (of `partitions`) this worker owns now.
    pub(super) fn assignment(&self, partitions: u32) -> Vec<u32> {
        self.roster.assignment(partitions)
    }

    /// Leaves: the others take this worker's partitions at once.
    pub(super) async fn leave(mut self) {
        self.watch = None;
        if let Err(error) = self.kv.purge(self.key()).await {
            tracing::debug!(%error, "cannot withdraw the worker's announcement; it expires");
        }
    }
}
