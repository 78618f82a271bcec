//! Time travel: a projection replayed from a position or a time through an ordered consumer,
//! without touching the live consumers.

use crate::headers;
use crate::store::JetStreamEventStore;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use cqrs_core::projection::{CatchUp, RetryPolicy, deliver};
use cqrs_core::{Projection, StoreError};
use time::OffsetDateTime;

use super::names::filter_subjects;
use super::names::split_filters;
use super::{OP, context_subjects, unavailable_because};
use crate::gaps::ToHead;

/// Where a [`replay`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// From this stream position (inclusive; 0 and 1 are the beginning).
    Position(u64),
    /// From the first event stored at or after this time.
    Time(OffsetDateTime),
}

/// Time travel without touching the live consumer: replays the events from `from` to the
/// stream's head (as of the call) into `projection` through an ordered consumer, filtered as
/// narrowly as the projection's filter allows. Failing events are retried and then returned as
/// parked (not written to the dead-letter stream); an unreadable message ends the replay with
/// [`StoreError::MalformedEnvelope`].
pub async fn replay<P: Projection + ?Sized>(
    store: &JetStreamEventStore,
    projection: &P,
    from: ReplayFrom,
    policy: &RetryPolicy,
) -> Result<CatchUp, StoreError> {
    let (stream, subjects) = context_subjects(store).await?;
    let head = stream.cached_info().state.last_sequence;
    let filter = projection.filter();
    let filters = filter_subjects(&subjects, &filter);
    let (filter_subject, filter_subjects) = split_filters(filters.clone());
    let deliver_policy = match from {
        ReplayFrom::Position(p) => DeliverPolicy::ByStartSequence {
            start_sequence: p.max(1),
        },
        ReplayFrom::Time(start_time) => DeliverPolicy::ByStartTime { start_time },
    };
    let mut outcome = CatchUp::default();
    if head == 0 {
        return Ok(outcome);
    }
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject,
            filter_subjects,
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable_because("creating the consumer", e))?;
    let Some(mut reader) = ToHead::open(OP, stream, filters, head, consumer).await? else {
        return Ok(outcome);
    };
    while let Some(stored) = reader.next().await? {
        let event = headers::decode(&subjects, &stored)?;
        outcome.checkpoint = stored.sequence;
        if filter.matches(&event) {
            match deliver(projection, &event, policy).await {
                Ok(()) => outcome.applied += 1,
                Err(parked) => outcome.parked.push(parked),
            }
        }
    }
    Ok(outcome)
}
