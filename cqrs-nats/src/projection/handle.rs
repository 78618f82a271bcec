//! The handle of a running projection: read-your-writes, dead letters, stop.

use crate::deadletter::DeadLetter;
use cqrs_core::projection::{ParkedEvent, WaitTimeout, deliver};
use cqrs_core::{Projection, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lag::{Lag, behind};
use super::names::filter_subjects_in;
use super::runner::Shared;
use super::unavailable_because;

/// How often [`JetStreamProjectionHandle::wait_for`] asks the server about partitions that
/// this runner's progress does not show done.
const SERVER_POLL: Duration = Duration::from_millis(100);

/// Control of a projection running on JetStream. Mirrors
/// [`cqrs_core::projection::ProjectionHandle`]. Dropping the handle stops the runner as
/// [`Self::stop`] does, in the background.
#[derive(Debug)]
pub struct JetStreamProjectionHandle<P> {
    pub(super) shared: Arc<Shared<P>>,
    pub(super) checkpoint: watch::Receiver<u64>,
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
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
    /// the highest checkpoint of the partitions it took. Partitions progress
    /// independently, so lower positions of other partitions may still be on their way: use
    /// [`Self::wait_for`] to know that a position was processed.
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Read-your-writes: waits until the projection has processed every event up to
    /// `position` (e.g. the position of the last event a command committed), or `timeout`
    /// passes. Works on every runner of the projection, whichever worker owns which partition:
    /// a partition counts as done when this runner's progress on it, or its committed
    /// checkpoint, reached `position`, or when the partition holds no event of the
    /// projection's filter between there and `position`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitTimeout> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checkpoint = self.checkpoint.clone();
        let mut pending: Vec<u32> = (0..self.shared.subjects.partitions()).collect();
        // The server is asked at most every `SERVER_POLL`; local progress wakes the loop often.
        let mut asked = None::<tokio::time::Instant>;
        loop {
            checkpoint.borrow_and_update();
            pending.retain(|k| self.shared.progress.of(*k) < position);
            // Asked at once when this runner's own progress got there: the partitions left
            // are likely ones without such events.
            let due = asked.is_none_or(|at| {
                at.elapsed() >= SERVER_POLL
                    || (*checkpoint.borrow() >= position && at.elapsed() >= SERVER_POLL / 10)
            });
            if due {
                asked = Some(tokio::time::Instant::now());
                let mut still = Vec::with_capacity(pending.len());
                for partition in pending {
                    if !self.processed_on_server(partition, position).await {
                        still.push(partition);
                    }
                }
                pending = still;
            }
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

    /// Whether `partition` has handled every event of the projection's filter up to
    /// `position`, by its committed checkpoint or by having none to handle.
    pub(super) async fn processed_on_server(&self, partition: u32, position: u64) -> bool {
        let Ok(handled) = self.handled(partition).await else {
            return false;
        };
        if handled >= position {
            return true;
        }
        // The leader answers: a direct get may be answered by a replica that lags, whose
        // "nothing there" let this return while the partition still had events to handle
        // (the nemesis, after a partition healed).
        crate::gaps::first_after(&self.shared.stream, &self.filter_of(partition), handled)
            .await
            .is_ok_and(|first| first.is_none_or(|first| first > position))
    }

    /// How far `partition` is handled: its committed checkpoint (the configured start when it
    /// has none), or this runner's progress on it when that is further.
    async fn handled(&self, partition: u32) -> Result<u64, StoreError> {
        let read = self.shared.checkpoints.read(partition).await?;
        Ok(read
            .checkpoint
            .map_or(self.shared.start, |c| c.position)
            .max(self.shared.progress.of(partition)))
    }

    /// The filter subjects `partition` is read with.
    fn filter_of(&self, partition: u32) -> Vec<String> {
        filter_subjects_in(&self.shared.subjects, &self.shared.filter, Some(partition))
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
        let mut lag = Lag::default();
        for partition in 0..self.shared.subjects.partitions() {
            let handled = self.handled(partition).await?;
            let behind = behind(&self.shared.stream, &self.filter_of(partition), handled).await?;
            lag.add(partition, behind);
        }
        Ok(lag)
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

    /// Stops gracefully: finishes the batch in hand on every partition (one not done five
    /// heartbeats after the stop — a transient failure being retried — is given up, to be
    /// delivered again from the checkpoint by whoever takes the partition next), commits each
    /// partition's checkpoint with no owner (so another worker takes it at once) and withdraws
    /// the worker's announcement. Returns the checkpoint (see [`Self::checkpoint`]). An error
    /// means the runner task panicked.
    pub async fn stop(self) -> Result<u64, StoreError> {
        self.stop.send_replace(true);
        self.task
            .await
            .map_err(|e| unavailable_because("the runner task failed", e))?;
        Ok(*self.checkpoint.borrow())
    }

    /// Stops at once, as a crash would: nothing in hand is finished or committed (it is
    /// handled again from the last committed checkpoint), and the others take this worker's
    /// partitions only once its heartbeats are missed. For failover drills and tests; use
    /// [`Self::stop`] otherwise.
    pub fn abort(self) {
        self.task.abort();
    }

    /// Whether this runner stopped because a switch-over made a newer version of the projection
    /// the live one ([`JetStreamProjectionRunner::switch_over`](super::JetStreamProjectionRunner::switch_over)).
    pub fn is_retired(&self) -> bool {
        self.shared
            .retired
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the runner task has ended (stopped, retired, or panicked: see [`Self::stop`]).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
