//! How far a projection is behind: per partition, the events of the partition's filter stored
//! after the partition's checkpoint (the running handle counts from what it has handled, which
//! may be ahead of the last commit). The server counts them: a consumer created at the
//! checkpoint + 1 with the partition's filter reports them as pending, and is deleted at once.
//! Events the projection's filter drops on the client count until passed. One rule for the
//! running handle, for [`JetStreamProjectionRunner::lag`](super::JetStreamProjectionRunner::lag)
//! and for the CLI's `projections`.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream;
use cqrs_core::StoreError;
use std::collections::BTreeMap;
use std::time::Duration;

use super::checkpoint::Checkpoint;
use super::names::split_filters;
use super::unavailable_because;

/// A projection's lag: events behind the stream's head, per partition and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// Events not yet handled, by partition (partitions without a checkpoint are absent).
    pub partitions: BTreeMap<u32, u64>,
    /// Their sum.
    pub total: u64,
}

impl Lag {
    /// The lag of a projection whose partitions are at `checkpoints` (as
    /// [`read_checkpoints`](super::read_checkpoints) lists them), on the events `stream`.
    pub async fn of_checkpoints(
        stream: &stream::Stream,
        checkpoints: &BTreeMap<u32, Checkpoint>,
    ) -> Result<Self, StoreError> {
        let mut lag = Self::default();
        for (partition, checkpoint) in checkpoints {
            let behind = behind(stream, &checkpoint.filter, checkpoint.position).await?;
            lag.add(*partition, behind);
        }
        Ok(lag)
    }

    pub(super) fn add(&mut self, partition: u32, behind: u64) {
        self.partitions.insert(partition, behind);
        self.total = self.total.saturating_add(behind);
    }
}

/// The events matching `filter` (all, if empty) stored after `position`.
pub(super) async fn behind(
    stream: &stream::Stream,
    filter: &[String],
    position: u64,
) -> Result<u64, StoreError> {
    let (filter_subject, filter_subjects) = split_filters(filter.to_vec());
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: position + 1,
            },
            ack_policy: AckPolicy::None,
            filter_subject,
            filter_subjects,
            inactive_threshold: Duration::from_secs(10),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            unavailable_because(format!("counting the events after position {position}"), e)
        })?;
    let info = consumer.cached_info();
    let _deleted = stream.delete_consumer(&info.name).await;
    Ok(info.num_pending)
}
