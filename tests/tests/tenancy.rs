//! Tenant isolation with NATS accounts and permissions: the operator's account holds the
//! context and runs the tenant read service; tenants `t1` and `t2` each have an account that
//! imports exactly the access `cqrs_nats::tenancy::TenantAccess` lists (see
//! `cqrs_tests::tenancy`). Through the framework each tenant appends, loads and snapshots its own
//! aggregates; each gets a typed `StoreError::PermissionDenied` — at once, not after a timeout —
//! for the other's appends, loads, head reads and snapshots; and the admin, reading the whole
//! stream, finds nothing written across tenants. `tenant_attack.rs` tries everything else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use cqrs_core::{
    AppendTo, CommandError, CommandMetadata, EventFilter, EventStore, ExpectedVersion,
    RecordedEvent, Repository, StoreError, StreamId, UnitOfWork,
};
use cqrs_nats::{ConnectError, JetStreamEventStore};
use cqrs_tests::event;
use cqrs_tests::tenancy::{self, config, tenant_store, user_options};
use examples::bank_account::{AccountCommand, BankAccount};
use futures::TryStreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FAST: Duration = Duration::from_secs(1);
const ACCOUNTS_PER_TENANT: usize = 2;
const DEPOSITS: usize = 3;

fn account(tenant: &str, a: usize) -> StreamId {
    StreamId::of::<BankAccount>(&format!("acc-{a}"), Some(tenant))
}

/// What the denials looked like: the operations, and the slowest.
#[derive(Default)]
struct Denials {
    operations: BTreeMap<String, usize>,
    slowest: Duration,
    example: String,
}

impl Denials {
    /// Asserts `result` is a permission denial that came fast, and records it.
    #[track_caller]
    fn check<T: std::fmt::Debug>(
        &mut self,
        what: &str,
        took: Duration,
        result: Result<T, StoreError>,
    ) {
        match result {
            Err(StoreError::PermissionDenied {
                operation, reason, ..
            }) => {
                assert!(
                    reason.contains("check the publish/subscribe permissions"),
                    "{what}: {reason}"
                );
                assert!(took < FAST, "{what} was denied only after {took:?}");
                *self.operations.entry(operation.to_owned()).or_default() += 1;
                self.slowest = self.slowest.max(took);
                if self.example.is_empty() {
                    self.example = reason;
                }
            }
            other => panic!("{what}: expected PermissionDenied, got {other:?}"),
        }
    }
}

/// Tenant `tenant` tries everything on `victim`'s aggregate; every attempt is denied.
async fn trespass(store: &JetStreamEventStore, tenant: &str, victim: &str, denials: &mut Denials) {
    let target = account(victim, 0);
    let intruder = || {
        let mut e = event("Deposited", 1);
        e.metadata.actor = Some(format!("user:{tenant}"));
        vec![e]
    };

    // An append that needs no read first: refused at the publish.
    let since = Instant::now();
    let result = store
        .append(&target, ExpectedVersion::NoStream, intruder(), None)
        .await;
    denials.check("append (new aggregate)", since.elapsed(), result);

    // An append on an existing version: refused at the head read.
    let since = Instant::now();
    let result = store
        .append(&target, ExpectedVersion::Exact(1), intruder(), None)
        .await;
    denials.check("append (expected version)", since.elapsed(), result);

    // A commit of the tenant's own that depends on the victim's aggregate (a read guard): its
    // carrier goes to the victim's guard subject, refused at the publish; nothing is stored.
    let since = Instant::now();
    let result = store
        .append_all(
            vec![
                AppendTo::new(
                    StreamId::of::<BankAccount>("guard-probe", Some(tenant)),
                    ExpectedVersion::NoStream,
                    intruder(),
                ),
                AppendTo::guard(target.clone(), ExpectedVersion::NoStream),
            ],
            None,
        )
        .await;
    denials.check("append guarded by another tenant", since.elapsed(), result);

    let since = Instant::now();
    let result = match store.load(&target, 1).await {
        Ok(events) => events.try_collect::<Vec<_>>().await,
        Err(e) => Err(e),
    };
    denials.check("load", since.elapsed(), result);

    let since = Instant::now();
    let result = store.stream_position(&target).await;
    denials.check("stream position", since.elapsed(), result);

    let since = Instant::now();
    let result = store.load_snapshot(&target).await;
    denials.check("load snapshot", since.elapsed(), result);

    let since = Instant::now();
    let result = match store.read_all(&EventFilter::all().tenant(victim), 0).await {
        Ok(events) => events.try_collect::<Vec<_>>().await,
        Err(e) => Err(e),
    };
    denials.check("read all", since.elapsed(), result);

    // Through the repository, as an application would.
    let repo = Repository::<BankAccount, _>::new(store.clone()).with_snapshots_every(2);
    let since = Instant::now();
    let result = repo
        .execute(
            "acc-0",
            AccountCommand::Deposit { amount: 5 },
            CommandMetadata::root().with_tenant(victim),
        )
        .await
        .map_err(|e| match e {
            CommandError::Store(e) => e,
            other => panic!("repository: {other}"),
        });
    denials.check("repository command", since.elapsed(), result);
}

/// Opens and funds the tenant's accounts through its own store; returns the balances it loads.
async fn work(store: &JetStreamEventStore, tenant: &str) -> Vec<i64> {
    let repo = Repository::<BankAccount, _>::new(store.clone()).with_snapshots_every(2);
    let metadata = || {
        CommandMetadata::root()
            .with_tenant(tenant)
            .with_actor(format!("user:{tenant}"))
    };
    let mut balances = Vec::new();
    // Account 1 opens only while account 0 does not exist yet (a read guard on the tenant's own
    // aggregate, through the tenant's guard subject); then account 0 opens on its own.
    let mut unit = UnitOfWork::new(metadata());
    unit.read(&repo, "acc-0").await.unwrap();
    let open = |owner: &str| AccountCommand::Open {
        owner: owner.to_owned(),
        overdraft_limit: 0,
    };
    unit.execute(&repo, "acc-1", open(tenant)).await.unwrap();
    assert_eq!(unit.commit(store).await.unwrap().len(), 1);
    for a in 0..ACCOUNTS_PER_TENANT {
        let id = format!("acc-{a}");
        if a != 1 {
            repo.execute(&id, open(tenant), metadata()).await.unwrap();
        }
        for d in 0..DEPOSITS {
            let amount = i64::try_from(d + 1).unwrap();
            repo.execute(&id, AccountCommand::Deposit { amount }, metadata())
                .await
                .unwrap();
        }
        // A load from scratch, a head read and a snapshot read, all of its own tenant.
        let stream = account(tenant, a);
        let history: Vec<RecordedEvent> = store
            .load(&stream, 1)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(history.len(), 1 + DEPOSITS);
        let position = store.stream_position(&stream).await.unwrap();
        assert_eq!(position.version, (1 + DEPOSITS) as u64);
        assert!(store.load_snapshot(&stream).await.unwrap().is_some());
        let loaded = Repository::<BankAccount, _>::new(store.clone())
            .load(&stream)
            .await
            .unwrap();
        match loaded.state {
            BankAccount::Open { balance, .. } => balances.push(balance),
            other => panic!("{stream}: {other:?}"),
        }
    }
    balances
}

/// A tenant that connects without tenant-scoped reads asks for the stream's info, which lists
/// every subject on request: refused at once, with what to do.
async fn refused_unscoped_connect(url: &str) -> Duration {
    let since = Instant::now();
    let refused = JetStreamEventStore::connect_with_options(url, user_options("t1"), config())
        .await
        .unwrap_err();
    let took = since.elapsed();
    let message = refused.to_string();
    assert!(
        matches!(refused, ConnectError::PermissionDenied { .. }),
        "{refused:?}"
    );
    assert!(
        message.contains("$JS.API.STREAM.INFO.EVENTS_BANK"),
        "{message}"
    );
    assert!(message.contains("tenant_scoped_reads(true)"), "{message}");
    assert!(
        took < FAST,
        "the unscoped connect was refused after {took:?}"
    );
    took
}

/// A store made with `from_client` cannot see the connection's events: a denied append is not
/// typed as such and waits for its timeout, but it is refused all the same. Returns the error's
/// kind and how long it took.
async fn blind_denial(url: &str) -> (String, Duration) {
    let client = user_options("t1").connect(url).await.unwrap();
    let config = config()
        .tenant_scoped_reads(true)
        .request_timeout(Duration::from_millis(300));
    let blind = JetStreamEventStore::from_client(client, config)
        .await
        .unwrap();
    let since = Instant::now();
    let error = blind
        .append(
            &account("t2", 0),
            ExpectedVersion::NoStream,
            vec![event("Deposited", 1)],
            None,
        )
        .await
        .unwrap_err();
    let took = since.elapsed();
    assert!(
        matches!(
            error,
            StoreError::OutcomeUnknown { .. } | StoreError::Unavailable { .. }
        ),
        "{error:?}"
    );
    let kind = format!("{error:?}");
    (
        kind.split([' ', '{']).next().unwrap_or_default().to_owned(),
        took,
    )
}

#[tokio::test]
async fn tenants_are_isolated_by_nats_permissions() {
    let started = Instant::now();
    // The operator provisions the context and runs the tenant read service.
    let fixture = tenancy::start().await.unwrap();
    let url = fixture.server.url();
    let admin = &fixture.admin;

    let unscoped_ms = refused_unscoped_connect(&url).await;

    let t1 = tenant_store(&url, "t1").await.unwrap();
    let t2 = tenant_store(&url, "t2").await.unwrap();
    let expected_balance = i64::try_from((1..=DEPOSITS).sum::<usize>()).unwrap();
    for (store, tenant) in [(&t1, "t1"), (&t2, "t2")] {
        let balances = work(store, tenant).await;
        assert_eq!(balances, vec![expected_balance; ACCOUNTS_PER_TENANT]);
    }

    // `read_all` filtered to its own tenant works too (pages through the read service).
    let own: Vec<RecordedEvent> = t1
        .read_all(&EventFilter::all().tenant("t1"), 0)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(own.len(), ACCOUNTS_PER_TENANT * (1 + DEPOSITS));

    let mut denials = Denials::default();
    trespass(&t1, "t1", "t2", &mut denials).await;
    trespass(&t2, "t2", "t1", &mut denials).await;

    let (blind_kind, blind_ms) = blind_denial(&url).await;

    // The admin reads everything: each tenant's events are its own, nothing crossed over.
    let all = cqrs_tests::all_events(admin).await;
    let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
    let mut crossed = 0;
    for e in &all {
        let tenant = e.metadata.tenant.clone().unwrap_or_default();
        if e.metadata.actor.as_deref() != Some(format!("user:{tenant}").as_str()) {
            crossed += 1;
        }
        *per_tenant.entry(tenant).or_default() += 1;
    }
    let each = ACCOUNTS_PER_TENANT * (1 + DEPOSITS);
    println!(
        "tenancy: events_per_tenant={per_tenant:?} cross_tenant_events={crossed} denials={:?} slowest_denial_ms={} unscoped_connect_refused_ms={} from_client_denial={blind_kind} from_client_denial_ms={} total_ms={}\n  example: {}",
        denials.operations,
        denials.slowest.as_millis(),
        unscoped_ms.as_millis(),
        blind_ms.as_millis(),
        started.elapsed().as_millis(),
        denials.example,
    );
    assert_eq!(crossed, 0, "events written across tenants: {all:#?}");
    assert_eq!(
        per_tenant,
        BTreeMap::from([("t1".to_owned(), each), ("t2".to_owned(), each)])
    );
    assert_eq!(denials.operations.values().sum::<usize>(), 16);
}
