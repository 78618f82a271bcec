//! How far a projection is behind: per partition, the events its consumer has not yet had
//! handled — not yet delivered (`num_pending`, counted by the server against the consumer's
//! filter) plus delivered and not yet acked (`num_ack_pending`). Events the projection's filter
//! drops on the client are acked as processed, so they do not count once passed. One rule for
//! the running handle, for [`JetStreamProjectionRunner::lag`](super::JetStreamProjectionRunner::lag)
//! and for the CLI's `projections`.

use async_nats::jetstream::consumer;
use async_nats::jetstream::stream;
use cqrs_core::StoreError;
use std::collections::BTreeMap;

use super::names::{PARTITION_METADATA, consumer_name};
use super::{is_consumer_not_found, unavailable};

/// A projection's lag: events behind the stream's head, per partition and in total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lag {
    /// Events not yet handled, by partition (partitions without a consumer are absent).
    pub partitions: BTreeMap<u32, u64>,
    /// Their sum.
    pub total: u64,
}

impl Lag {
    /// The events consumer `info` has not yet had handled.
    pub fn of_consumer(info: &consumer::Info) -> u64 {
        info.num_pending
            .saturating_add(u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX))
    }

    /// The lag of a projection whose consumers are `consumers` (their partition read from the
    /// consumer's `cqrs.partition` metadata; a consumer without it counts as partition 0).
    pub fn from_consumers<'a>(consumers: impl IntoIterator<Item = &'a consumer::Info>) -> Self {
        let mut lag = Self::default();
        for info in consumers {
            let partition = info
                .config
                .metadata
                .get(PARTITION_METADATA)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            let behind = Self::of_consumer(info);
            *lag.partitions.entry(partition).or_default() += behind;
            lag.total = lag.total.saturating_add(behind);
        }
        lag
    }
}

/// The lag of projection `name` on `stream`, asking each of its `partitions` consumers.
pub(super) async fn lag_of<I>(
    stream: &stream::Stream<I>,
    name: &str,
    partitions: u32,
) -> Result<Lag, StoreError> {
    let mut infos = Vec::new();
    for partition in 0..partitions {
        match stream.consumer_info(consumer_name(name, partition)).await {
            Ok(info) => infos.push(info),
            Err(e) if is_consumer_not_found(&e) => {}
            Err(e) => return Err(unavailable(format!("consumer info of {name}: {e}"))),
        }
    }
    Ok(Lag::from_consumers(&infos))
}
