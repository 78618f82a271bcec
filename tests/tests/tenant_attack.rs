//! A tenant with exactly the documented access (`cqrs_nats::tenancy::TenantAccess`, see
//! `cqrs_tests::tenancy`) attacks, as a plain NATS client, while the operator runs a live
//! projection and writes events of two tenants:
//!
//! - every JetStream API, KV, dead-letter and command subject outside its access — the
//!   projection's consumers by their documented names (pull with and without the pin group,
//!   create-as-update, info, delete, pause, unpin, reset, ack), stream and bucket info, purge and
//!   delete, batched and by-subject direct gets of the other tenant, the dead-letter stream, the
//!   workers' bucket, the other tenant's snapshot keys and read service — and subscriptions
//!   beyond its inbox: each is refused at once as a typed permission violation;
//! - what its access does let it send, made hostile: batched direct gets through its own
//!   by-subject grant, read requests for the other tenant's subjects, roll-up headers on its own
//!   event and snapshot, and replies aimed at `$JS.API` delete subjects (in one shared account
//!   the stream would execute those: nats-server sends a direct get's answer to any reply
//!   subject): each is answered with an error or lands in its own account.
//!
//! Afterwards nothing the tenant received carries the other tenant's data, the stream, the
//! bucket and every consumer are intact, the projection saw every event, and no event reached
//! it later than one ack wait after it was written.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use cqrs_core::{
    CommandMetadata, EventFilter, EventStore, ExpectedVersion, HandlerError, Projection,
    RecordedEvent, Repository, StoreError, StreamId,
};
use cqrs_nats::async_nats::{self, HeaderMap};
use cqrs_nats::permissions::{Denied, PermissionWatch};
use cqrs_nats::projection::read_checkpoints;
use cqrs_nats::reads::READ_ERROR_HEADER;
use cqrs_nats::{JetStreamEventStore, JetStreamProjectionRunner, ProjectionConfig};
use cqrs_tests::tenancy::{self, tenant_store, user_options};
use examples::bank_account::{AccountCommand, BankAccount};
use futures::{StreamExt, TryStreamExt};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PROJECTION: &str = "balances";
/// What the other tenant's events carry: the attacker must never receive it.
const SECRET: &str = "secret-of-t2";
/// How long an attempt may take to be refused before it counts as let through.
const REFUSAL_WAIT: Duration = Duration::from_secs(2);
/// The projection's ack wait: the longest an event may take to reach it.
/// Later than this, an event reached the projection late.
const LATE: Duration = Duration::from_secs(5);
/// The operator's writers stop after this many events or this long, whichever comes first.
const MAX_WRITES: u64 = 400;
const MAX_WRITING: Duration = Duration::from_secs(30);

/// Records every position it applies and the longest delay between an event's append and its
/// arrival.
#[derive(Default)]
struct Watched {
    positions: Mutex<BTreeSet<u64>>,
    max_delay_ms: AtomicU64,
}

struct Recorder(Arc<Watched>);

impl Projection for Recorder {
    fn name(&self) -> &str {
        PROJECTION
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let delay = time::OffsetDateTime::now_utc() - event.recorded_at;
        let delay_ms = u64::try_from(delay.whole_milliseconds()).unwrap_or(0);
        self.0.max_delay_ms.fetch_max(delay_ms, Ordering::Relaxed);
        self.0.positions.lock().unwrap().insert(event.position);
        Ok(())
    }
}

/// The operator writes to both tenants until told to stop; returns how many events it wrote.
async fn write_both_tenants(admin: JetStreamEventStore, stop: Arc<AtomicBool>) -> u64 {
    let started = Instant::now();
    let mut written = 0;
    while !stop.load(Ordering::Relaxed) && written < MAX_WRITES && started.elapsed() < MAX_WRITING {
        let tenant = if written % 2 == 0 { "t1" } else { "t2" };
        let stream = StreamId::new("Ledger", format!("l{}", written % 6)).with_tenant(tenant);
        let mut event = cqrs_tests::event("Noted", written);
        if tenant == "t2" {
            event.payload.data = format!("{{\"note\":\"{SECRET}\"}}").into_bytes();
        }
        event.metadata.tenant = Some(tenant.to_owned());
        admin
            .append(&stream, ExpectedVersion::Any, vec![event], None)
            .await
            .unwrap();
        written += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    written
}

/// What the attacker tried and how it ended.
#[derive(Default)]
struct Attempts {
    refused_publish: usize,
    refused_subscribe: usize,
    slowest: Duration,
    hostile_answered: usize,
    let_through: Vec<String>,
}

impl Attempts {
    /// `attempt`, which sends to (or subscribes on) `subject`, must be refused at once by a
    /// violation of kind `denied`, which the store types as `PermissionDenied`.
    async fn refused(
        &mut self,
        watch: &PermissionWatch,
        subject: &str,
        denied: Denied,
        attempt: impl std::future::Future<Output = ()>,
    ) {
        let since = Instant::now();
        let attempt = async {
            attempt.await;
            tokio::time::sleep(REFUSAL_WAIT).await;
        };
        match watch.guard("_INBOX", &[subject], attempt).await {
            Err(violation) if violation.denied == denied => {
                let typed = violation.store_error("attack", StreamId::new("?", subject));
                assert!(
                    matches!(typed, StoreError::PermissionDenied { .. }),
                    "{typed:?}"
                );
                self.slowest = self.slowest.max(since.elapsed());
                match denied {
                    Denied::Subscribe => self.refused_subscribe += 1,
                    _ => self.refused_publish += 1,
                }
            }
            Err(other) => self
                .let_through
                .push(format!("{subject}: refused as {other:?}, not {denied:?}")),
            Ok(()) => self
                .let_through
                .push(format!("{subject}: not refused within {REFUSAL_WAIT:?}")),
        }
    }

    async fn publish(
        &mut self,
        watch: &PermissionWatch,
        client: &async_nats::Client,
        subject: String,
        body: &str,
    ) {
        let send = async {
            let inbox = client.new_inbox();
            client
                .publish_with_reply(subject.clone(), inbox, body.to_owned().into())
                .await
                .unwrap();
            client.flush().await.unwrap();
        };
        self.refused(watch, &subject, Denied::Publish, send).await;
    }
}

/// Every subject outside t1's access that reaches something of the operator's or of t2's.
fn forbidden_publishes() -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    let any = "{}";
    for stream in [
        "EVENTS_BANK",
        "DEADLETTER_BANK",
        "KV_SNAPSHOTS_BANK",
        "KV_PROJECTION_WORKERS_BANK",
        "KV_PROJECTION_CHECKPOINTS_BANK",
    ] {
        for verb in ["INFO", "DELETE", "PURGE", "UPDATE", "MSG.GET", "MSG.DELETE"] {
            out.push((format!("$JS.API.STREAM.{verb}.{stream}"), any));
        }
        out.push((
            format!("$JS.API.DIRECT.GET.{stream}"),
            r#"{"seq":1,"next_by_subj":">","batch":100}"#,
        ));
        out.push((format!("$JS.API.CONSUMER.NAMES.{stream}"), any));
        out.push((format!("$JS.API.CONSUMER.LIST.{stream}"), any));
        out.push((
            format!("$JS.API.CONSUMER.CREATE.{stream}.mine.bank.events.*.t1.>"),
            any,
        ));
    }
    for subject in [
        "$JS.API.INFO",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.NAMES",
        "$JS.API.DIRECT.GET.EVENTS_BANK.bank.events.*.t2.Ledger.l1",
        "$JS.API.DIRECT.GET.EVENTS_BANK.bank.events.*.*.Ledger.l1",
        "$JS.API.DIRECT.GET.DEADLETTER_BANK.bank.deadletter.balances",
        "$JS.API.DIRECT.GET.KV_SNAPSHOTS_BANK.$KV.SNAPSHOTS_BANK.t2.BankAccount.acc-0",
        "$JS.API.DIRECT.GET.KV_PROJECTION_WORKERS_BANK.$KV.PROJECTION_WORKERS_BANK.w",
        "$KV.SNAPSHOTS_BANK.t2.BankAccount.acc-0",
        "$KV.PROJECTION_WORKERS_BANK.w",
        "$KV.PROJECTION_CHECKPOINTS_BANK.balances.0",
        "bank.events.t2.Ledger.l1",
        "bank.deadletter.balances",
        "bank.reads.t2",
        "bank.commands.BankAccount",
    ] {
        out.push((subject.to_owned(), any));
    }
    out
}

/// Sends what t1's access allows, made hostile; each must be answered with an error (or
/// nothing at all). Returns how many were answered.
async fn hostile_but_allowed(client: &async_nats::Client, partitions: u32) -> usize {
    let mut answered = 0;
    let own_head = "$JS.API.DIRECT.GET.EVENTS_BANK.bank.events.*.t1.Ledger.l0";
    // A batch in the body of the by-subject direct get.
    let reply = client
        .request(
            own_head,
            r#"{"seq":1,"next_by_subj":"bank.events.*.t2.>","batch":100}"#.into(),
        )
        .await
        .unwrap();
    assert!(reply.status.is_some_and(|s| s.as_u16() >= 400), "{reply:?}");
    answered += 1;
    // Read requests for the other tenant's subjects.
    for subject in [
        "bank.events.*.t2.Ledger.l1",
        "bank.events.*.t2.*.*",
        "bank.events.*.*.*.*",
        "bank.events.>",
        "bank.deadletter.balances",
    ] {
        let body = format!(r#"{{"subject":"{subject}","from_sequence":1,"batch":100}}"#);
        let reply = client.request("bank.reads.t1", body.into()).await.unwrap();
        let refused = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(READ_ERROR_HEADER));
        assert!(
            refused.is_some(),
            "read of {subject} was not refused: {reply:?}"
        );
        answered += 1;
    }
    // Roll-ups on its own event and its own snapshot key would purge everyone's.
    for subject in [
        "bank.events.t1.Ledger.rollup",
        "$KV.SNAPSHOTS_BANK.t1.BankAccount.acc-0",
    ] {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "all");
        let reply = client
            .request_with_headers(subject, headers, "{}".into())
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&reply.payload).to_string();
        assert!(
            text.contains("error"),
            "roll-up on {subject} answered {text}"
        );
        answered += 1;
    }
    // Replies aimed at the operator's API: answered into t1's own account, where they reach
    // nothing.
    let mut deputies = vec![
        "$JS.API.STREAM.DELETE.EVENTS_BANK".to_owned(),
        "$JS.API.STREAM.DELETE.KV_SNAPSHOTS_BANK".to_owned(),
        "$JS.API.STREAM.PURGE.DEADLETTER_BANK".to_owned(),
    ];
    deputies.push("$JS.API.STREAM.PURGE.KV_PROJECTION_CHECKPOINTS_BANK".to_owned());
    deputies.extend(
        (0..partitions).map(|p| format!("$KV.PROJECTION_CHECKPOINTS_BANK.{PROJECTION}.{p}")),
    );
    let read_body = r#"{"subject":"bank.events.*.t1.*.*","from_sequence":1,"batch":5}"#;
    // The event publish carries an expectation that fails, so that the stream answers without
    // storing anything (a tenant may write garbage to its own aggregates; that is not tried here).
    let mut failing = HeaderMap::new();
    failing.insert("Nats-Expected-Last-Subject-Sequence", "999999999");
    for deputy in &deputies {
        for (subject, body) in [
            (own_head, ""),
            ("bank.events.t1.Ledger.deputy", "{}"),
            ("bank.reads.t1", read_body),
            (
                "$JS.API.DIRECT.GET.KV_SNAPSHOTS_BANK.$KV.SNAPSHOTS_BANK.t1.BankAccount.acc-0",
                "",
            ),
        ] {
            client
                .publish_with_reply_and_headers(
                    subject,
                    deputy.clone(),
                    failing.clone(),
                    body.to_owned().into(),
                )
                .await
                .unwrap();
        }
    }
    client.flush().await.unwrap();
    answered
}

/// t2 works through its own store (an account with a snapshot; its owner is the secret), and
/// t1 opens an account with a snapshot, the targets of its roll-ups. Returns t1's store, t2's
/// store and t2's account.
async fn tenants_at_work(url: &str) -> (JetStreamEventStore, JetStreamEventStore, StreamId) {
    let t2 = tenant_store(url, "t2").await.unwrap();
    let t2_accounts = Repository::<BankAccount, _>::new(t2.clone()).with_snapshots_every(2);
    let t2_metadata = || CommandMetadata::root().with_tenant("t2");
    let open = AccountCommand::Open {
        owner: SECRET.to_owned(),
        overdraft_limit: 0,
    };
    t2_accounts
        .execute("acc-0", open, t2_metadata())
        .await
        .unwrap();
    for amount in 1..=3 {
        t2_accounts
            .execute("acc-0", AccountCommand::Deposit { amount }, t2_metadata())
            .await
            .unwrap();
    }
    let t2_account = StreamId::of::<BankAccount>("acc-0", Some("t2"));
    assert!(t2.load_snapshot(&t2_account).await.unwrap().is_some());
    // t1 has an account and a snapshot of its own, the targets of its roll-ups.
    let t1 = tenant_store(url, "t1").await.unwrap();
    let t1_accounts = Repository::<BankAccount, _>::new(t1.clone()).with_snapshots_every(1);
    let open = AccountCommand::Open {
        owner: "t1".to_owned(),
        overdraft_limit: 0,
    };
    t1_accounts
        .execute("acc-0", open, CommandMetadata::root().with_tenant("t1"))
        .await
        .unwrap();
    (t1, t2, t2_account)
}

/// Everything t1's client tries.
async fn attack(
    watch: &PermissionWatch,
    attacker: &async_nats::Client,
    t1: &JetStreamEventStore,
    partitions: u32,
) -> Attempts {
    let mut attempts = Attempts::default();
    for (subject, body) in forbidden_publishes() {
        attempts.publish(watch, attacker, subject, body).await;
    }
    for subject in [
        ">",
        "bank.>",
        "bank.events.>",
        "bank.deadletter.>",
        "bank.reads.>",
        "$JS.>",
        "$JS.ACK.>",
        "$KV.>",
        "_R_.>",
    ] {
        let subscribe = async {
            // A refused subscription still returns here; the server reports it afterwards.
            let _subscription = attacker.subscribe(subject.to_owned()).await;
            attacker.flush().await.unwrap();
        };
        attempts
            .refused(watch, subject, Denied::Subscribe, subscribe)
            .await;
    }
    attempts.hostile_answered = hostile_but_allowed(attacker, partitions).await;
    // Through the store too: the other tenant's events through the read service.
    let read = match t1.read_all(&EventFilter::all().tenant("t2"), 0).await {
        Ok(events) => events.try_collect::<Vec<_>>().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(read, Err(StoreError::PermissionDenied { .. })),
        "{read:?}"
    );
    attempts
}

/// The stream, the bucket and the projection's checkpoints are as the operator made them.
async fn assert_operator_intact(admin: &JetStreamEventStore, partitions: u32) {
    let js = admin.jetstream();
    for stream in ["EVENTS_BANK", "KV_SNAPSHOTS_BANK"] {
        js.get_stream(stream)
            .await
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
    }
    let checkpoints = read_checkpoints(js, admin.subjects())
        .await
        .unwrap()
        .remove(PROJECTION)
        .unwrap_or_default();
    for p in 0..partitions {
        let checkpoint = checkpoints
            .get(&p)
            .unwrap_or_else(|| panic!("no checkpoint for partition {p}: {checkpoints:?}"));
        assert_eq!(
            checkpoint.filter,
            [format!("bank.events.{p}.>")],
            "partition {p}"
        );
        assert!(checkpoint.owner.is_some(), "partition {p} lost its owner");
    }
}

/// The messages among `received` that carry anything of t2's.
fn leaks(received: &[async_nats::Message]) -> Vec<&async_nats::Message> {
    received
        .iter()
        .filter(|m| {
            let stored_subject = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Subject"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            String::from_utf8_lossy(&m.payload).contains(SECRET)
                || format!("{:?}", m.headers).contains(SECRET)
                || stored_subject.contains(".t2.")
                || m.subject.contains(".t2.")
        })
        .collect()
}

#[tokio::test]
async fn a_tenant_reaches_nothing_beyond_its_own_data() {
    let started = Instant::now();
    let fixture = tenancy::start().await.unwrap();
    let url = fixture.server.url();
    let admin = fixture.admin.clone();
    let partitions = admin.subjects().partitions();

    // The operator's live projection, and t2's own work (a snapshot included).
    let watched = Arc::new(Watched::default());
    let projection = JetStreamProjectionRunner::spawn(
        &admin,
        Recorder(Arc::clone(&watched)),
        ProjectionConfig::new(),
    )
    .await
    .unwrap();
    let (t1, t2, t2_account) = tenants_at_work(&url).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn(write_both_tenants(admin.clone(), Arc::clone(&stop)));

    // The attacker: a plain client of user t1, and a spy on everything it receives.
    let watch = PermissionWatch::new();
    let attacker = watch
        .install(user_options("t1"))
        .connect(&url)
        .await
        .unwrap();
    let mut spy = attacker.subscribe("_INBOX.>").await.unwrap();
    let received = Arc::new(Mutex::new(Vec::<async_nats::Message>::new()));
    let spying = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(message) = spy.next().await {
                received.lock().unwrap().push(message);
            }
        })
    };

    let attempts = attack(&watch, &attacker, &t1, partitions).await;

    // The operator stops writing, then writes one more event per tenant: the projection gets
    // them within one ack wait.
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.unwrap();
    let mut last = 0;
    for tenant in ["t1", "t2"] {
        let stream = StreamId::new("Ledger", "final").with_tenant(tenant);
        let committed = admin
            .append(
                &stream,
                ExpectedVersion::Any,
                vec![cqrs_tests::event("Noted", 0)],
                None,
            )
            .await
            .unwrap();
        last = committed.events.last().unwrap().position;
    }
    projection.wait_for(last, LATE).await.unwrap();

    assert_operator_intact(&admin, partitions).await;
    assert!(t2.load_snapshot(&t2_account).await.unwrap().is_some());

    // The projection saw every event, none late.
    let all = cqrs_tests::all_events(&admin).await;
    let stored: BTreeSet<u64> = all.iter().map(|e| e.position).collect();
    let seen = watched.positions.lock().unwrap().clone();
    let missed: Vec<_> = stored.difference(&seen).collect();
    let max_delay_ms = watched.max_delay_ms.load(Ordering::Relaxed);

    // Nothing of t2 reached t1.
    tokio::time::sleep(Duration::from_millis(200)).await;
    spying.abort();
    let received = received.lock().unwrap().clone();
    let leaked = leaks(&received);

    println!(
        "tenant_attack: refused_publish={} refused_subscribe={} slowest_refusal_ms={} hostile_answered={} let_through={} received={} leaked={} events={} operator_writes={written} projection_missed={} max_projection_delay_ms={max_delay_ms} total_ms={}",
        attempts.refused_publish,
        attempts.refused_subscribe,
        attempts.slowest.as_millis(),
        attempts.hostile_answered,
        attempts.let_through.len(),
        received.len(),
        leaked.len(),
        stored.len(),
        missed.len(),
        started.elapsed().as_millis(),
    );
    assert!(
        attempts.let_through.is_empty(),
        "{:#?}",
        attempts.let_through
    );
    assert!(leaked.is_empty(), "t1 received t2's data: {leaked:#?}");
    assert!(missed.is_empty(), "the projection missed {missed:?}");
    assert!(
        max_delay_ms < u64::try_from(LATE.as_millis()).unwrap(),
        "an event reached the projection {max_delay_ms} ms after it was written"
    );
    projection.stop().await.unwrap();
}
