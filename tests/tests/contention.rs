//! Contention: many writers on a few hot aggregates, on a spawned nats-server. Nothing
//! acknowledged is lost or doubled, and every failure is a typed error.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::print_stdout)]

use cqrs_core::{CommandError, CommandMetadata, Repository, StoreError, StreamId};
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use cqrs_test_server::NatsServer;
use examples::bank_account::{AccountCommand, AccountEvent, BankAccount};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WRITERS: usize = 64;
const ACCOUNTS: usize = 8;
const COMMANDS_PER_WRITER: usize = 5;

/// What one writer saw: deposits acknowledged per account, commands acknowledged only after
/// an unknown outcome was resolved by retrying them, failures by kind.
#[derive(Default)]
struct Outcome {
    acknowledged: BTreeMap<usize, Vec<i64>>,
    resolved_unknowns: usize,
    failures: BTreeMap<&'static str, usize>,
}

fn kind<E>(error: &CommandError<E>) -> &'static str {
    match error {
        CommandError::Store(error) => store_kind(error),
        CommandError::Rejected(_) => "rejected",
        CommandError::InvalidTransition(_) => "invalid-transition",
        _ => "other",
    }
}

fn store_kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Conflict { .. } => "conflict",
        StoreError::Unavailable { .. } => "unavailable",
        StoreError::OutcomeUnknown { .. } => "outcome-unknown",
        _ => "store",
    }
}

/// One writer: deposits spread over the hot accounts, each bounded in time. A command whose
/// outcome is unknown (or that met an unavailable store) is sent again with the same command id,
/// which resolves it without doubling it.
async fn write(repo: Repository<BankAccount, JetStreamEventStore>, writer: usize) -> Outcome {
    let mut outcome = Outcome::default();
    for c in 0..COMMANDS_PER_WRITER {
        let account = (writer + c) % ACCOUNTS;
        let amount = i64::try_from(writer * 100 + c + 1).unwrap();
        let command = AccountCommand::Deposit { amount };
        let metadata = CommandMetadata::root();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut unknown = false;
        let result = loop {
            let result = tokio::time::timeout_at(
                deadline.into(),
                repo.execute(&format!("acc-{account}"), command.clone(), metadata.clone()),
            )
            .await
            .expect("a command took over 60 s");
            match result {
                Err(CommandError::Store(error)) if error.is_retryable() && !error.is_conflict() => {
                    unknown = true;
                    *outcome.failures.entry(store_kind(&error)).or_default() += 1;
                }
                other => break other,
            }
        };
        match result {
            Ok(_) => {
                outcome.resolved_unknowns += usize::from(unknown);
                outcome
                    .acknowledged
                    .entry(account)
                    .or_default()
                    .push(amount);
            }
            Err(error) => *outcome.failures.entry(kind(&error)).or_default() += 1,
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_accounts_under_64_writers_lose_and_double_nothing() {
    let server = NatsServer::start().await.unwrap();
    let store = JetStreamEventStore::connect(server.url(), StoreConfig::new("bank"))
        .await
        .unwrap();
    let setup = Repository::<BankAccount, _>::new(store.clone());
    for account in 0..ACCOUNTS {
        let open = AccountCommand::Open {
            owner: format!("owner-{account}"),
            overdraft_limit: 0,
        };
        setup
            .execute(&format!("acc-{account}"), open, CommandMetadata::root())
            .await
            .unwrap();
    }

    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            // Each writer has its own repository and cache, like separate processes would.
            let repo = Repository::<BankAccount, _>::new(store.clone())
                .with_conflict_retries(200)
                .with_cache(ACCOUNTS);
            tokio::spawn(write(repo, w))
        })
        .collect();

    let mut acknowledged: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
    let mut failures: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut resolved = 0;
    for writer in writers {
        let outcome = writer.await.expect("a writer panicked");
        resolved += outcome.resolved_unknowns;
        for (account, amounts) in outcome.acknowledged {
            acknowledged.entry(account).or_default().extend(amounts);
        }
        for (kind, n) in outcome.failures {
            *failures.entry(kind).or_default() += n;
        }
    }

    let reader = Repository::<BankAccount, _>::new(store.clone());
    let (mut present, mut lost, mut duplicated) = (0usize, 0usize, 0usize);
    for account in 0..ACCOUNTS {
        let stream = StreamId::new("BankAccount", format!("acc-{account}"));
        let history = reader.history(&stream, 1).await.unwrap();
        let versions: Vec<u64> = history.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=history.len() as u64).collect::<Vec<_>>(),
            "gapless versions"
        );
        let mut stored: Vec<i64> = history
            .iter()
            .filter_map(|e| match e.payload {
                AccountEvent::Deposited { amount } => Some(amount),
                _ => None,
            })
            .collect();
        let mut acked = acknowledged.get(&account).cloned().unwrap_or_default();
        stored.sort_unstable();
        acked.sort_unstable();
        present += stored.len();
        lost += acked.iter().filter(|a| !stored.contains(a)).count();
        duplicated += stored.len() - {
            let mut unique = stored.clone();
            unique.dedup();
            unique.len()
        };
        // Only acknowledged deposits are stored (failed commands left nothing behind).
        assert_eq!(stored, acked, "account {account}");
        let balance = reader.load(&stream).await.unwrap().state.balance();
        assert_eq!(
            balance,
            Some(acked.iter().sum::<i64>()),
            "account {account}"
        );
    }
    let acked_total: usize = acknowledged.values().map(Vec::len).sum();
    println!(
        "contention: writers={WRITERS} accounts={ACCOUNTS} commands={} acknowledged={acked_total} present={present} lost={lost} duplicated={duplicated} resolved_unknowns={resolved} failures={failures:?} elapsed={:?}",
        WRITERS * COMMANDS_PER_WRITER,
        started.elapsed()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    // With 200 conflict retries per command, contention alone never exhausts them, and every
    // unknown outcome was resolved by the retry.
    assert_eq!(
        acked_total,
        WRITERS * COMMANDS_PER_WRITER,
        "failures: {failures:?}"
    );
    assert_eq!(present, acked_total);
}
