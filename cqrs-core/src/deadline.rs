//! Deadlines: commands a process manager schedules for a later time — "cancel the order if it is
//! not paid within 30 minutes" — and cancels when what it waits for arrives.
//!
//! A process manager whose flows need time issues [`Timed`] commands: `Now(command)`, `At {
//! deadline, at, command }` or `Cancel { deadline }`. [`WithDeadlines`] dispatches them: a
//! command now goes to the inner dispatcher, a deadline to a [`Deadlines`] store, keyed by the
//! flow (its correlation id) and the deadline's name, so that scheduling a name again replaces
//! it and cancelling it removes it. When a deadline is due, its command goes out with the
//! metadata it was scheduled with — the flow's correlation id and a command id derived from
//! the event that scheduled it — so a deadline that fires twice is applied once.
//!
//! [`InMemoryDeadlines`] keeps deadlines in memory on a clock that tests move
//! ([`InMemoryDeadlines::advance`]).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use cqrs_core::deadline::{Deadline, DeadlineKey, Deadlines, InMemoryDeadlines};
//! use cqrs_core::doc::{Counter, CounterCommand};
//! use cqrs_core::{CommandMetadata, InMemoryEventStore, Repository, StreamId, Targeted};
//! use std::time::Duration;
//!
//! let counters = Repository::<Counter, _>::new(InMemoryEventStore::new());
//! let deadlines = InMemoryDeadlines::new();
//! let flow = CommandMetadata::root();
//! let in_ten_minutes = deadlines.now() + Duration::from_secs(600);
//! deadlines
//!     .schedule(Deadline {
//!         key: DeadlineKey::new(flow.correlation_id, "reminder"),
//!         at: in_ten_minutes,
//!         command: Targeted::<Counter>::new("c-1", CounterCommand::Add(1)),
//!         metadata: flow,
//!     })
//!     .await?;
//! assert_eq!(deadlines.advance(Duration::from_secs(599), &counters).await?, 0);
//! assert_eq!(deadlines.advance(Duration::from_secs(1), &counters).await?, 1);
//! assert_eq!(counters.load(&StreamId::new("Counter", "c-1")).await?.state.value, 1);
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use crate::metadata::CommandMetadata;
use crate::process::CommandDispatcher;
use crate::projection::HandlerError;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// A process manager's command, now or at a time.
#[derive(Debug, Clone, PartialEq)]
pub enum Timed<C> {
    /// Send `C` now.
    Now(C),
    /// Send `command` at `at`, unless the flow cancels or reschedules `deadline` first. A flow
    /// has at most one deadline of a name: scheduling it again replaces it.
    At {
        /// The deadline's name within the flow, e.g. `"payment"`.
        deadline: String,
        /// When it is due.
        at: OffsetDateTime,
        /// What to send then.
        command: C,
    },
    /// Cancel the flow's deadline `deadline`; nothing if it fired already or never existed.
    Cancel {
        /// The deadline's name within the flow.
        deadline: String,
    },
}

/// Which deadline: the flow it belongs to (its correlation id) and its name there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadlineKey {
    /// The flow's correlation id.
    pub correlation_id: Uuid,
    /// The deadline's name within the flow.
    pub name: String,
}

impl DeadlineKey {
    /// Deadline `name` of the flow `correlation_id`.
    pub fn new(correlation_id: Uuid, name: impl Into<String>) -> Self {
        Self {
            correlation_id,
            name: name.into(),
        }
    }
}

/// A scheduled command.
#[derive(Debug, Clone, PartialEq)]
pub struct Deadline<C> {
    /// Which deadline.
    pub key: DeadlineKey,
    /// When it is due.
    pub at: OffsetDateTime,
    /// What is sent then.
    pub command: C,
    /// The metadata it is sent with (that of the reaction that scheduled it).
    pub metadata: CommandMetadata,
}

/// Where deadlines wait until they are due.
pub trait Deadlines<C>: Send + Sync + 'static {
    /// Schedules `deadline`, replacing a pending one with the same key.
    fn schedule(
        &self,
        deadline: Deadline<C>,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Cancels the pending deadline `key`, if there is one.
    fn cancel(&self, key: &DeadlineKey) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Dispatches [`Timed`] commands: a command now through `dispatcher`, deadlines to
/// `deadlines`, keyed by the flow's correlation id (from the metadata) and their name.
#[derive(Debug, Clone)]
pub struct WithDeadlines<D, S> {
    dispatcher: D,
    deadlines: S,
}

impl<D, S> WithDeadlines<D, S> {
    /// Commands now through `dispatcher`, deadlines to `deadlines`.
    pub fn new(dispatcher: D, deadlines: S) -> Self {
        Self {
            dispatcher,
            deadlines,
        }
    }

    /// The deadline store.
    pub fn deadlines(&self) -> &S {
        &self.deadlines
    }

    /// The dispatcher of commands sent now, and of due deadlines.
    pub fn dispatcher(&self) -> &D {
        &self.dispatcher
    }
}

impl<C, D, S> CommandDispatcher<Timed<C>> for WithDeadlines<D, S>
where
    C: Send + 'static,
    D: CommandDispatcher<C>,
    S: Deadlines<C>,
{
    async fn dispatch(
        &self,
        command: Timed<C>,
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        match command {
            Timed::Now(command) => self.dispatcher.dispatch(command, metadata).await,
            Timed::At {
                deadline,
                at,
                command,
            } => {
                tracing::debug!(%deadline, %at, correlation_id = %metadata.correlation_id, "scheduling");
                self.deadlines
                    .schedule(Deadline {
                        key: DeadlineKey::new(metadata.correlation_id, deadline),
                        at,
                        command,
                        metadata,
                    })
                    .await
            }
            Timed::Cancel { deadline } => {
                tracing::debug!(%deadline, correlation_id = %metadata.correlation_id, "cancelling");
                self.deadlines
                    .cancel(&DeadlineKey::new(metadata.correlation_id, deadline))
                    .await
            }
        }
    }
}

/// Deadlines in memory, on a clock that starts at the time of creation and moves only when
/// told to ([`advance`](Self::advance)): for tests and in-process flows. Clones share the
/// deadlines and the clock.
#[derive(Debug)]
pub struct InMemoryDeadlines<C> {
    shared: Arc<Mutex<Shared<C>>>,
}

#[derive(Debug)]
struct Shared<C> {
    now: OffsetDateTime,
    pending: BTreeMap<DeadlineKey, Deadline<C>>,
}

impl<C> Clone for InMemoryDeadlines<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C> Default for InMemoryDeadlines<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> InMemoryDeadlines<C> {
    /// No deadlines; the clock at the current time.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                now: OffsetDateTime::now_utc(),
                pending: BTreeMap::new(),
            })),
        }
    }

    fn shared(&self) -> std::sync::MutexGuard<'_, Shared<C>> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The clock's time.
    pub fn now(&self) -> OffsetDateTime {
        self.shared().now
    }

    /// The pending deadlines, soonest first.
    pub fn pending(&self) -> Vec<Deadline<C>>
    where
        C: Clone,
    {
        let mut pending: Vec<_> = self.shared().pending.values().cloned().collect();
        pending.sort_by_key(|d| d.at);
        pending
    }

    /// Moves the clock on by `by` and sends every deadline due by then through `dispatcher`,
    /// soonest first; returns how many went out. A deadline whose dispatch fails stays pending
    /// and is tried again on the next call (the error is returned after the others went).
    pub async fn advance<D: CommandDispatcher<C>>(
        &self,
        by: Duration,
        dispatcher: &D,
    ) -> Result<usize, HandlerError>
    where
        C: Clone,
    {
        let due = {
            let mut shared = self.shared();
            shared.now += by;
            let now = shared.now;
            let keys: Vec<DeadlineKey> = shared
                .pending
                .iter()
                .filter(|(_, d)| d.at <= now)
                .map(|(k, _)| k.clone())
                .collect();
            let mut due: Vec<Deadline<C>> = keys
                .iter()
                .filter_map(|k| shared.pending.remove(k))
                .collect();
            due.sort_by_key(|d| d.at);
            due
        };
        let mut sent = 0;
        let mut failure = None;
        for deadline in due {
            match dispatcher
                .dispatch(deadline.command.clone(), deadline.metadata.clone())
                .await
            {
                Ok(()) => sent += 1,
                Err(error) => {
                    tracing::warn!(deadline = %deadline.key.name, correlation_id = %deadline.key.correlation_id, %error, "a due deadline could not be sent; it stays pending");
                    // Unless the flow scheduled it anew meanwhile.
                    self.shared()
                        .pending
                        .entry(deadline.key.clone())
                        .or_insert(deadline);
                    failure = Some(error);
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(sent),
        }
    }
}

impl<C: Send + 'static> Deadlines<C> for InMemoryDeadlines<C> {
    async fn schedule(&self, deadline: Deadline<C>) -> Result<(), HandlerError> {
        self.shared().pending.insert(deadline.key.clone(), deadline);
        Ok(())
    }

    async fn cancel(&self, key: &DeadlineKey) -> Result<(), HandlerError> {
        self.shared().pending.remove(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::{Counter, CounterCommand};
    use crate::process::Targeted;
    use crate::{InMemoryEventStore, Repository, StreamId};
    use std::sync::atomic::{AtomicBool, Ordering};

    type Add = Targeted<Counter>;

    fn add(n: u64) -> Add {
        Targeted::new("c", CounterCommand::Add(n))
    }

    async fn value(counters: &Repository<Counter, InMemoryEventStore>) -> u64 {
        counters
            .load(&StreamId::new("Counter", "c"))
            .await
            .expect("load")
            .state
            .value
    }

    /// Fails while `failing` is set, else delivers to the repository.
    struct Flaky {
        failing: AtomicBool,
        counters: Repository<Counter, InMemoryEventStore>,
    }

    impl CommandDispatcher<Add> for Flaky {
        async fn dispatch(
            &self,
            command: Add,
            metadata: CommandMetadata,
        ) -> Result<(), HandlerError> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(HandlerError::new("unavailable"));
            }
            self.counters.dispatch(command, metadata).await
        }
    }

    #[tokio::test]
    async fn deadlines_are_replaced_cancelled_and_sent_when_due() {
        let counters = Repository::<Counter, _>::new(InMemoryEventStore::new());
        let deadlines = InMemoryDeadlines::new();
        let timed = WithDeadlines::new(counters.clone(), deadlines.clone());
        // Each reaction of a flow has its own command id and the flow's correlation id.
        let flow_id = CommandMetadata::root().correlation_id;
        let in_flow = |correlation_id| {
            let mut metadata = CommandMetadata::root();
            metadata.correlation_id = correlation_id;
            metadata
        };
        let flow = || in_flow(flow_id);
        let minutes = |m: u64| deadlines.now() + Duration::from_secs(m * 60);
        let at = |name: &str, m, n| Timed::At {
            deadline: name.to_owned(),
            at: minutes(m),
            command: add(n),
        };

        timed
            .dispatch(Timed::Now(add(1)), flow())
            .await
            .expect("now");
        assert_eq!(value(&counters).await, 1);
        timed.dispatch(at("a", 10, 10), flow()).await.expect("a");
        // Scheduled again: replaced, not added.
        timed
            .dispatch(at("a", 20, 100), flow())
            .await
            .expect("a again");
        timed.dispatch(at("b", 5, 1000), flow()).await.expect("b");
        // Another flow's deadline of the same name is its own.
        let other = CommandMetadata::root();
        timed
            .dispatch(at("a", 5, 5), other.clone())
            .await
            .expect("other a");
        timed
            .dispatch(
                Timed::Cancel {
                    deadline: "b".into(),
                },
                flow(),
            )
            .await
            .expect("cancel b");
        assert_eq!(deadlines.pending().len(), 2);

        assert_eq!(
            deadlines
                .advance(Duration::from_secs(5 * 60), &counters)
                .await
                .expect("5 min"),
            1
        );
        assert_eq!(value(&counters).await, 6, "the other flow's `a` only");
        assert_eq!(
            deadlines
                .advance(Duration::from_secs(10 * 60), &counters)
                .await
                .expect("15 min"),
            0
        );
        assert_eq!(
            deadlines
                .advance(Duration::from_secs(5 * 60), &counters)
                .await
                .expect("20 min"),
            1
        );
        assert_eq!(
            value(&counters).await,
            106,
            "the replacement of `a`, not the first one"
        );
        assert!(deadlines.pending().is_empty());
    }

    #[tokio::test]
    async fn a_deadline_that_cannot_be_sent_stays_pending_and_is_sent_once() {
        let counters = Repository::<Counter, _>::new(InMemoryEventStore::new());
        let flaky = Flaky {
            failing: AtomicBool::new(true),
            counters: counters.clone(),
        };
        let deadlines = InMemoryDeadlines::new();
        let metadata = CommandMetadata::root();
        deadlines
            .schedule(Deadline {
                key: DeadlineKey::new(metadata.correlation_id, "d"),
                at: deadlines.now(),
                command: add(7),
                metadata,
            })
            .await
            .expect("schedule");
        deadlines
            .advance(Duration::ZERO, &flaky)
            .await
            .expect_err("not sent");
        assert_eq!(deadlines.pending().len(), 1, "still pending");
        flaky.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            deadlines
                .advance(Duration::ZERO, &flaky)
                .await
                .expect("sent"),
            1
        );
        assert_eq!(
            deadlines
                .advance(Duration::from_secs(60), &flaky)
                .await
                .expect("none"),
            0
        );
        assert_eq!(value(&counters).await, 7);
    }
}
