//! The bank-account balance projection that the fault tests (crash, failover) run through a
//! fault and then compare with a rebuild and with the acknowledged deposits.

use cqrs_core::projection::RetryPolicy;
use cqrs_core::read_model::{
    Applied, InMemoryReadModelStore, ReadModelError, ReadModelStore, apply_once,
};
use cqrs_core::{
    EventFilter, HandlerError, IdempotencyKey, Projection, RecordedEvent, Repository, StreamId,
};
use cqrs_nats::{JetStreamEventStore, JetStreamProjectionHandle, ProjectionConfig};
use examples::bank_account::{AccountEvent, BankAccount};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Balance per account, applied once per event position; counts the events it wrote and the
/// redeliveries it skipped.
#[derive(Debug)]
pub struct Balances<S> {
    /// The read model: balance per account id.
    pub model: S,
    skipped: Arc<AtomicUsize>,
    /// What was written, in order: position and event id.
    written: Arc<std::sync::Mutex<Vec<(u64, Uuid)>>>,
}

impl<S: ReadModelStore<i64>> Balances<S> {
    /// The projection into `model`.
    pub fn with_model(model: S) -> Self {
        Self {
            model,
            skipped: Arc::default(),
            written: Arc::default(),
        }
    }

    /// Events written to the model so far.
    pub fn written(&self) -> usize {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Redelivered events skipped because their position was already applied.
    pub fn skipped(&self) -> usize {
        self.skipped.load(Ordering::SeqCst)
    }

    /// The positions and ids of the events written to the model, in the order written: a fault
    /// test names what a live projection missed by comparing them with a rebuild's.
    pub fn positions(&self) -> Vec<(u64, Uuid)> {
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The model as a map, for comparing.
    pub async fn balances(&self) -> Result<BTreeMap<String, i64>, ReadModelError> {
        Ok(self
            .model
            .entries()
            .await?
            .into_iter()
            .map(|(key, entry)| (key, entry.value))
            .collect())
    }
}

impl Balances<InMemoryReadModelStore<i64>> {
    /// The projection into a fresh in-memory model.
    pub fn in_memory() -> Self {
        Self::with_model(InMemoryReadModelStore::new())
    }
}

impl<S: ReadModelStore<i64>> Projection for Balances<S> {
    fn name(&self) -> &'static str {
        "balances"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("BankAccount")
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let amount = match event.decode::<AccountEvent>()?.payload {
            AccountEvent::Deposited { amount } => amount,
            AccountEvent::Withdrawn { amount } => -amount,
            AccountEvent::Opened { .. } | AccountEvent::Closed => 0,
        };
        let applied = apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            old.unwrap_or(0) + amount
        })
        .await?;
        match applied {
            Applied::Written(_) => self
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((event.position, event.event_id)),
            Applied::AlreadyApplied => {
                self.skipped.fetch_add(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// A runner configuration that rides out a fault: applies that fail while the server is down or
/// electing are retried for about half a minute instead of parked, and a short heartbeat lets
/// the runner's lease come back soon after the server does.
pub fn patient_config() -> ProjectionConfig {
    ProjectionConfig::new()
        .retry(RetryPolicy {
            max_attempts: 60,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..RetryPolicy::default()
        })
        .heartbeat(Duration::from_millis(500))
}

/// The balances that the fault tests' writers' deposits make: writer `w`'s command `c` (from 0)
/// deposits `c + 1` on account `acc-<w>-<c mod accounts_per_writer>`.
pub fn expected_balances(
    writers: usize,
    accounts_per_writer: usize,
    commands_per_writer: usize,
) -> BTreeMap<String, i64> {
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for c in 0..commands_per_writer {
        for writer in 0..writers {
            *expected
                .entry(format!("acc-{writer}-{}", c % accounts_per_writer))
                .or_default() += i64::try_from(c + 1).unwrap_or(i64::MAX);
        }
    }
    expected
}

/// How a live projection reached the stream's head after a fault.
#[derive(Debug, Clone, Copy)]
pub struct CaughtUp {
    /// The stream's last sequence when the wait began.
    pub head: u64,
    /// Whether the runner was still running when the wait began (it survived the fault).
    pub alive: bool,
    /// How long reaching the head took.
    pub after: Duration,
}

/// Reads the stream's head, then waits (up to 30 s) until `runner` has processed it.
pub async fn wait_until_caught_up<P: Projection>(
    store: &JetStreamEventStore,
    runner: &JetStreamProjectionHandle<P>,
) -> Result<CaughtUp, String> {
    // Getting the stream fetches its info: the head as of now.
    let head = store
        .jetstream()
        .get_stream(store.stream_name())
        .await
        .map_err(|e| format!("reading the stream's head: {e}"))?
        .cached_info()
        .state
        .last_sequence;
    let since = Instant::now();
    let alive = !runner.is_finished();
    runner
        .wait_for(head, Duration::from_secs(30))
        .await
        .map_err(|e| format!("the live projection never reached the head {head}: {e}"))?;
    Ok(CaughtUp {
        head,
        alive,
        after: since.elapsed(),
    })
}

/// The acknowledged deposits of the fault tests' writers against what the store holds.
#[derive(Debug, Default, Clone, Copy)]
pub struct DepositTally {
    /// Deposits whose command was acknowledged.
    pub acknowledged: usize,
    /// Deposits stored (every event of the accounts but their opening).
    pub present: usize,
    /// Acknowledged deposits missing from the store.
    pub lost: usize,
    /// Deposits stored more than once, or stored without an acknowledged command.
    pub duplicated: usize,
}

impl DepositTally {
    /// Counts `acknowledged` (the command ids of the acknowledged deposits, per account id of a
    /// `BankAccount` opened by one event) against the accounts' histories in `store`: each
    /// deposit is found by the event id derived from its command id. Versions must be gapless.
    pub async fn count(
        &mut self,
        store: &JetStreamEventStore,
        acknowledged: &BTreeMap<String, Vec<Uuid>>,
    ) -> Result<(), String> {
        let reader = Repository::<BankAccount, _>::new(store.clone());
        for (account, commands) in acknowledged {
            let history = reader
                .history(&StreamId::new("BankAccount", account.clone()), 1)
                .await
                .map_err(|e| format!("loading {account}: {e}"))?;
            let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
            let gapless: Vec<u64> = (1..=versions.len() as u64).collect();
            if versions != gapless {
                return Err(format!(
                    "versions of {account} are not gapless: {versions:?}"
                ));
            }
            // The opening event plus one deposit per acknowledged command, nothing else.
            self.present += history.len() - 1;
            self.duplicated += (history.len() - 1).saturating_sub(commands.len());
            for command_id in commands {
                self.acknowledged += 1;
                let event_id = IdempotencyKey::new(command_id.to_string()).event_id(0);
                match history.iter().filter(|e| e.event_id == event_id).count() {
                    0 => self.lost += 1,
                    1 => {}
                    n => self.duplicated += n - 1,
                }
            }
        }
        Ok(())
    }
}
