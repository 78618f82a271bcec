//! Throughput of the framework against bare async-nats on the bank-account workload.
//!
//! Run with: `cargo run --release -p examples --example bench` (needs `nats-server` on PATH or
//! `NATS_SERVER_BIN`; `bash scripts/test.sh` installs it), or point it at a server with
//! `NATS_URL=nats://127.0.0.1:4222`. Knobs: `ACCOUNTS` (default 256), `COMMANDS` deposits per
//! account (default 200), `WRITERS` (comma-separated concurrency levels, default `1,16`),
//! `ROUNDS` (default 3), `VARIANTS` (comma-separated subset of `repository,s2,store,bare,minimal`,
//! the default, and `keyed`, `msgid`, `envelope`, `body`; `load` alone measures loads only), `FSYNC=always` (the bench's server fsyncs every write before the ack,
//! `jetstream { sync_interval: always }`; the default is the server's lazy fsync).
//!
//! The output ends with one JSON line per variant and writer count,
//! `{"variant": .., "writers": .., "fsync": .., "commands_per_s": .., "ratio": ..,
//! "stored_bytes_per_event": ..}`, `ratio` being the median over rounds of the variant's rate
//! divided by `bare_minimal`'s in the same round, and the bytes of the stream's message blocks on
//! disk per message (the opened accounts' events included) before it is deleted (with
//! `NATS_URL`, the uncompressed bytes the stream's state reports).
//!
//! Workload: N bank accounts, opened before the clock starts, then M deposits each; C concurrent
//! writers, writer `w` owning accounts `w, w + C, ...` and cycling through them (one deposit per
//! account per pass), awaiting each command before the next. Every variant of every round runs on
//! its own fresh stream with the configuration of [`StoreConfig::stream_config`] and its own
//! connection; the stream is deleted afterwards. Variants:
//! - `repository`: `Repository::<BankAccount>::execute(Deposit)` with `with_cache` (decides on
//!   the cached state, appends with the expected version, idempotency key and metadata headers);
//! - `repository_s2`: the same on a stream made with `StoreConfig::compressed(true)` (S2);
//! - `repository_keyed` (only on request): the same with an explicit idempotency key per deposit
//!   (as a payment id would be), which the repository must tell from an earlier commit of the
//!   key: from the events it has folded when it knows them all (up to 256 per aggregate: the
//!   default `COMMANDS` stays below), else by reading the aggregate's history;
//! - `store_append`: `JetStreamEventStore::append` of an encoded `Deposited` event (the writer
//!   tracks the version), i.e. the store without the repository;
//! - `bare_same_headers`: `jetstream.send_publish` of the same subjects, payload and headers as the
//!   framework writes (`Nats-Msg-Id`, `Cqrs-Envelope`, `Nats-Expected-Last-Subject-Sequence`),
//!   awaited ack, the writer tracking each account's last
//!   sequence; checked against a stored framework message before the numbers are printed;
//! - `bare_minimal`: payload and `Nats-Expected-Last-Subject-Sequence` only, awaited ack;
//! - `bare_msg_id` (only on request): the minimal one plus `Nats-Msg-Id`, to tell the cost of
//!   deduplication from the cost of the other headers;
//! - `bare_envelope_only` (only on request): the framework's envelope with the event id inside
//!   it and the expectation, no `Nats-Msg-Id`: what leaving deduplication to the expected
//!   version would give;
//! - `bare_envelope_in_body` (only on request): that envelope and the event's data as one JSON
//!   body, only the expectation in the headers: what a body-carried envelope would give.
//!
//! - `load` (also run by default): one account of 10,000 events and one of 10, written with a
//!   snapshot every 100 events; the unsnapshotted load of the long one (`EventStore::load`, all
//!   events decoded) against a bare ordered consumer reading the same subject, and the times of
//!   a `Repository::load` with snapshots of either.
//!
//! Each round runs the variants in alternating order; the median round is reported, with the CPU
//! time the client process and (when the bench started it) the server spent per event, from
//! `/proc` (10 ms ticks; Linux only).
#![allow(
    clippy::print_stdout,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

use cqrs_core::{
    CommandMetadata, EventStore, ExpectedVersion, IdempotencyKey, NewEvent, Repository,
    SerializedEvent, StreamId,
};
use cqrs_nats::async_nats::jetstream::{self, message::PublishMessage};
use cqrs_nats::async_nats::{self, HeaderMap};
use cqrs_nats::{JetStreamEventStore, StoreConfig, Subjects};
use examples::bank_account::{AccountCommand, AccountEvent, BankAccount};
use std::fmt::Write as _;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

const ACTOR: &str = "user:bench";
const AMOUNT: i64 = 10;
const ACCOUNT: &str = "BankAccount";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Repository,
    RepositoryS2,
    RepositoryKeyed,
    Store,
    BareSame,
    BareMinimal,
    BareMsgId,
    BareEnvelope,
    BareBody,
}

impl Variant {
    /// The variants run when `VARIANTS` is not set.
    const DEFAULT: [Self; 5] = [
        Self::Repository,
        Self::RepositoryS2,
        Self::Store,
        Self::BareSame,
        Self::BareMinimal,
    ];
    const ALL: [Self; 9] = [
        Self::Repository,
        Self::RepositoryS2,
        Self::RepositoryKeyed,
        Self::Store,
        Self::BareSame,
        Self::BareMinimal,
        Self::BareMsgId,
        Self::BareEnvelope,
        Self::BareBody,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Repository => "repository",
            Self::RepositoryS2 => "repository_s2",
            Self::RepositoryKeyed => "repository_keyed",
            Self::Store => "store_append",
            Self::BareSame => "bare_same_headers",
            Self::BareMinimal => "bare_minimal",
            Self::BareMsgId => "bare_msg_id",
            Self::BareEnvelope => "bare_envelope_only",
            Self::BareBody => "bare_envelope_in_body",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Repository => "repository",
            Self::RepositoryS2 => "s2",
            Self::RepositoryKeyed => "keyed",
            Self::Store => "store",
            Self::BareSame => "bare",
            Self::BareMinimal => "minimal",
            Self::BareMsgId => "msgid",
            Self::BareEnvelope => "envelope",
            Self::BareBody => "body",
        }
    }
}

#[derive(Debug, Clone)]
struct Workload {
    url: String,
    accounts: usize,
    commands: usize,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of process `pid` so far, from `/proc/<pid>/stat` (Linux; zero
/// elsewhere), in clock ticks of 10 ms.
fn cpu_ticks(pid: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// One timed run: the CPU time the client and the server spent in it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    client_ticks: u64,
    server_ticks: u64,
}

fn account_id(account: usize) -> String {
    format!("acc-{account}")
}

fn stream_of(account: usize) -> StreamId {
    StreamId::new(ACCOUNT, account_id(account))
}

/// Runs `writers` tasks, writer `w` running `writer(accounts of w)`; returns the elapsed time.
async fn drive<F>(workload: &Workload, writers: usize, writer: impl Fn(Vec<usize>) -> F) -> Duration
where
    F: Future<Output = ()> + Send + 'static,
{
    let futures: Vec<F> = (0..writers)
        .map(|w| writer((w..workload.accounts).step_by(writers).collect()))
        .collect();
    let server = SERVER_PID.get().map_or("", String::as_str);
    let (client_before, server_before) = (cpu_ticks("self"), cpu_ticks(server));
    let start = Instant::now();
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for task in tasks {
        task.await.expect("writer");
    }
    let elapsed = start.elapsed();
    *LAST_SAMPLE.lock().expect("sample") = Some(Sample {
        client_ticks: cpu_ticks("self") - client_before,
        server_ticks: cpu_ticks(server).saturating_sub(server_before),
    });
    elapsed
}

static SERVER_PID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static LAST_SAMPLE: std::sync::Mutex<Option<Sample>> = std::sync::Mutex::new(None);

/// Stored bytes per message of the last run's stream, from its state before it was deleted.
static LAST_BYTES: std::sync::Mutex<Option<f64>> = std::sync::Mutex::new(None);

/// The store directory of the server the bench started.
static STORE_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Bytes of stream `stream`'s message blocks under the JetStream directory `dir`
/// (`<dir>/<account>/streams/<stream>/msgs/`).
fn disk_bytes(dir: &std::path::Path, stream: &str) -> u64 {
    let Ok(accounts) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for account in accounts.flatten() {
        let msgs = account.path().join("streams").join(stream).join("msgs");
        if let Ok(blocks) = std::fs::read_dir(msgs) {
            total += blocks
                .flatten()
                .filter_map(|b| b.metadata().ok())
                .map(|m| m.len())
                .sum::<u64>();
        }
    }
    total
}

async fn drop_context(client: &async_nats::Client, config: &StoreConfig) {
    let js = jetstream::new(client.clone());
    if let Ok(mut stream) = js.get_stream(config.stream_name()).await
        && let Ok(info) = stream.info().await
        && info.state.messages > 0
    {
        // On disk when the bench runs the server (the state counts bytes before compression).
        let bytes = STORE_DIR.get().map_or(info.state.bytes, |dir| {
            disk_bytes(&dir.join("jetstream"), &config.stream_name())
        });
        *LAST_BYTES.lock().expect("bytes") = Some(bytes as f64 / info.state.messages as f64);
    }
    let _ = js.delete_stream(config.stream_name()).await;
    let _ = js
        .delete_stream(format!("KV_{}", config.bucket_name()))
        .await;
}

/// How the `repository` variants differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    /// The defaults.
    Plain,
    /// An S2-compressed stream.
    Compressed,
    /// An explicit idempotency key on every deposit.
    Keyed,
}

async fn run_repository(
    workload: &Workload,
    context: &str,
    writers: usize,
    flavour: Flavour,
) -> Duration {
    let config = StoreConfig::new(context).compressed(flavour == Flavour::Compressed);
    let store = JetStreamEventStore::connect(workload.url.as_str(), config.clone())
        .await
        .expect("connect");
    let repo = Repository::<BankAccount, _>::new(store.clone()).with_cache(workload.accounts);
    for account in 0..workload.accounts {
        repo.execute(
            &account_id(account),
            AccountCommand::Open {
                owner: format!("owner {account}"),
                overdraft_limit: 0,
            },
            CommandMetadata::root().with_actor(ACTOR),
        )
        .await
        .expect("open");
    }
    let commands = workload.commands;
    let elapsed = drive(workload, writers, |accounts| {
        let repo = repo.clone();
        async move {
            let ids: Vec<String> = accounts.iter().map(|&a| account_id(a)).collect();
            for n in 0..commands {
                for id in &ids {
                    let mut metadata = CommandMetadata::root().with_actor(ACTOR);
                    if flavour == Flavour::Keyed {
                        metadata = metadata.with_idempotency_key(format!("deposit-{id}-{n}"));
                    }
                    repo.execute(id, AccountCommand::Deposit { amount: AMOUNT }, metadata)
                        .await
                        .expect("deposit");
                }
            }
        }
    })
    .await;
    drop_context(store.client(), &config).await;
    elapsed
}

fn encode(event: &AccountEvent) -> (IdempotencyKey, NewEvent) {
    let command = CommandMetadata::root().with_actor(ACTOR);
    let key = command.idempotency_key();
    let event = NewEvent::encode(event, key.event_id(0), command.event_metadata()).expect("encode");
    (key, event)
}

async fn run_store(workload: &Workload, context: &str, writers: usize) -> Duration {
    let config = StoreConfig::new(context);
    let store = JetStreamEventStore::connect(workload.url.as_str(), config.clone())
        .await
        .expect("connect");
    for account in 0..workload.accounts {
        let (key, event) = encode(&AccountEvent::Opened {
            owner: format!("owner {account}"),
            overdraft_limit: 0,
        });
        store
            .append(
                &stream_of(account),
                ExpectedVersion::NoStream,
                vec![event],
                Some(&key),
            )
            .await
            .expect("open");
    }
    let commands = workload.commands;
    let elapsed = drive(workload, writers, |accounts| {
        let store = store.clone();
        async move {
            let streams: Vec<StreamId> = accounts.iter().map(|&a| stream_of(a)).collect();
            for version in 1..=commands as u64 {
                for stream in &streams {
                    let (key, event) = encode(&AccountEvent::Deposited { amount: AMOUNT });
                    store
                        .append(
                            stream,
                            ExpectedVersion::Exact(version),
                            vec![event],
                            Some(&key),
                        )
                        .await
                        .expect("append");
                }
            }
        }
    })
    .await;
    drop_context(store.client(), &config).await;
    elapsed
}

/// The framework's headers of one event of a root command, written by hand: the event id,
/// the envelope and the expectation.
fn same_headers(version: u64, event_type: &str, expected_seq: u64) -> HeaderMap {
    let recorded_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("format time");
    let envelope = format!(
        r#"{{"type":"{event_type}","version":{version},"command":"{}","actor":"{ACTOR}","recorded_at":"{recorded_at}"}}"#,
        Uuid::now_v7()
    );
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", Uuid::now_v7().to_string().as_str());
    h.insert("Cqrs-Envelope", envelope.as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected_seq.to_string().as_str(),
    );
    h
}

/// [`same_headers`] without `Nats-Msg-Id`: the event id travels in the envelope.
fn envelope_only(version: u64, event_type: &str, expected_seq: u64) -> HeaderMap {
    let recorded_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("format time");
    let envelope = format!(
        r#"{{"id":"{}","type":"{event_type}","version":{version},"command":"{}","actor":"{ACTOR}","recorded_at":"{recorded_at}"}}"#,
        Uuid::now_v7(),
        Uuid::now_v7()
    );
    let mut h = HeaderMap::new();
    h.insert("Cqrs-Envelope", envelope.as_str());
    h.insert(
        "Nats-Expected-Last-Subject-Sequence",
        expected_seq.to_string().as_str(),
    );
    h
}

/// The envelope of [`envelope_only`] and the event's data as one JSON body.
fn envelope_in_body(version: u64, event_type: &str, data: &[u8]) -> bytes::Bytes {
    let recorded_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .expect("format time");
    let mut body = format!(
        r#"{{"id":"{}","type":"{event_type}","version":{version},"command":"{}","actor":"{ACTOR}","recorded_at":"{recorded_at}","data":"#,
        Uuid::now_v7(),
        Uuid::now_v7()
    )
    .into_bytes();
    body.extend_from_slice(data);
    body.push(b'}');
    body.into()
}

/// What the bare publishes carry besides the payload.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// The framework's headers.
    Same,
    /// `Nats-Expected-Last-Subject-Sequence` only.
    Minimal,
    /// `Nats-Expected-Last-Subject-Sequence` and `Nats-Msg-Id` (what deduplication costs).
    MsgId,
    /// The framework's envelope with the event id inside it, and the expectation: no
    /// `Nats-Msg-Id`.
    EnvelopeOnly,
    /// The envelope (event id inside) and the event's data in the body, only the expectation
    /// in the headers.
    InBody,
}

async fn run_bare(workload: &Workload, context: &str, writers: usize, wire: Wire) -> Duration {
    let config = StoreConfig::new(context);
    let client = async_nats::connect(workload.url.as_str())
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    js.create_stream(config.stream_config())
        .await
        .expect("stream");
    let subjects = Subjects::new(context).expect("context");
    let subject_of = |account: usize| -> async_nats::Subject {
        subjects
            .aggregate(None, ACCOUNT, &account_id(account))
            .expect("subject")
            .into()
    };
    let mut heads = vec![0u64; workload.accounts];
    for (account, head) in heads.iter_mut().enumerate() {
        let opened = SerializedEvent::encode(&AccountEvent::Opened {
            owner: format!("owner {account}"),
            overdraft_limit: 0,
        })
        .expect("encode");
        let message = PublishMessage::build()
            .payload(opened.data.into())
            .headers(same_headers(1, &opened.event_type, 0));
        *head = js
            .send_publish(subject_of(account), message)
            .await
            .expect("publish")
            .await
            .expect("ack")
            .sequence;
    }
    let deposited =
        SerializedEvent::encode(&AccountEvent::Deposited { amount: AMOUNT }).expect("encode");
    let body = bytes::Bytes::from(deposited.data);
    let commands = workload.commands;
    let elapsed = drive(workload, writers, |accounts| {
        let js = js.clone();
        let body = body.clone();
        let event_type = deposited.event_type.clone();
        let subjects: Vec<async_nats::Subject> = accounts.iter().map(|&a| subject_of(a)).collect();
        let mut last: Vec<u64> = accounts.iter().map(|&a| heads[a]).collect();
        async move {
            for version in 2..=commands as u64 + 1 {
                for (subject, last) in subjects.iter().zip(last.iter_mut()) {
                    let message = match wire {
                        Wire::Same => PublishMessage::build()
                            .payload(body.clone())
                            .headers(same_headers(version, &event_type, *last)),
                        Wire::Minimal => PublishMessage::build()
                            .payload(body.clone())
                            .expected_last_subject_sequence(*last),
                        Wire::InBody => PublishMessage::build()
                            .payload(envelope_in_body(version, &event_type, &body))
                            .expected_last_subject_sequence(*last),
                        Wire::EnvelopeOnly => PublishMessage::build()
                            .payload(body.clone())
                            .headers(envelope_only(version, &event_type, *last)),
                        Wire::MsgId => PublishMessage::build()
                            .payload(body.clone())
                            .message_id(Uuid::now_v7().to_string())
                            .expected_last_subject_sequence(*last),
                    };
                    *last = js
                        .send_publish(subject.clone(), message)
                        .await
                        .expect("publish")
                        .await
                        .expect("ack")
                        .sequence;
                }
            }
        }
    })
    .await;
    drop_context(&client, &config).await;
    elapsed
}

/// Header names and the byte sizes of headers and payload of the last message of account 0.
async fn wire_shape(url: &str, context: &str) -> (Vec<String>, usize, usize) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = jetstream::new(client);
    let stream = js
        .get_stream(StoreConfig::new(context).stream_name())
        .await
        .expect("stream");
    let subjects = Subjects::new(context).expect("context");
    let published = subjects
        .aggregate(None, ACCOUNT, &account_id(0))
        .expect("subject");
    // Stored under the partitioned subject.
    let subject = subjects.stored(&published).expect("stored subject");
    let message = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("message");
    let mut names: Vec<String> = message
        .headers
        .iter()
        .map(|(name, _)| name.to_string())
        .filter(|name| !name.starts_with("Nats-Expected"))
        .collect();
    names.sort();
    let size = message
        .headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum();
    (names, size, message.payload.len())
}

/// Writes one deposit through the repository and one bare-same publish, then compares what
/// the server stored (header names and sizes, payload size).
async fn check_same_wire_format(url: &str) -> String {
    let workload = Workload {
        url: url.to_owned(),
        accounts: 1,
        commands: 1,
    };
    // Keep the streams for the comparison: run the writes, then read before dropping.
    let framework = {
        let config = StoreConfig::new("checkfw");
        let store = JetStreamEventStore::connect(url, config.clone())
            .await
            .expect("connect");
        let repo = Repository::<BankAccount, _>::new(store.clone());
        for command in [
            AccountCommand::Open {
                owner: "owner 0".to_owned(),
                overdraft_limit: 0,
            },
            AccountCommand::Deposit { amount: AMOUNT },
        ] {
            repo.execute(
                &account_id(0),
                command,
                CommandMetadata::root().with_actor(ACTOR),
            )
            .await
            .expect("execute");
        }
        let shape = wire_shape(url, "checkfw").await;
        drop_context(store.client(), &config).await;
        shape
    };
    let bare = {
        let client = async_nats::connect(url).await.expect("connect");
        let js = jetstream::new(client.clone());
        let config = StoreConfig::new("checkbare");
        js.create_stream(config.stream_config())
            .await
            .expect("stream");
        let _ = &workload;
        let subject = Subjects::new("checkbare")
            .expect("context")
            .aggregate(None, ACCOUNT, &account_id(0))
            .expect("subject");
        let mut last = 0;
        for (version, event) in [
            AccountEvent::Opened {
                owner: "owner 0".to_owned(),
                overdraft_limit: 0,
            },
            AccountEvent::Deposited { amount: AMOUNT },
        ]
        .iter()
        .enumerate()
        {
            let encoded = SerializedEvent::encode(event).expect("encode");
            let message = PublishMessage::build()
                .payload(encoded.data.into())
                .headers(same_headers(version as u64 + 1, &encoded.event_type, last));
            last = js
                .send_publish(subject.clone(), message)
                .await
                .expect("publish")
                .await
                .expect("ack")
                .sequence;
        }
        let shape = wire_shape(url, "checkbare").await;
        drop_context(&client, &config).await;
        shape
    };
    // Same header names and payload; the sizes may differ by the RFC 3339 fraction of
    // `Cqrs-Recorded-At`, which drops trailing zeros.
    assert!(
        framework.0 == bare.0 && framework.2 == bare.2 && framework.1.abs_diff(bare.1) <= 9,
        "bare_same_headers must store what the framework stores: {framework:?} vs {bare:?}"
    );
    format!(
        "{} headers of {} bytes (bare: {}) + {} byte payload per event: {}",
        framework.0.len() + 1,
        framework.1,
        bare.1,
        framework.2,
        framework.0.join(", ")
    )
}

/// What the `load` measurement found: events/s of an unsnapshotted load and of a bare ordered
/// read of the same subject, and snapshotted load times.
struct LoadNumbers {
    store_rates: Vec<f64>,
    bare_rates: Vec<f64>,
    snapshotted_short: Vec<Duration>,
    snapshotted_long: Vec<Duration>,
}

/// Fills one account with `LONG` events and one with `SHORT`, through a repository that takes
/// a snapshot every 100 events, then times loads of them, `rounds` times each.
async fn run_load(url: &str, rounds: usize) -> LoadNumbers {
    const LONG: u64 = 10_000;
    const SHORT: u64 = 10;
    let config = StoreConfig::new("benchload");
    let store = JetStreamEventStore::connect(url, config.clone())
        .await
        .expect("connect");
    let filled = Repository::<BankAccount, _>::new(store.clone()).with_snapshots_every(100);
    for (id, events) in [("long", LONG), ("short", SHORT)] {
        let open = AccountCommand::Open {
            owner: id.to_owned(),
            overdraft_limit: 0,
        };
        filled
            .execute(id, open, CommandMetadata::root().with_actor(ACTOR))
            .await
            .expect("open");
        // Deposits in atomic batches of up to 1000 events, then one command that crosses a
        // multiple of 100 and so leaves a snapshot.
        let stream = StreamId::new(ACCOUNT, id);
        let mut version = 1;
        while version < events - 1 {
            let count = (events - 1 - version).min(1000);
            let batch: Vec<NewEvent> = (0..count)
                .map(|_| encode(&AccountEvent::Deposited { amount: AMOUNT }).1)
                .collect();
            store
                .append(&stream, ExpectedVersion::Exact(version), batch, None)
                .await
                .expect("fill");
            version += count;
        }
        filled
            .execute(
                id,
                AccountCommand::Deposit { amount: AMOUNT },
                CommandMetadata::root().with_actor(ACTOR),
            )
            .await
            .expect("last deposit");
    }
    let long = StreamId::new(ACCOUNT, "long");
    let stored = store.stored_subject_for(&long).expect("subject");
    let snapshotted = Repository::<BankAccount, _>::new(store.clone()).with_snapshots_every(100);
    let client = async_nats::connect(url).await.expect("connect");
    let stream = jetstream::new(client)
        .get_stream(config.stream_name())
        .await
        .expect("stream");
    let mut numbers = LoadNumbers {
        store_rates: Vec::new(),
        bare_rates: Vec::new(),
        snapshotted_short: Vec::new(),
        snapshotted_long: Vec::new(),
    };
    for _ in 0..rounds {
        let start = Instant::now();
        let events: Vec<_> =
            futures::TryStreamExt::try_collect::<Vec<_>>(store.load(&long, 1).await.expect("load"))
                .await
                .expect("events");
        assert_eq!(events.len() as u64, LONG);
        numbers
            .store_rates
            .push(LONG as f64 / start.elapsed().as_secs_f64());

        let start = Instant::now();
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: stored.clone(),
                ..Default::default()
            })
            .await
            .expect("consumer");
        let mut messages = consumer.messages().await.expect("messages");
        let mut read = 0;
        while read < LONG {
            futures::StreamExt::next(&mut messages)
                .await
                .expect("message")
                .expect("message");
            read += 1;
        }
        numbers
            .bare_rates
            .push(LONG as f64 / start.elapsed().as_secs_f64());

        for (id, times) in [
            ("short", &mut numbers.snapshotted_short),
            ("long", &mut numbers.snapshotted_long),
        ] {
            let start = Instant::now();
            let loaded = snapshotted
                .load(&StreamId::new(ACCOUNT, id))
                .await
                .expect("load");
            times.push(start.elapsed());
            assert!(loaded.version() >= SHORT);
        }
    }
    drop_context(store.client(), &config).await;
    numbers
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let accounts = env_usize("ACCOUNTS", 256);
    let commands = env_usize("COMMANDS", 200);
    let rounds = env_usize("ROUNDS", 3).max(1);
    let levels: Vec<usize> = std::env::var("WRITERS")
        .unwrap_or_else(|_| "1,16".to_owned())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    let fsync_always = std::env::var("FSYNC").is_ok_and(|v| v == "always");
    let fsync = if fsync_always { "always" } else { "lazy" };
    let wanted = std::env::var("VARIANTS").unwrap_or_default();
    let variants: Vec<Variant> = if wanted.is_empty() {
        Variant::DEFAULT.to_vec()
    } else {
        Variant::ALL
            .into_iter()
            .filter(|v| wanted.split(',').any(|w| w.trim() == v.key()))
            .collect()
    };
    let (_server, url, server_bin) = if let Ok(url) = std::env::var("NATS_URL") {
        (None, url, "external (NATS_URL)".to_owned())
    } else {
        let mut builder = cqrs_test_server::NatsServer::builder();
        if fsync_always {
            builder = builder.config("jetstream { sync_interval: always }\n");
        }
        let server = builder.start().await.expect("start nats-server");
        let url = server.url();
        if let Some(pid) = server.pid() {
            let _ = SERVER_PID.set(pid.to_string());
        }
        let _ = STORE_DIR.set(server.store_dir());
        let bin = std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| "nats-server on PATH".into());
        (Some(server), url, bin)
    };
    let info = async_nats::connect(url.as_str())
        .await
        .expect("connect")
        .server_info();
    let total = (accounts * commands) as f64;
    let stream = StoreConfig::new("<ctx>").stream_config();
    println!("bank-account benchmark");
    println!(
        "  server: nats-server {} ({server_bin}), url {url}",
        info.version
    );
    println!(
        "  fsync: {} (FSYNC=always starts the server with `jetstream {{ sync_interval: always }}`)",
        if fsync_always {
            "sync_interval: always"
        } else {
            "lazy (the server's default)"
        }
    );
    println!(
        "  client: async-nats, tokio multi-thread runtime, {} cores available",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "  workload: {accounts} accounts opened before timing, then {commands} deposits each = {total} commands per run"
    );
    println!(
        "  writers C: {levels:?}; {rounds} rounds per C, variant order alternating per round, median reported"
    );
    println!(
        "  stream per run: StoreConfig::stream_config() (storage {:?}, replicas {}, allow_atomic {}, allow_direct {}, deny_delete {}, deny_purge {}, duplicate_window {:?}), fresh per variant and round, deleted after",
        stream.storage,
        stream.num_replicas,
        stream.allow_atomic_publish,
        stream.allow_direct,
        stream.deny_delete,
        stream.deny_purge,
        stream.duplicate_window
    );
    println!(
        "  wire format (framework == bare_same_headers, checked): {} + Nats-Expected-Last-Subject-Sequence",
        check_same_wire_format(&url).await
    );
    let workload = Workload {
        url: url.clone(),
        accounts,
        commands,
    };
    let mut run = 0usize;
    let mut summary = String::new();
    let mut json = String::new();
    for &writers in &levels {
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        let mut cpu: Vec<Vec<(f64, f64)>> = vec![Vec::new(); variants.len()];
        let mut bytes: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            let mut line = format!("  C={writers:<3} round {}:", round + 1);
            for index in order {
                run += 1;
                let variant = variants[index];
                let context = format!("bench{run}");
                let elapsed = match variant {
                    Variant::Repository => {
                        run_repository(&workload, &context, writers, Flavour::Plain).await
                    }
                    Variant::RepositoryS2 => {
                        run_repository(&workload, &context, writers, Flavour::Compressed).await
                    }
                    Variant::RepositoryKeyed => {
                        run_repository(&workload, &context, writers, Flavour::Keyed).await
                    }
                    Variant::Store => run_store(&workload, &context, writers).await,
                    Variant::BareSame => run_bare(&workload, &context, writers, Wire::Same).await,
                    Variant::BareMinimal => {
                        run_bare(&workload, &context, writers, Wire::Minimal).await
                    }
                    Variant::BareMsgId => run_bare(&workload, &context, writers, Wire::MsgId).await,
                    Variant::BareBody => run_bare(&workload, &context, writers, Wire::InBody).await,
                    Variant::BareEnvelope => {
                        run_bare(&workload, &context, writers, Wire::EnvelopeOnly).await
                    }
                };
                let rate = total / elapsed.as_secs_f64();
                rates[index].push(rate);
                if let Some(per_event) = LAST_BYTES.lock().expect("bytes").take() {
                    bytes[index].push(per_event);
                }
                if let Some(sample) = *LAST_SAMPLE.lock().expect("sample") {
                    let per_op = |ticks: u64| ticks as f64 * 10_000.0 / total;
                    cpu[index].push((per_op(sample.client_ticks), per_op(sample.server_ticks)));
                }
                let _ = write!(
                    line,
                    " {} {rate:.0}/s ({:.2}s)",
                    variant.name(),
                    elapsed.as_secs_f64()
                );
            }
            println!("{line}");
        }
        let medians: Vec<f64> = rates.iter().cloned().map(median).collect();
        let index_of = |v: Variant| variants.iter().position(|&x| x == v);
        let _ = writeln!(
            summary,
            "C={writers} (median of {rounds} rounds; ratio = median of the per-round ratios, variants of a round run back to back)"
        );
        for (index, ((variant, rate), cpu)) in variants.iter().zip(&medians).zip(cpu).enumerate() {
            let mut ratios = String::new();
            for reference in [Variant::BareSame, Variant::BareMinimal] {
                if let Some(r) = index_of(reference)
                    && *variant != reference
                {
                    let per_round = rates[index]
                        .iter()
                        .zip(&rates[r])
                        .map(|(a, b)| a / b)
                        .collect();
                    let _ = write!(ratios, "  {:.2}x {}", median(per_round), reference.name());
                }
            }
            let minimal = index_of(Variant::BareMinimal).filter(|&r| r != index);
            let ratio = minimal.map_or_else(
                || "null".to_owned(),
                |r| {
                    let per_round = rates[index].iter().zip(&rates[r]).map(|(a, b)| a / b);
                    format!("{:.3}", median(per_round.collect()))
                },
            );
            let stored = median(bytes[index].clone());
            let _ = writeln!(
                json,
                r#"{{"variant": "{}", "writers": {writers}, "fsync": "{fsync}", "commands_per_s": {rate:.0}, "ratio": {ratio}, "stored_bytes_per_event": {stored:.0}}}"#,
                variant.name()
            );
            let client = median(cpu.iter().map(|c| c.0).collect());
            let server = median(cpu.iter().map(|c| c.1).collect());
            let _ = writeln!(
                summary,
                "  {:<18} {rate:>9.0} events/s  cpu/event: client {client:>5.1} us, server {server:>5.1} us {ratios}",
                variant.name()
            );
        }
    }
    if wanted.is_empty() || wanted.split(',').any(|w| w.trim() == "load") {
        let load = run_load(&url, rounds.max(3)).await;
        let ratios = load
            .store_rates
            .iter()
            .zip(&load.bare_rates)
            .map(|(a, b)| a / b)
            .collect();
        let (store_rate, bare_rate) = (median(load.store_rates), median(load.bare_rates));
        let ms =
            |times: Vec<Duration>| median(times.iter().map(|t| t.as_secs_f64() * 1e3).collect());
        let (short, long) = (ms(load.snapshotted_short), ms(load.snapshotted_long));
        let ratio = median(ratios);
        let _ = writeln!(
            summary,
            "load (median of {} rounds)\n  unsnapshotted 10,000 events: {store_rate:.0} events/s, bare ordered read {bare_rate:.0} events/s, {ratio:.2}x\n  snapshotted (every 100): 10 events {short:.2} ms, 10,000 events {long:.2} ms",
            rounds.max(3)
        );
        let _ = writeln!(
            json,
            r#"{{"variant": "load", "events": 10000, "events_per_s": {store_rate:.0}, "bare_ordered_read_events_per_s": {bare_rate:.0}, "ratio": {ratio:.3}, "snapshotted_ms_10": {short:.3}, "snapshotted_ms_10000": {long:.3}}}"#
        );
    }
    println!("{summary}");
    // One JSON line per variant and writer count; `ratio` is to `bare_minimal` of the same run.
    print!("{json}");
}
