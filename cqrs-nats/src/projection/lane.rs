//! One partition's loop: pull, handle one event at a time, ack; retries, parking and release.

use crate::headers;
use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, AckKind};
use cqrs_core::projection::{ParkedEvent, deliver};
use cqrs_core::{Projection, RecordedEvent, StoreError};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::Instrument;

use super::names::consumer_name;
use super::runner::Progress;
use super::runner::Shared;
use super::unavailable;

/// How long a lane stopped while idle waits for an event already on its way.
pub(super) const IDLE_STOP_GRACE: Duration = Duration::from_millis(50);

/// Messages one pull request asks for. The server hands out at most `max_ack_pending` at a
/// time, but an outstanding request lets it deliver the next one as soon as an ack arrives.
pub(super) const PULL_BATCH: usize = 256;

/// One partition's loop: pulls, handles one message at a time, and on stop hands back what it
/// has not started and releases the pin.
pub(super) async fn run<P: Projection>(
    shared: Arc<Shared<P>>,
    partition: u32,
    consumer: consumer::Consumer<pull::Config>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let lane = LaneRef {
        consumer: consumer_name(&shared.name, partition),
        partition,
    };
    let mut failures = 0u32;
    'pulling: loop {
        if *stop.borrow() {
            break;
        }
        let mut builder = consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(shared.config.pull_expiry)
            .heartbeat(shared.config.pull_expiry / 2);
        if shared.config.pinned {
            builder = builder.group(shared.config.group.clone());
        }
        let mut messages = match builder.messages().await {
            Ok(messages) => messages,
            Err(error) => {
                failures += 1;
                tracing::warn!(projection = %shared.name, partition, %error, "cannot pull; retrying");
                if pause(&mut stop, failures).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = stopped(&mut stop) => None,
                next = messages.next() => Some(next),
            };
            let Some(next) = next else {
                // Stopped while idle. With a backlog the next event is already on its way (the
                // server sends it as soon as the last ack arrives): finish it and hand over with
                // it acked last, rather than letting it reach a dropped subscription, where it
                // would wait out the ack wait.
                let last = match tokio::time::timeout(IDLE_STOP_GRACE, messages.next()).await {
                    Ok(Some(Ok(message))) => handle(&shared, message, &stop).await,
                    _ => None,
                };
                release(&shared, &lane, messages, last).await;
                return Ok(());
            };
            match next {
                Some(Ok(message)) => {
                    failures = 0;
                    let done = handle(&shared, message, &stop).await;
                    if *stop.borrow() {
                        release(&shared, &lane, messages, done).await;
                        return Ok(());
                    }
                    if let Some(done) = done {
                        done.ack(&shared.progress, partition).await;
                    }
                }
                Some(Err(error)) if error.kind() == pull::MessagesErrorKind::ConsumerDeleted => {
                    tracing::warn!(projection = %shared.name, partition, "the consumer was deleted");
                    return Err(unavailable(format!(
                        "the consumer `{}` of projection `{}` was deleted",
                        lane.consumer, shared.name
                    )));
                }
                Some(Err(error)) => {
                    failures += 1;
                    tracing::warn!(projection = %shared.name, partition, %error, "pull failed; pulling again");
                    if pause(&mut stop, failures).await {
                        break 'pulling;
                    }
                    continue 'pulling;
                }
                None => {
                    failures += 1;
                    if pause(&mut stop, failures).await {
                        break 'pulling;
                    }
                    continue 'pulling;
                }
            }
        }
    }
    // Stopped between pull streams.
    unpin(&shared, &lane).await;
    Ok(())
}

/// The consumer and partition a lane works on.
pub(super) struct LaneRef {
    pub(super) consumer: String,
    pub(super) partition: u32,
}

/// Hands the pin to a standby at once instead of after the priority timeout.
pub(super) async fn unpin<P>(shared: &Shared<P>, lane: &LaneRef) {
    if shared.config.pinned {
        let _unpinned = shared
            .stream
            .unpin_consumer(&lane.consumer, &shared.config.group)
            .await;
    }
}

/// A handled message, still to be acked.
pub(super) struct Done {
    pub(super) message: jetstream::Message,
    pub(super) sequence: u64,
}

impl Done {
    /// Acks it (the checkpoint on the server) and advances the local checkpoint.
    pub(super) async fn ack(self, progress: &Progress, partition: u32) {
        if let Err(error) = self.message.ack().await {
            // Redelivered later; `apply_once` absorbs it.
            tracing::warn!(%error, position = self.sequence, "ack failed");
        }
        progress.record(partition, self.sequence);
    }
}

/// Resolves once the runner is asked to stop.
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _stopped = stop.wait_for(|s| *s).await;
}

/// Stopping: naks the messages already received but not started, so that the server hands them
/// to the next runner at once instead of after the ack wait; drops the pull stream (its inbox
/// goes away) and releases the pin; only then acks the last handled event, so that the server
/// delivers the next one to another runner rather than to the pull request of this one.
pub(super) async fn release<P>(
    shared: &Shared<P>,
    lane: &LaneRef,
    mut messages: pull::Stream,
    last: Option<Done>,
) {
    use futures::FutureExt;
    while let Some(Some(Ok(message))) = messages.next().now_or_never() {
        if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
            tracing::debug!(%error, "nak failed");
        }
    }
    drop(messages);
    unpin(shared, lane).await;
    if let Some(last) = last {
        last.ack(&shared.progress, lane.partition).await;
    }
    // Acks are fire-and-forget publishes: make sure they left before the lane reports done.
    let _flushed = shared.store.client().flush().await;
}

/// Sleeps a backoff after `failures` failures; true when asked to stop meanwhile.
pub(super) async fn pause(stop: &mut watch::Receiver<bool>, failures: u32) -> bool {
    let backoff = Duration::from_millis(50)
        .saturating_mul(2u32.saturating_pow(failures.min(6)))
        .min(Duration::from_secs(2));
    tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(backoff) => false,
    }
}

/// Processes one message: decode, filter, deliver with retries (sending progress), park on
/// failure. Returns it to be acked, unless it could not be parked because the runner stops.
pub(super) async fn handle<P: Projection>(
    shared: &Shared<P>,
    mut message: jetstream::Message,
    stop: &watch::Receiver<bool>,
) -> Option<Done> {
    let (sequence, delivered, time) = match message.info() {
        Ok(info) => (info.stream_sequence, info.delivered, info.published),
        Err(error) => {
            tracing::warn!(projection = %shared.name, %error, "a message without JetStream metadata; ignored");
            return None;
        }
    };
    let stored = StreamMessage {
        subject: message.message.subject.clone(),
        sequence,
        headers: message.message.headers.take().unwrap_or_default(),
        payload: message.message.payload.clone(),
        time,
    };
    let span = tracing::debug_span!(
        "cqrs.nats.project",
        projection = %shared.name,
        position = sequence,
        delivered,
        aggregate_type = tracing::field::Empty,
        aggregate_id = tracing::field::Empty,
        version = tracing::field::Empty,
        correlation_id = tracing::field::Empty,
    );
    let handled = async {
        match headers::decode(&shared.subjects, &stored) {
            Err(error) => {
                tracing::warn!(%error, "unreadable message; parking it");
                park(shared, &message, &stored, &error.to_string(), 1, stop).await
            }
            Ok(event) => {
                let span = tracing::Span::current();
                span.record("aggregate_type", event.aggregate_type.as_str());
                span.record("aggregate_id", event.aggregate_id.as_str());
                span.record("version", event.version);
                span.record(
                    "correlation_id",
                    tracing::field::display(event.metadata.correlation_id),
                );
                if shared.filter.matches(&event)
                    && let Err(parked) = deliver_with_progress(shared, &message, &event).await
                {
                    park(
                        shared,
                        &message,
                        &stored,
                        &parked.error,
                        parked.attempts,
                        stop,
                    )
                    .await
                } else {
                    true
                }
            }
        }
    }
    .instrument(span)
    .await;
    handled.then_some(Done { message, sequence })
}

/// [`deliver`] while telling the server every third of the ack wait that the event is still
/// being worked on.
pub(super) async fn deliver_with_progress<P: Projection>(
    shared: &Shared<P>,
    message: &jetstream::Message,
    event: &RecordedEvent,
) -> Result<(), ParkedEvent> {
    let delivery = deliver(&shared.projection, event, &shared.config.retry);
    tokio::pin!(delivery);
    let period = shared.config.ack_wait / 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            outcome = &mut delivery => return outcome,
            _ = ticker.tick() => {
                if let Err(error) = message.ack_with(AckKind::Progress).await {
                    tracing::debug!(%error, "progress ack failed");
                }
            }
        }
    }
}

/// Publishes the message to the dead-letter stream, retrying (with progress acks) until it is
/// stored (true) or the runner is stopped (false): the original is acked only once parked.
pub(super) async fn park<P: Projection>(
    shared: &Shared<P>,
    message: &jetstream::Message,
    stored: &StreamMessage,
    error: &str,
    attempts: u32,
    stop: &watch::Receiver<bool>,
) -> bool {
    let mut failures = 0;
    loop {
        match shared
            .dead_letters
            .park(&shared.name, stored, error, attempts)
            .await
        {
            Ok(_) => {
                tracing::warn!(%error, attempts, "parked on the dead-letter stream");
                return true;
            }
            Err(park_error) => {
                failures += 1;
                tracing::error!(%park_error, failures, "cannot park the event; retrying");
                let _progress = message.ack_with(AckKind::Progress).await;
                let mut stop = stop.clone();
                if pause(&mut stop, failures).await {
                    // Stopping: leave it unacked so that it is delivered again.
                    return false;
                }
            }
        }
    }
}
