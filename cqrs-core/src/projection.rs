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

/// Why a handler could not process an event. The runner retries it with backoff; a
/// [transient](Self::is_transient) failure (the store or the network unavailable) is retried
/// for [`RetryPolicy::transient_patience`] without counting toward
/// [`RetryPolicy::max_attempts`], any other is parked after the configured number of attempts.
///
/// A wrapped error ([`from_error`](Self::from_error)) is transparent: its message is the
/// handler error's, and its source the handler error's source, so a chain prints each cause
/// once; [`get_ref`](Self::get_ref) reaches the wrapped error itself.
#[derive(Debug)]
pub struct HandlerError {
    cause: Cause,
    transient: bool,
}

#[derive(Debug)]
enum Cause {
    Message(String),
    Wrapped(BoxError),
}

impl HandlerError {
    /// An error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            cause: Cause::Message(message.into()),
            transient: false,
        }
    }

    /// Wraps another error.
    pub fn from_error(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            cause: Cause::Wrapped(Box::new(error)),
            transient: false,
        }
    }

    /// Marks the failure transient: retrying the same event later may succeed although nothing
    /// about the event or the handler changed (a dependency was unavailable, a write raced).
    /// Errors converted from a retryable [`StoreError`] and from a read model's conflict or
    /// backend failure are transient already.
    #[must_use]
    pub fn transient(mut self) -> Self {
        self.transient = true;
        self
    }

    /// Whether the failure is transient (see [`transient`](Self::transient)).
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// The wrapped error, if this one was made by [`from_error`](Self::from_error) (or a
    /// conversion), e.g. to downcast it.
    pub fn get_ref(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match &self.cause {
            Cause::Message(_) => None,
            Cause::Wrapped(error) => Some(&**error),
        }
    }
}

impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.cause {
            Cause::Message(message) => f.write_str(message),
            Cause::Wrapped(error) => std::fmt::Display::fmt(error, f),
        }
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Message(_) => None,
            Cause::Wrapped(error) => error.source(),
        }
    }
}

impl From<ReadModelError> for HandlerError {
    fn from(error: ReadModelError) -> Self {
        // A raced write or a backend that failed may well succeed on the next attempt; a value
        // that cannot be (de)serialised or a key the backend refuses will not.
        let transient = matches!(
            error,
            ReadModelError::Conflict { .. } | ReadModelError::Backend { .. }
        );
        Self {
            cause: Cause::Wrapped(Box::new(error)),
            transient,
        }
    }
}

impl From<StoreError> for HandlerError {
    fn from(error: StoreError) -> Self {
        Self {
            transient: error.is_retryable(),
            cause: Cause::Wrapped(Box::new(error)),
        }
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
///
/// Two kinds of failure are told apart ([`HandlerError::is_transient`]): a transient one (the
/// store unavailable, an outcome unknown, a raced write: a saga's command during a failover, a
/// read model's bucket during a partition) is retried for [`transient_patience`] after the
/// event first failed without using up attempts, so that an outage parks nothing; any other
/// failure, and a transient one that outlasts the patience, counts toward
/// [`max_attempts`], after which the event is parked. The pause doubles after each failure of
/// either kind, up to [`max_backoff`]. An event waiting out its retries holds back the events
/// behind it on its runner's partition: delivery stays in order.
///
/// [`transient_patience`]: Self::transient_patience
/// [`max_attempts`]: Self::max_attempts
/// [`max_backoff`]: Self::max_backoff
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, including the first (at least 1).
    pub max_attempts: u32,
    /// Pause after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// Longest pause.
    pub max_backoff: Duration,
    /// How long after an event first failed its transient failures are retried without
    /// counting as attempts (zero: they count like any other).
    pub transient_patience: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, pauses from 100 ms doubling up to 10 s, transient failures retried for
    /// 5 minutes (leader elections, rolling restarts and short partitions park nothing).
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            transient_patience: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The pause after failed try number `attempt` (1-based).
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
    /// The last error, with its causes ([`crate::error::report`]).
    pub error: String,
    /// How many times it was tried, transient failures included.
    pub attempts: u32,
    /// When it was parked.
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: OffsetDateTime,
}

/// Applies `event` with retries (see [`RetryPolicy`] for which failures count as attempts);
/// once they are used up returns it as parked. Dropping the future abandons the event
/// unapplied, as a crash would: it is delivered again from the checkpoint.
pub async fn deliver<P: Projection + ?Sized>(
    projection: &P,
    event: &RecordedEvent,
    policy: &RetryPolicy,
) -> Result<(), ParkedEvent> {
    let max_attempts = policy.max_attempts.max(1);
    // Attempts that counted toward `max_attempts`, and every try (for the pauses).
    let mut attempt = 1;
    let mut tries = 1;
    let mut failing_since = None;
    loop {
        let span = tracing::debug_span!(
            "cqrs.project",
            projection = projection.name(),
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            version = event.version,
            position = event.position,
            correlation_id = %event.metadata.correlation_id,
            attempt = tries,
        );
        let outcome = tracing::Instrument::instrument(projection.apply(event), span).await;
        let Err(error) = outcome else {
            return Ok(());
        };
        let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
        let patient = error.is_transient() && since.elapsed() < policy.transient_patience;
        if !patient && attempt >= max_attempts {
            let error = crate::error::report(&error);
            tracing::warn!(
                projection = projection.name(),
                position = event.position,
                %error,
                attempts = tries,
                "parking event after repeated failures"
            );
            return Err(ParkedEvent {
                projection: projection.name().to_owned(),
                event: event.clone(),
                error,
                attempts: tries,
                parked_at: OffsetDateTime::now_utc(),
            });
        }
        tracing::debug!(
            projection = projection.name(),
            error = %crate::error::report(&error),
            attempt = tries,
            transient = patient,
            "retrying"
        );
        tokio::time::sleep(policy.backoff(tries)).await;
        if !patient {
            attempt += 1;
        }
        tries += 1;
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
