//! Projections: events flowing into read models, side effects and workflows.
//!
//! Everything that consumes events is a [`Projection`]: a name (its checkpoint / durable
//! consumer), a filter, and `apply`. Reactors ([`WithReactor`]) and process managers
//! ([`crate::process::ProcessManagerProjection`]) are projections too, so one runner serves all
//! three. Delivery is at least once and in order per aggregate; `apply` must be idempotent —
//! [`crate::read_model::apply_once`] makes read-model updates so.
//!
//! [`InMemoryProjectionRunner`] runs a projection live on an [`InMemoryEventStore`];
//! [`catch_up`] replays any [`EventStore`] from a position (rebuilds, new projections started from
//! history, time travel) without touching a live runner.

use crate::envelope::RecordedEvent;
use crate::error::{BoxError, StoreError};
use crate::memory::InMemoryEventStore;
use crate::read_model::{ReadModelError, ReadModelStore};
use crate::store::EventStore;
use crate::stream::EventFilter;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a handler could not process an event. The runner retries it with backoff and parks the
/// event after the configured number of attempts.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    message: String,
    #[source]
    source: Option<BoxError>,
}

impl HandlerError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// Wraps another error, keeping it as the source.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            message: error.to_string(),
            source: Some(Box::new(error)),
        }
    }
}

impl From<ReadModelError> for HandlerError {
    fn from(error: ReadModelError) -> Self {
        Self::from_error(error)
    }
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        Self::from_error(error)
    }
}

impl From<crate::event::DecodeError> for HandlerError {
    fn from(error: crate::event::DecodeError) -> Self {
        Self::from_error(error)
    }
}

/// Something that consumes events: a read model, a reactor, a process manager.
pub trait Projection: Send + Sync + 'static {
    /// Stable name: the checkpoints, the workers and the dead-letter subject use it (with the
    /// version: [`versioned_name`]).
    fn name(&self) -> &str;

    /// The version of what it builds (1 unless overridden). A new version is built from the
    /// first event beside the live one, under its own [`versioned_name`] (its checkpoints, and
    /// read-model keys or bucket of its own choosing), and made the live one by a switch-over
    /// once it has caught up; readers look the live version up and read its model.
    fn version(&self) -> u32 {
        1
    }

    /// The events it wants. Others still advance its checkpoint.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Applies one event. Must be idempotent: an event can be delivered again after a crash or
    /// a failed attempt.
    fn apply(&self, event: &RecordedEvent)
    -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Applies a run of consecutive events, in position order (a runner hands over what it has
    /// at hand, up to its batch size, and never waits to fill a batch). The default applies
    /// them one by one; override it to write them in one go (one transaction, one round trip).
    /// Idempotent as `apply` is: a failing batch is delivered
    /// again event by event ([`deliver_batch`]), so that only the failing event is parked and
    /// the events the batch had already written arrive a second time.
    fn apply_batch(
        &self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for event in events {
                self.apply(event).await?;
            }
            Ok(())
        }
    }
}

/// A wrapper's identity ([`Projection::name`], [`Projection::version`],
/// [`Projection::filter`]) as that of the projection it wraps: `wrapped_identity!(this =>
/// this.inner)` names, after `=>`, the wrapped projection reached from `this` (the wrapper).
macro_rules! wrapped_identity {
    ($this:ident => $($wrapped:tt)+) => {
        fn name(&self) -> &str {
            let $this = self;
            $($wrapped)+.name()
        }

        fn version(&self) -> u32 {
            let $this = self;
            $($wrapped)+.version()
        }

        fn filter(&self) -> $crate::EventFilter {
            let $this = self;
            $($wrapped)+.filter()
        }
    };
}
pub(crate) use wrapped_identity;

impl<P: Projection> Projection for Arc<P> {
    wrapped_identity!(this => (**this));

    fn apply(
        &self,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).apply(event)
    }

    fn apply_batch(
        &self,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        (**self).apply_batch(events)
    }
}

/// The name version `version` of projection `name` runs under: `name` itself for version 1
/// (and 0), `<name>_v<version>` for later ones (`balances_v2`). Runners keep the checkpoints
/// of a version under it; a read model may name its bucket or key prefix after it, so that a
/// reader of the live version finds its model.
pub fn versioned_name(name: &str, version: u32) -> String {
    if version <= 1 {
        name.to_owned()
    } else {
        format!("{name}_v{version}")
    }
}

/// How often and how patiently a failing event is retried before it is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// Pause after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// An event a projection gave up on, with the last error: kept for inspection and replay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// The projection that parked it.
    pub projection: String,
    /// The event.
    pub event: RecordedEvent,
    /// The last error.
    pub error: String,
    /// How many attempts were made.
    pub attempts: u32,
    /// When it was parked.
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
}

/// Applies `event` with retries; after `policy.max_attempts` failures returns it as parked.
pub async fn deliver<P: Projection + ?Sized>(
    projection: &P,
    event: &RecordedEvent,
    policy: &RetryPolicy,
) -> Result<(), ParkedEvent> {
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let span = tracing::debug_span!(
            "cqrs.project",
            projection = projection.name(),
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            version = event.version,
            position = event.position,
            correlation_id = %event.metadata.correlation_id,
            attempt,
        );
        let outcome = tracing::Instrument::instrument(projection.apply(event), span).await;
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) if attempt >= max_attempts => {
                tracing::warn!(
                    projection = projection.name(),
                    position = event.position,
                    %error,
                    attempts = attempt,
                    "parking event after repeated failures"
                );
                return Err(ParkedEvent {
                    projection: projection.name().to_owned(),
                    event: event.clone(),
                    error: error.to_string(),
                    attempts: attempt,
                    parked_at: OffsetDateTime::now_utc(),
                });
            }
            Err(error) => {
                tracing::debug!(projection = projection.name(), %error, attempt, "retrying");
                tokio::time::sleep(policy.backoff(attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Applies `events`, a run of consecutive events, with one [`Projection::apply_batch`]; if that
/// fails, delivers them again one by one with [`deliver`] (retries included), in order, so that
/// exactly the events that keep failing are parked and their neighbours applied. Returns the
/// parked events.
pub async fn deliver_batch<P: Projection + ?Sized>(
    projection: &P,
    events: &[RecordedEvent],
    policy: &RetryPolicy,
) -> Vec<ParkedEvent> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Vec::new();
    };
    if events.len() == 1 {
        return deliver(projection, first, policy)
            .await
            .err()
            .into_iter()
            .collect();
    }
    let span = tracing::debug_span!(
        "cqrs.project_batch",
        projection = projection.name(),
        events = events.len(),
        first_position = first.position,
        last_position = last.position,
    );
    let outcome = tracing::Instrument::instrument(projection.apply_batch(events), span).await;
    let Err(error) = outcome else {
        return Vec::new();
    };
    tracing::debug!(
        projection = projection.name(),
        %error,
        events = events.len(),
        "batch failed; delivering its events one by one"
    );
    let mut parked = Vec::new();
    for event in events {
        if let Err(event) = deliver(projection, event, policy).await {
            parked.push(event);
        }
    }
    parked
}

/// What a [`catch_up`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatchUp {
    /// Store position of the last event read (0 if none).
    pub checkpoint: u64,
    /// Events applied.
    pub applied: u64,
    /// Events parked.
    pub parked: Vec<ParkedEvent>,
}

/// Replays the events of `store` from `from_position` to its head into `projection`: rebuild a
/// projection from scratch (`from_position` 0, into an empty read model), start a new one from
/// history, or replay from a point (positions, or a time with a filter's `recorded_from`).
/// Independent of any live runner.
pub async fn catch_up<S, P>(
    store: &S,
    projection: &P,
    from_position: u64,
    policy: &RetryPolicy,
) -> Result<CatchUp, StoreError>
where
    S: EventStore + ?Sized,
    P: Projection + ?Sized,
{
    let filter = projection.filter();
    let mut events = store.read_all(&filter, from_position).await?;
    let mut outcome = CatchUp::default();
    while let Some(event) = events.try_next().await? {
        outcome.checkpoint = event.position;
        match deliver(projection, &event, policy).await {
            Ok(()) => outcome.applied += 1,
            Err(parked) => outcome.parked.push(parked),
        }
    }
    Ok(outcome)
}

/// Runs a projection live on an [`InMemoryEventStore`]: history from a position, then every new
/// append, in position order.
#[derive(Debug)]
pub struct InMemoryProjectionRunner;

impl InMemoryProjectionRunner {
    /// Starts `projection` at store position `from_position` (1 or 0: from the beginning; a
    /// checkpoint + 1 to resume).
    pub fn spawn<P: Projection>(
        store: &InMemoryEventStore,
        projection: P,
        from_position: u64,
        policy: RetryPolicy,
    ) -> ProjectionHandle<P> {
        Self::spawn_batched(store, projection, from_position, policy, 1)
    }

    /// [`Self::spawn`], handing the projection runs of up to `max_batch` events through
    /// [`Projection::apply_batch`]: each run is what the feed has at hand when the projection
    /// is ready, so a quiet store holds nothing back; the checkpoint moves after the run, and a
    /// failing run is delivered event by event ([`deliver_batch`]).
    pub fn spawn_batched<P: Projection>(
        store: &InMemoryEventStore,
        projection: P,
        from_position: u64,
        policy: RetryPolicy,
        max_batch: usize,
    ) -> ProjectionHandle<P> {
        let max_batch = max_batch.max(1);
        let projection = Arc::new(projection);
        let start = from_position.max(1) - 1;
        let (checkpoint_tx, checkpoint) = watch::channel(start);
        let parked = Arc::new(Mutex::new(Vec::new()));
        let filter = projection.filter();
        let mut feed = Box::pin(store.subscribe(from_position));
        let task = {
            let projection = Arc::clone(&projection);
            let parked = Arc::clone(&parked);
            tokio::spawn(async move {
                let mut run = Vec::with_capacity(max_batch);
                while let Some(next) = feed.next().await {
                    // This event, then whatever else is at hand, up to the batch size.
                    let mut next = Some(next);
                    let mut last = 0;
                    while let Some(item) = next.take() {
                        let event = match item {
                            Ok(event) => event,
                            Err(error) => {
                                tracing::error!(projection = projection.name(), %error, "projection feed failed; stopping");
                                return Err(error);
                            }
                        };
                        last = event.position;
                        if filter.matches(&event) {
                            run.push(event);
                        }
                        if run.len() < max_batch {
                            next = feed.next().now_or_never().flatten();
                        }
                    }
                    let failed = deliver_batch(&*projection, &run, &policy).await;
                    run.clear();
                    if !failed.is_empty() {
                        parked
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .extend(failed);
                    }
                    checkpoint_tx.send_replace(last);
                }
                Ok(())
            })
        };
        ProjectionHandle {
            projection,
            checkpoint,
            parked,
            task,
            policy,
        }
    }
}

/// Control of a running projection.
#[derive(Debug)]
pub struct ProjectionHandle<P> {
    projection: Arc<P>,
    checkpoint: watch::Receiver<u64>,
    parked: Arc<Mutex<Vec<ParkedEvent>>>,
    task: JoinHandle<Result<(), StoreError>>,
    policy: RetryPolicy,
}

/// The projection did not reach a position in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "projection `{projection}` reached position {reached}, not {wanted}, within {timeout:?}; it may be slow, stopped or parked on failures"
)]
pub struct WaitTimeout {
    /// The projection.
    pub projection: String,
    /// The position waited for.
    pub wanted: u64,
    /// Where it was when the wait ended.
    pub reached: u64,
    /// How long the wait was.
    pub timeout: Duration,
}

impl<P: Projection> ProjectionHandle<P> {
    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The store position of the last event processed (applied, parked or filtered out).
    pub fn checkpoint(&self) -> u64 {
        *self.checkpoint.borrow()
    }

    /// Read-your-writes: waits until the projection has processed `position` (e.g. the position
    /// of the last event a command committed), or `timeout` passes.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<(), WaitTimeout> {
        let mut checkpoint = self.checkpoint.clone();
        let reached = tokio::time::timeout(timeout, checkpoint.wait_for(|&p| p >= position)).await;
        match reached {
            Ok(Ok(_)) => Ok(()),
            _ => Err(WaitTimeout {
                projection: self.projection.name().to_owned(),
                wanted: position,
                reached: self.checkpoint(),
                timeout,
            }),
        }
    }

    /// The events parked so far.
    pub fn parked(&self) -> Vec<ParkedEvent> {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Delivers the parked events again (after a fix); those that now succeed are removed.
    /// Returns how many succeeded.
    pub async fn replay_parked(&self) -> usize {
        let parked =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner));
        let mut still_failing = Vec::new();
        let mut succeeded = 0;
        for entry in parked {
            match deliver(&*self.projection, &entry.event, &self.policy).await {
                Ok(()) => succeeded += 1,
                Err(again) => still_failing.push(again),
            }
        }
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(still_failing);
        succeeded
    }

    /// Stops the projection and returns its checkpoint, to resume from `checkpoint + 1`.
    pub async fn stop(self) -> u64 {
        self.task.abort();
        let checkpoint = self.checkpoint.clone();
        let _aborted = self.task.await;
        *checkpoint.borrow()
    }
}

/// The live version of each projection of one process, with the switch-over rule of the
/// JetStream runner for in-memory runners: a new version ([`Projection::version`]) built beside
/// the live one becomes live only once it has caught up with it, and the version it replaces
/// is stopped first, so that a reader that looks the live version up before each read never
/// sees a gap or a step back. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct LiveVersions {
    live: Arc<Mutex<HashMap<String, u32>>>,
}

/// Why [`LiveVersions::switch_over`] did not switch.
#[derive(Debug)]
pub enum NotSwitched<P> {
    /// Refused before anything changed: the live version's runner comes back, still running.
    Refused {
        /// The live version's runner.
        live: ProjectionHandle<P>,
        /// Why.
        reason: NotSwitchedReason,
    },
    /// The live version was stopped, but the new one did not reach where it stopped in time:
    /// the live version is unchanged (and no longer moves); switch again with a new handle of
    /// it, or restart it from `stopped_at + 1`.
    Late {
        /// Where the live version stopped.
        stopped_at: u64,
        /// The new version's wait.
        error: WaitTimeout,
    },
}

/// Why a switch-over was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotSwitchedReason {
    /// The new version is behind the live one: run it until it has caught up.
    NotCaughtUp {
        /// The live version's checkpoint.
        live: u64,
        /// The new version's.
        new: u64,
    },
    /// The two are not versions of one projection, or the new one is not newer.
    NotANewerVersion,
}

impl LiveVersions {
    /// No switch-over yet: every projection's live version is 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// The live version of projection `name`.
    pub fn live(&self, name: &str) -> u32 {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(1)
    }

    /// Makes `new`'s version of the projection live in place of `live`'s, if `new` has caught
    /// up with `live` (its checkpoint at or past `live`'s): stops `live`, waits (up to
    /// `timeout`) until `new` has processed everything `live` had, then records the switch.
    /// Returns the checkpoint `live` stopped at. The read model of the old version is the
    /// application's to drop.
    pub async fn switch_over<P: Projection, Q: Projection>(
        &self,
        live: ProjectionHandle<P>,
        new: &ProjectionHandle<Q>,
        timeout: Duration,
    ) -> Result<u64, NotSwitched<P>> {
        let refuse = |live, reason| Err(NotSwitched::Refused { live, reason });
        let (old, next) = (live.projection(), new.projection());
        if old.name() != next.name() || next.version() <= old.version() {
            return refuse(live, NotSwitchedReason::NotANewerVersion);
        }
        if new.checkpoint() < live.checkpoint() {
            let reason = NotSwitchedReason::NotCaughtUp {
                live: live.checkpoint(),
                new: new.checkpoint(),
            };
            return refuse(live, reason);
        }
        let name = next.name().to_owned();
        let version = next.version();
        let stopped_at = live.stop().await;
        if let Err(error) = new.wait_for(stopped_at, timeout).await {
            return Err(NotSwitched::Late { stopped_at, error });
        }
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name, version);
        Ok(stopped_at)
    }
}

/// A side effect that fires for an event once a projection stored its state.
pub trait Reactor: Send + Sync + 'static {
    /// Performs the side effect. Retried on failure; deduplicated by event id once it succeeds.
    fn react(&self, event: &RecordedEvent)
    -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// A projection followed by a reactor: the reactor fires only after the projection applied the
/// event, is retried (with the event) when it fails, and runs once per event id.
#[derive(Debug)]
pub struct WithReactor<P, R, D> {
    projection: P,
    reactor: R,
    done: D,
}

impl<P, R, D> WithReactor<P, R, D> {
    /// Attaches `reactor` to `projection`; `done` remembers the event ids it already reacted to.
    pub fn new(projection: P, reactor: R, done: D) -> Self {
        Self {
            projection,
            reactor,
            done,
        }
    }

    /// The projection.
    pub fn projection(&self) -> &P {
        &self.projection
    }

    /// The reactor.
    pub fn reactor(&self) -> &R {
        &self.reactor
    }
}

impl<P, R, D> Projection for WithReactor<P, R, D>
where
    P: Projection,
    R: Reactor,
    D: ReadModelStore<()>,
{
    wrapped_identity!(this => this.projection);

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.projection.apply(event).await?;
        let key = event.event_id.to_string();
        if self.done.get(&key).await?.is_some() {
            return Ok(());
        }
        self.reactor.react(event).await?;
        match self.done.put(&key, (), event.position, None).await {
            // Another worker recorded it first: the effect ran at least once, as promised.
            Ok(_) | Err(ReadModelError::Conflict { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}
