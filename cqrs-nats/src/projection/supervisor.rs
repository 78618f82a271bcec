//! The runner's main task: one lane per owned partition, handed over as the workers change.

use async_nats::jetstream::consumer::{self, pull};
use cqrs_core::{Projection, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::is_consumer_not_found;
use super::lane::run;
use super::lane::stopped;
use super::membership::Membership;
use super::names::consumer_name;
use super::runner::Shared;

/// A partition being worked on: its stop switch and task. Dropping it (the runner aborted)
/// aborts the task.
pub(super) struct Lane {
    pub(super) stop: watch::Sender<bool>,
    pub(super) task: JoinHandle<Result<(), StoreError>>,
}

impl Lane {
    /// Waits for the task to end.
    pub(super) async fn finish(mut self) -> Result<Result<(), StoreError>, tokio::task::JoinError> {
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
pub(super) async fn supervise<P: Projection>(
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
pub(super) async fn consumer_recreated<P>(shared: &Shared<P>, partition: u32) -> bool {
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
