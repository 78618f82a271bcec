//! The handle of a running projection: read-your-writes, dead letters, stop.

use crate::deadletter::DeadLetter;
use cqrs_core::projection::{ParkedEvent, WaitTimeout, deliver};
use cqrs_core::{Projection, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lag::{Lag, lag_of};
use super::names::consumer_name;
use super::runner::Shared;
use super::unavailable;

/// Control of a projection running on JetStream. Mirrors
/// [`cqrs_core::projection::ProjectionHandle`]. Dropping the handle stops the runner as
/// [`Self::stop`] does, in the background.
#[derive(Debug)]
pub struct JetStreamProjectionHandle<P> {
    pub(super) shared: Arc<Shared<P>>,
    pub(super) checkpoint: watch::Receiver<u64>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: JoinHandle<Result<(), StoreError>>,
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
    pub(super) async fn processed_on_server(&self, partition: u32, position: u64) -> bool {
        let name = consumer_name(&self.shared.name, partition);
        let Ok(info) = self.shared.stream.consumer_info(&name).await else {
            return false;
        };
        info.ack_floor.stream_sequence >= position
            || (info.num_ack_pending == 0
                && (info.num_pending == 0 || info.delivered.stream_sequence >= position))
    }

    /// Whether the events stream holds `position` already (so "nothing pending" covers it).
    pub(super) async fn stream_has(&self, position: u64) -> bool {
        let mut stream = self.shared.stream.clone();
        stream
            .info()
            .await
            .is_ok_and(|info| info.state.last_sequence >= position)
    }

    /// How far the projection is behind the head of the stream, per partition and in total:
    /// 0 once every event written so far is handled (see [`Lag`]).
    pub async fn lag(&self) -> Result<Lag, StoreError> {
        lag_of(
            &self.shared.stream,
            &self.shared.name,
            self.shared.subjects.partitions(),
        )
        .await
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
