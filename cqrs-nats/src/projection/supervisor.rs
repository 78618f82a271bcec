//! The runner's main task: heartbeats (and the lease they give), one lane per owned partition,
//! handed over as the workers change or as the checkpoints say.

use async_nats::jetstream::kv;
use cqrs_core::Projection;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::checkpoint::{Checkpoint, LiveVersion, live_key};
use super::lane::{run, stopped};
use super::membership::{MISSED_HEARTBEATS, Membership};
use super::runner::Shared;

/// A partition being worked on: its stop switch and task. Dropping it (the runner aborted)
/// aborts the task.
pub(super) struct Lane {
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: JoinHandle<()>,
}

impl Lane {
    /// Waits for the task to end.
    pub(super) async fn finish(mut self) {
        if let Err(error) = (&mut self.task).await {
            tracing::warn!(%error, "a partition lane panicked");
        }
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The runner's main task: keeps the membership current and the lease renewed, runs one lane
/// per owned partition, hands partitions over when the workers change, stops a lane whose
/// checkpoint was taken by another worker or reset (and starts it again from the checkpoint
/// while the partition is still this worker's), and stops all lanes on stop.
///
/// A partition's next lane starts only once its previous one has ended, so one worker never
/// handles a partition twice at the same time.
pub(super) async fn supervise<P: Projection>(
    shared: Arc<Shared<P>>,
    mut membership: Membership,
    mut stop: watch::Receiver<bool>,
) {
    let mut lanes: BTreeMap<u32, Lane> = BTreeMap::new();
    let mut releasing: BTreeMap<u32, Lane> = BTreeMap::new();
    let (ended_tx, mut ended) = mpsc::unbounded_channel::<u32>();
    let mut checkpoints = CheckpointWatch::default();
    let mut paused = false;
    let mut heartbeat = tokio::time::interval(shared.config.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The others count this worker gone `ttl` after its last heartbeat; it stops one heartbeat
    // before that.
    let term = membership
        .ttl()
        .saturating_sub(shared.config.heartbeat)
        .min(
            shared
                .config
                .heartbeat
                .saturating_mul(MISSED_HEARTBEATS - 1),
        );
    loop {
        tokio::select! {
            biased;
            () = stopped(&mut stop) => break,
            _ = heartbeat.tick() => {
                let sent = Instant::now();
                if membership.beat().await {
                    shared.lease.renew(sent + term);
                }
                checkpoints.open(&shared).await;
            }
            change = membership.changed() => {
                membership.apply(change);
                shared.live.send_replace(membership.live());
            }
            change = checkpoints.changed() => match checkpoints.seen(&shared, change) {
                Seen::Lost(partition) => {
                    if let Some(lane) = lanes.remove(&partition) {
                        tracing::debug!(projection = %shared.name, partition, "the checkpoint moved under the lane; starting it again from there");
                        lane.stop.send_replace(true);
                        releasing.insert(partition, lane);
                    }
                }
                Seen::Live(live) if live.version > shared.version => {
                    tracing::info!(projection = %shared.base, version = shared.version, live = live.version, "switched over to a newer version; this one stops");
                    shared.retired.store(true, std::sync::atomic::Ordering::SeqCst);
                    break;
                }
                Seen::Live(live) => {
                    // A switch to a newer version under way: hold still (hand every partition
                    // back) until it is done, or rolled back.
                    paused = live.retires(shared.version);
                    if paused {
                        tracing::info!(projection = %shared.base, version = shared.version, "a switch-over to a newer version is under way; pausing");
                        releasing.append(&mut lanes);
                        for lane in releasing.values() {
                            lane.stop.send_replace(true);
                        }
                    }
                }
                Seen::Nothing => {}
            },
            Some(partition) = ended.recv() => {
                // A partition's next lane starts only after the one being released ended, so
                // the lane that ended is the one releasing, if any, else the current one (which
                // stopped on its own: its lease lapsed, or it lost the checkpoint).
                if releasing.remove(&partition).is_none() {
                    lanes.remove(&partition);
                }
            }
        }
        if !membership.settled() || paused {
            // Joining: the other workers' announcements are still on their way. Or paused.
            continue;
        }
        let owned = membership.assignment(shared.subjects.partitions());
        assign(&shared, &owned, &mut lanes, &mut releasing, &ended_tx);
    }
    for lane in lanes.values().chain(releasing.values()) {
        lane.stop.send_replace(true);
    }
    for lane in lanes.into_values().chain(releasing.into_values()) {
        lane.finish().await;
    }
    membership.leave().await;
}

/// Hands over the lanes of partitions no longer `owned` and starts one on each owned partition
/// that has none (and whose previous lane has ended).
fn assign<P: Projection>(
    shared: &Arc<Shared<P>>,
    owned: &[u32],
    lanes: &mut BTreeMap<u32, Lane>,
    releasing: &mut BTreeMap<u32, Lane>,
    ended_tx: &mpsc::UnboundedSender<u32>,
) {
    let gone: Vec<u32> = lanes
        .keys()
        .copied()
        .filter(|k| !owned.contains(k))
        .collect();
    for partition in gone {
        if let Some(lane) = lanes.remove(&partition) {
            tracing::debug!(projection = %shared.name, partition, "handing the partition over");
            lane.stop.send_replace(true);
            releasing.insert(partition, lane);
        }
    }
    releasing.retain(|_, lane| !lane.task.is_finished());
    for &partition in owned {
        if lanes.contains_key(&partition) || releasing.contains_key(&partition) {
            continue;
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let ended = ended_tx.clone();
        let lane = run(Arc::clone(shared), partition, stop_rx);
        let task = tokio::spawn(async move {
            lane.await;
            let _sent = ended.send(partition);
        });
        lanes.insert(
            partition,
            Lane {
                stop: stop_tx,
                task,
            },
        );
    }
}

/// A watch on the projection's checkpoints, so that a lane whose partition another worker took,
/// or an operator reset, stops at once rather than at its next commit; and on its live version,
/// so that a version switched over from stops.
#[derive(Default)]
struct CheckpointWatch {
    watch: Option<kv::Watch>,
}

impl CheckpointWatch {
    /// Opens the watch if it is not open (retried every heartbeat): this version's checkpoints
    /// and the projection's live version.
    async fn open<P>(&mut self, shared: &Shared<P>) {
        if self.watch.is_some() {
            return;
        }
        // Filters of one consumer must not overlap: version 1's `<name>.*` covers the live key.
        let mut keys = vec![format!("{}.*", shared.name)];
        if shared.name != shared.base {
            keys.push(live_key(&shared.base));
        }
        match shared.checkpoints.kv().watch_many(keys).await {
            Ok(watch) => self.watch = Some(watch),
            Err(error) => tracing::warn!(%error, "cannot watch the projection's checkpoints"),
        }
    }

    async fn changed(&mut self) -> Option<Result<kv::Entry, kv::WatcherError>> {
        match self.watch.as_mut() {
            Some(watch) => watch.next().await,
            None => std::future::pending().await,
        }
    }

    /// What `change` means for this worker: a partition whose checkpoint is in other hands, or
    /// a newer live version.
    fn seen<P>(
        &mut self,
        shared: &Shared<P>,
        change: Option<Result<kv::Entry, kv::WatcherError>>,
    ) -> Seen {
        let entry = match change {
            Some(Ok(entry)) => entry,
            Some(Err(error)) => {
                tracing::warn!(%error, "watching the checkpoints failed; watching again");
                self.watch = None;
                return Seen::Nothing;
            }
            None => {
                self.watch = None;
                return Seen::Nothing;
            }
        };
        if entry.key == live_key(&shared.base) {
            return Seen::Live(LiveVersion::of(Some(&entry)));
        }
        let Some(partition) = shared.checkpoints.partition_of(&entry.key) else {
            return Seen::Nothing;
        };
        let mine = entry.operation == kv::Operation::Put
            && serde_json::from_slice::<Checkpoint>(&entry.value)
                .is_ok_and(|c| c.owner.as_deref() == Some(shared.worker.as_str()));
        if mine {
            Seen::Nothing
        } else {
            Seen::Lost(partition)
        }
    }
}

/// What the checkpoint watch showed.
enum Seen {
    Nothing,
    /// The partition's checkpoint is in other hands (another worker, a reset, a rebuild).
    Lost(u32),
    /// The projection's live version (and the one it is being switched to).
    Live(LiveVersion),
}
