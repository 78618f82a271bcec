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

/// What one writer saw: deposits acknowledged per account, failures by kind.
#[derive(Default)]
struct Outcome {
    acknowledged: BTreeMap<usize, Vec<i64>>,
    failures: BTreeMap<&'static str, usize>,
}

fn kind<E>(error: &CommandError<E>) -> &'static str {
    match error {
        CommandError::Store(StoreError::Conflict { .. }) => "conflict",
        CommandError::Store(StoreError::Unavailable { .. }) => "unavailable",
        CommandError::Store(StoreError::OutcomeUnknown { .. }) => "outcome-unknown",
        CommandError::Store(_) => "store",
        CommandError::Rejected(_) => "rejected",
        CommandError::InvalidTransition(_) => "invalid-transition",
        _ => "other",
    }
}

/// One writer: deposits spread over the hot accounts, each bounded in time.
async fn write(repo: Repository<BankAccount, JetStreamEventStore>, writer: usize) -> Outcome {
    let mut outcome = Outcome::default();
    for c in 0..COMMANDS_PER_WRITER {
        let account = (writer + c) % ACCOUNTS;
        let amount = i64::try_from(writer * 100 + c + 1).unwrap();
        let command = AccountCommand::Deposit { amount };
        let result = tokio::time::timeout(
            Duration::from_secs(60),
            repo.execute(&format!("acc-{account}"), command, CommandMetadata::root()),
        )
        .await
        .expect("a command took over 60 s");
        match result {
            Ok(_) => outcome
                .acknowledged
                .entry(account)
                .or_default()
                .push(amount),
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
    for writer in writers {
        let outcome = writer.await.expect("a writer panicked");
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
        "contention: writers={WRITERS} accounts={ACCOUNTS} commands={} acknowledged={acked_total} present={present} lost={lost} duplicated={duplicated} failures={failures:?} elapsed={:?}",
        WRITERS * COMMANDS_PER_WRITER,
        started.elapsed()
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    // With 200 retries per command, contention alone never exhausts them.
    assert_eq!(
        acked_total,
        WRITERS * COMMANDS_PER_WRITER,
        "failures: {failures:?}"
    );
}
