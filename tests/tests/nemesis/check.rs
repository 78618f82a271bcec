//! What the store holds against what the writers attempted and were told.

use cqrs_core::{CommandMetadata, IdempotencyKey, Repository, StoreError, StreamId};
use cqrs_nats::JetStreamEventStore;
use examples::bank_account::BankAccount;
use examples::order_fulfilment::{Order, OrderEvent};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// The commands of one aggregate: every command id attempted, and those acknowledged.
#[derive(Debug, Default, Clone)]
pub(crate) struct Commands {
    /// Every command id a writer sent at least once.
    pub(crate) attempted: Vec<Uuid>,
    /// The command ids a writer was told succeeded.
    pub(crate) acknowledged: Vec<Uuid>,
}

/// Counts over every checked aggregate.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally {
    /// Acknowledged commands.
    pub(crate) acknowledged: usize,
    /// Commands attempted (acknowledged or not).
    pub(crate) attempted: usize,
    /// Events present that some writer's command made (the opening events aside).
    pub(crate) present: usize,
    /// Acknowledged commands whose event is missing.
    pub(crate) lost: usize,
    /// Events present more than once.
    pub(crate) duplicated: usize,
    /// Events present that no writer attempted.
    pub(crate) phantom: usize,
    /// Commands never acknowledged whose event is present (their outcome was unknown).
    pub(crate) unacknowledged_present: usize,
    /// Aggregates whose versions are not 1, 2, 3, ...
    pub(crate) gaps: usize,
    /// Events of the accounts (opening included), for the projection's count.
    pub(crate) account_events: usize,
    /// Events of the orders, the saga's shipments included.
    pub(crate) order_events: usize,
    /// Orders paid.
    pub(crate) paid: usize,
    /// Paid orders shipped exactly once, by the saga's derived command.
    pub(crate) shipped_once: usize,
    /// The ids of the writers' events present.
    pub(crate) present_ids: BTreeSet<Uuid>,
    /// The ids of the acknowledged events that are missing.
    pub(crate) lost_events: Vec<Uuid>,
    /// Paid orders with no shipment at all.
    pub(crate) unshipped: Vec<String>,
    /// What went wrong, in words.
    pub(crate) problems: Vec<String>,
}

/// The id of the first event of the command with id `command`.
pub(crate) fn event_id(command: Uuid) -> Uuid {
    IdempotencyKey::new(command.to_string()).event_id(0)
}

impl Tally {
    /// Checks that `versions` are 1, 2, 3, ...
    fn versions(&mut self, name: &str, versions: &[u64]) {
        if !versions.iter().zip(1..).all(|(v, expected)| *v == expected) {
            self.gaps += 1;
            self.problems
                .push(format!("{name}: versions not gapless: {versions:?}"));
        }
    }

    /// Counts the event ids the writers' commands made on one aggregate (`written`) against
    /// those `commands`.
    fn count(&mut self, name: &str, written: &[Uuid], commands: &Commands) {
        self.present += written.len();
        let attempted: BTreeSet<Uuid> = commands.attempted.iter().copied().map(event_id).collect();
        let acknowledged: BTreeSet<Uuid> = commands
            .acknowledged
            .iter()
            .copied()
            .map(event_id)
            .collect();
        self.attempted += attempted.len();
        self.acknowledged += acknowledged.len();
        let mut seen: BTreeMap<Uuid, usize> = BTreeMap::new();
        for id in written {
            *seen.entry(*id).or_default() += 1;
            self.present_ids.insert(*id);
        }
        for (id, n) in &seen {
            if !attempted.contains(id) {
                self.phantom += n;
                self.problems.push(format!("{name}: phantom event {id}"));
            } else if !acknowledged.contains(id) {
                self.unacknowledged_present += 1;
            }
            if *n > 1 {
                self.duplicated += n - 1;
                self.problems
                    .push(format!("{name}: event {id} present {n} times"));
            }
        }
        for id in &acknowledged {
            if !seen.contains_key(id) {
                self.lost += 1;
                self.lost_events.push(*id);
                self.problems
                    .push(format!("{name}: acknowledged event {id} lost"));
            }
        }
    }
}

/// Counts every account (opened by one setup event) and every order in `store`.
///
/// # Errors
///
/// If a history cannot be read.
pub(crate) async fn tally(
    store: &JetStreamEventStore,
    accounts: &BTreeMap<String, Commands>,
    orders: &BTreeMap<String, Commands>,
) -> Result<Tally, StoreError> {
    let mut tally = Tally::default();
    let bank = Repository::<BankAccount, _>::new(store.clone());
    for (account, commands) in accounts {
        let history = bank
            .history(&StreamId::new("BankAccount", account.clone()), 1)
            .await?;
        tally.account_events += history.len();
        tally.versions(
            account,
            &history.iter().map(|e| e.version).collect::<Vec<_>>(),
        );
        // The opening event is the setup's.
        let ids: Vec<Uuid> = history.iter().skip(1).map(|e| e.event_id).collect();
        tally.count(account, &ids, commands);
    }
    let shop = Repository::<Order, _>::new(store.clone());
    for (order, commands) in orders {
        let history = shop
            .history(&StreamId::new("Order", order.clone()), 1)
            .await?;
        tally.order_events += history.len();
        tally.versions(
            order,
            &history.iter().map(|e| e.version).collect::<Vec<_>>(),
        );
        // The saga's shipments are checked apart: they are no writer's.
        let (shipped, written): (Vec<_>, Vec<_>) = history
            .iter()
            .partition(|e| matches!(e.payload, OrderEvent::Shipped { .. }));
        let ids: Vec<Uuid> = written.iter().map(|e| e.event_id).collect();
        tally.count(order, &ids, commands);
        let paid = written
            .iter()
            .find(|e| matches!(e.payload, OrderEvent::Paid { .. }));
        if let Some(paid) = paid {
            tally.paid += 1;
            let by_saga =
                CommandMetadata::reaction("shipping", &paid.metadata, paid.event_id, 0).command_id;
            if shipped.len() == 1 && shipped[0].metadata.command_id == Some(by_saga) {
                tally.shipped_once += 1;
            } else {
                if shipped.is_empty() {
                    tally.unshipped.push(order.clone());
                }
                tally.problems.push(format!(
                    "{order}: paid, shipped {} times (by the saga: {})",
                    shipped.len(),
                    shipped
                        .iter()
                        .filter(|e| e.metadata.command_id == Some(by_saga))
                        .count()
                ));
            }
        } else if !shipped.is_empty() {
            tally
                .problems
                .push(format!("{order}: shipped without a payment"));
        }
    }
    Ok(tally)
}
