//! The `cqrs` operator CLI against a spawned nats-server with known events: `--json` documents,
//! the human views, progress on stderr, `replay` of a running projection, `--help` and errors.
//! (`catalog` and `diagram` of registered types are tested with the examples' `cqrs-examples`
//! binary.)
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::unnecessary_literal_bound
)]

use cqrs_core::{CommandMetadata, HandlerError, Projection, RecordedEvent, Repository};
use cqrs_nats::async_nats;
use cqrs_nats::async_nats::jetstream::{self, kv};
use cqrs_nats::deadletter::DeadLetters;
use cqrs_nats::projection::{Checkpoint, read_checkpoints};
use cqrs_nats::{
    JetStreamEventStore, JetStreamProjectionHandle, JetStreamProjectionRunner, ProjectionConfig,
    StoreConfig, Subjects,
};
use cqrs_test_server::NatsServer;
use examples::bank_account::{AccountCommand, BankAccount};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;

const CONTEXT: &str = "bank";

fn cqrs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cqrs"))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run the cqrs binary")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "cqrs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}

fn json(url: &str, args: &[&str]) -> Value {
    let mut all = vec!["--server", url, "--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&stdout(&cqrs(&all))).expect("--json prints one JSON document")
}

fn human(url: &str, args: &[&str]) -> String {
    let mut all = vec!["--server", url];
    all.extend_from_slice(args);
    stdout(&cqrs(&all))
}

/// The ids of a saga-like flow: a root command opens account `a-1`; its event causes a command
/// that opens `b-1`; that event causes a deposit on `a-1`.
struct Flow {
    correlation: String,
    root_command: String,
    opened_a: String,
    second_command: String,
    opened_b: String,
    third_command: String,
    deposited: String,
}

async fn seed(url: &str) -> Flow {
    let store = JetStreamEventStore::connect(url, StoreConfig::new(CONTEXT))
        .await
        .expect("store");
    let accounts: Repository<BankAccount, _> = Repository::new(store);
    let root = CommandMetadata::root().with_actor("alice");
    let opened_a = accounts
        .execute(
            "a-1",
            AccountCommand::Open {
                owner: "Alice".into(),
                overdraft_limit: 100,
            },
            root.clone(),
        )
        .await
        .expect("open a-1");
    let second = CommandMetadata::caused_by(&opened_a[0].metadata, opened_a[0].event_id);
    let opened_b = accounts
        .execute(
            "b-1",
            AccountCommand::Open {
                owner: "Bob".into(),
                overdraft_limit: 0,
            },
            second.clone(),
        )
        .await
        .expect("open b-1");
    let third = CommandMetadata::caused_by(&opened_b[0].metadata, opened_b[0].event_id);
    let deposited = accounts
        .execute(
            "a-1",
            AccountCommand::Deposit { amount: 250 },
            third.clone(),
        )
        .await
        .expect("deposit");
    // An unrelated flow in another tenant.
    accounts
        .execute(
            "c-1",
            AccountCommand::Open {
                owner: "Carol".into(),
                overdraft_limit: 0,
            },
            CommandMetadata::root().with_tenant("acme"),
        )
        .await
        .expect("open c-1");
    Flow {
        correlation: root.correlation_id.to_string(),
        root_command: root.command_id.to_string(),
        opened_a: opened_a[0].event_id.to_string(),
        second_command: second.command_id.to_string(),
        opened_b: opened_b[0].event_id.to_string(),
        third_command: third.command_id.to_string(),
        deposited: deposited[0].event_id.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_reads_a_known_store() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let flow = seed(&url).await;
    // Reading must not change the server: with the snapshot bucket gone, no command brings it
    // back.
    let js = jetstream::new(async_nats::connect(&url).await.expect("connect"));
    js.delete_key_value("SNAPSHOTS_BANK")
        .await
        .expect("delete the snapshot bucket");
    check_history(&url, &flow);
    check_trace(&url, &flow);
    check_streams_and_stats(&url);
    check_progress(&url);
    check_projections(&url).await;
    check_errors(&url);
    let bucket = js.get_key_value("SNAPSHOTS_BANK").await;
    assert!(
        bucket.is_err(),
        "a reading command created the snapshot bucket"
    );
    // (`tail` is checked against a writer that provisions the context again.)
    check_tail(&url).await;
}

/// `tail` from the current end: only the new events matching `--type` are printed, as JSON
/// lines, and it stops after `--limit`.
async fn check_tail(url: &str) {
    let head = json(url, &["streams"])["contexts"][0]["last_position"]
        .as_u64()
        .expect("head");
    let from = (head + 1).to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cqrs"))
        .args([
            "--server",
            url,
            "--json",
            "tail",
            CONTEXT,
            "--type",
            "Withdrawn",
            "--from",
            &from,
            "--limit",
            "2",
            "--poll-ms",
            "50",
        ])
        .env_remove("NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tail");
    let store = JetStreamEventStore::connect(url, StoreConfig::new(CONTEXT))
        .await
        .expect("store");
    let accounts: Repository<BankAccount, _> = Repository::new(store);
    for command in [
        AccountCommand::Deposit { amount: 5 },
        AccountCommand::Withdraw { amount: 1 },
        AccountCommand::Deposit { amount: 7 },
        AccountCommand::Withdraw { amount: 2 },
        AccountCommand::Withdraw { amount: 3 },
    ] {
        accounts
            .execute("a-1", command, CommandMetadata::root())
            .await
            .expect("command");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("tail did not stop after --limit");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = child.wait_with_output().expect("tail output");
    let text = stdout(&output);
    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert_eq!(events[0]["event_type"], "Withdrawn");
    assert_eq!(events[0]["body"]["amount"], 1);
    assert_eq!(events[0]["position"], head + 2);
    assert_eq!(events[1]["body"]["amount"], 2);
    assert_eq!(events[1]["version"], 6);
}

fn check_history(url: &str, flow: &Flow) {
    let doc = json(url, &["history", "BankAccount", "a-1"]);
    assert_eq!(doc["context"], CONTEXT);
    assert_eq!(doc["aggregate_type"], "BankAccount");
    assert_eq!(doc["aggregate_id"], "a-1");
    let events = doc["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["event_type"], "Opened");
    assert_eq!(events[0]["schema_version"], 1);
    assert_eq!(events[0]["position"], 1);
    assert_eq!(events[0]["correlation_id"], flow.correlation.as_str());
    assert_eq!(events[0]["command_id"], flow.root_command.as_str());
    assert_eq!(events[0]["causation_id"], flow.root_command.as_str());
    assert_eq!(events[0]["command_causation_id"], Value::Null);
    assert_eq!(events[0]["actor"], "alice");
    assert_eq!(events[0]["tenant"], Value::Null);
    assert_eq!(events[0]["body"]["owner"], "Alice", "{doc:#}");
    assert!(events[0]["recorded_at"].as_str().is_some());
    assert_eq!(events[1]["version"], 2);
    assert_eq!(events[1]["event_type"], "Deposited");
    assert_eq!(events[1]["command_causation_id"], flow.opened_b.as_str());
    assert_eq!(events[1]["body"]["amount"], 250);

    let tenant = json(url, &["history", "BankAccount", "c-1", "--tenant", "acme"]);
    assert_eq!(tenant["tenant"], "acme");
    assert_eq!(tenant["events"][0]["tenant"], "acme");
    let none = json(url, &["history", "BankAccount", "c-1"]);
    assert_eq!(none["events"].as_array().map(Vec::len), Some(0));

    let text = human(url, &["history", "BankAccount", "a-1"]);
    for needle in [
        "BankAccount/a-1",
        "2 events",
        "Opened",
        "Deposited",
        "schema v1",
        flow.correlation.as_str(),
        flow.root_command.as_str(),
        "alice",
        "\"owner\":\"Alice\"",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from\n{text}");
    }
}

fn check_trace(url: &str, flow: &Flow) {
    let doc = json(url, &["trace", &flow.correlation]);
    assert_eq!(doc["events"], 3);
    let roots = doc["roots"].as_array().expect("roots");
    assert_eq!(roots.len(), 1, "{doc:#}");
    let root = &roots[0];
    assert_eq!(root["command_id"], flow.root_command.as_str());
    assert_eq!(root["caused_by"], Value::Null);
    assert_eq!(root["actor"], "alice");
    let first = &root["events"][0];
    assert_eq!(first["event_id"], flow.opened_a.as_str());
    assert_eq!(first["aggregate_id"], "a-1");
    let second = &first["commands"][0];
    assert_eq!(second["command_id"], flow.second_command.as_str());
    assert_eq!(second["caused_by"], flow.opened_a.as_str());
    let opened_b = &second["events"][0];
    assert_eq!(opened_b["event_id"], flow.opened_b.as_str());
    assert_eq!(opened_b["aggregate_id"], "b-1");
    let third = &opened_b["commands"][0];
    assert_eq!(third["command_id"], flow.third_command.as_str());
    let deposited = &third["events"][0];
    assert_eq!(deposited["event_id"], flow.deposited.as_str());
    assert_eq!(deposited["event_type"], "Deposited");
    assert_eq!(deposited["commands"].as_array().map(Vec::len), Some(0));

    let text = human(url, &["trace", &flow.correlation]);
    assert!(text.contains("3 events, 3 commands"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} missing from\n{text}"))
    };
    let indent = |line: usize| lines[line].find(|c: char| c.is_alphanumeric()).unwrap();
    let (c1, e1, c2, e2, c3, e3) = (
        at(&format!("command {}", flow.root_command)),
        at(&flow.opened_a),
        at(&format!("command {}", flow.second_command)),
        at(&flow.opened_b),
        at(&format!("command {}", flow.third_command)),
        at(&flow.deposited),
    );
    assert!(
        c1 < e1 && e1 < c2 && c2 < e2 && e2 < c3 && c3 < e3,
        "{text}"
    );
    assert!(indent(c1) < indent(e1) && indent(e1) < indent(c2), "{text}");
    assert!(indent(c2) < indent(e2) && indent(e2) < indent(c3) && indent(c3) < indent(e3));
}

fn check_streams_and_stats(url: &str) {
    let doc = json(url, &["streams"]);
    let contexts = doc["contexts"].as_array().expect("contexts");
    assert_eq!(contexts.len(), 1);
    assert_eq!(contexts[0]["context"], CONTEXT);
    assert_eq!(contexts[0]["stream"], "EVENTS_BANK");
    assert_eq!(contexts[0]["events"], 4);
    assert_eq!(contexts[0]["aggregates"], 3);
    let text = human(url, &["streams"]);
    assert!(
        text.contains("CONTEXT") && text.contains("EVENTS_BANK"),
        "{text}"
    );

    // stats
    let doc = json(url, &["stats"]);
    assert_eq!(doc["by"], "type");
    assert_eq!(doc["total"], 4);
    assert_eq!(doc["buckets"][0]["key"], "Opened");
    assert_eq!(doc["buckets"][0]["count"], 3);
    assert_eq!(doc["buckets"][1]["key"], "Deposited");
    assert_eq!(doc["buckets"][1]["count"], 1);
    let doc = json(url, &["stats", "--by", "hour"]);
    let total: u64 = doc["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .sum();
    assert_eq!(total, 4);
    assert!(
        doc["buckets"][0]["key"]
            .as_str()
            .expect("key")
            .ends_with(":00Z")
    );
    let text = human(url, &["stats"]);
    assert!(text.contains("Opened") && text.contains('3'), "{text}");
}

/// With `--progress`, the scans report on stderr — a line at 0 and the final count — while
/// stdout stays one JSON document; without it (stderr is a pipe here) stderr stays empty.
fn check_progress(url: &str) {
    let run = |args: &[&str]| {
        let mut all = vec!["--server", url, "--json"];
        all.extend_from_slice(args);
        let output = cqrs(&all);
        let doc: Value =
            serde_json::from_str(&stdout(&output)).expect("stdout is one JSON document");
        (doc, String::from_utf8(output.stderr).expect("utf-8 stderr"))
    };
    let (doc, stderr) = run(&["--progress", "stats"]);
    assert_eq!(doc["total"], 4);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"EVENTS_BANK: scanned 0 / 4 events (0%)"),
        "{stderr}"
    );
    let last = lines.last().expect("a final line");
    assert!(
        last.starts_with("EVENTS_BANK: scanned 4 / 4 events (100%), done in "),
        "{stderr}"
    );
    let (doc, stderr) = run(&["trace", "--progress", &uuid_of_nothing()]);
    assert_eq!(doc["events"], 0);
    assert!(
        stderr.contains("EVENTS_BANK: scanned 4 / 4 events (100%), done in"),
        "{stderr}"
    );
    let (doc, stderr) = run(&["--progress", "history", "BankAccount", "a-1"]);
    assert_eq!(doc["events"].as_array().map(Vec::len), Some(2));
    assert!(
        stderr.contains("BankAccount/a-1: loaded 0 / 2 events (0%)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("BankAccount/a-1: loaded 2 / 2 events (100%), done in"),
        "{stderr}"
    );
    for args in [&["stats"][..], &["history", "BankAccount", "a-1"]] {
        let (_, stderr) = run(args);
        assert_eq!(stderr, "", "no progress unless asked for or on a terminal");
    }
    let text = {
        let output = cqrs(&["--server", url, "--progress", "stats"]);
        assert!(String::from_utf8_lossy(&output.stderr).contains("scanned 4 / 4"));
        stdout(&output)
    };
    assert!(
        !text.contains("scanned"),
        "progress never goes to stdout: {text}"
    );
}

fn uuid_of_nothing() -> String {
    "00000000-0000-7000-8000-000000000000".to_owned()
}

/// `projections`: a projection that ran (`balances`, stopped since) as one row of its
/// checkpoints, with its lag and parked events; a projection with parked events only (`audit`);
/// durable consumers, which are no projections any more, are not listed. Then `replay` of the
/// stopped projection moves its checkpoints back, and the lag follows.
async fn check_projections(url: &str) {
    let js = jetstream::new(async_nats::connect(url).await.expect("connect"));
    let subjects = Subjects::new(CONTEXT).expect("subjects");
    let last = last_positions(&js).await;
    assert!(
        last.contains(&0) && last.iter().max() == Some(&4),
        "the test wants an empty partition and the head in another: {last:?}"
    );
    let stream = js.get_stream("EVENTS_BANK").await.expect("stream");
    for (durable, projection) in [("stray", None), ("legacy_p0", Some("legacy"))] {
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(durable.into()),
                metadata: projection
                    .map(|p| HashMap::from([("cqrs.projection".to_owned(), p.to_owned())]))
                    .unwrap_or_default(),
                ..Default::default()
            })
            .await
            .expect("consumer");
    }
    let dead = DeadLetters::provision(&js, &subjects, 1)
        .await
        .expect("dead letters");
    for position in [1, 2] {
        let original = stream.get_raw_message(position).await.expect("message");
        dead.park("balances", &original, "boom", 3)
            .await
            .expect("park");
    }
    let original = stream.get_raw_message(1).await.expect("message 1");
    dead.park("audit", &original, "boom", 3)
        .await
        .expect("park");
    run_balances(url, &js, &last).await;

    let doc = json(url, &["--context", CONTEXT, "projections"]);
    assert_eq!(doc["head"], 4);
    let projections = doc["projections"].as_array().expect("projections");
    let names: Vec<&str> = projections
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        ["audit", "balances"],
        "durable consumers are not listed: {doc:#}"
    );
    assert_eq!(
        projections[0],
        serde_json::json!({
            "name": "audit", "live": null, "partitions": 0, "workers": 0, "owned": 0, "lag": 0,
            "position": 0, "highest_position": 0, "parked": 1, "checkpoints": false,
        })
    );
    // Stopped after it handled all four events: every partition's checkpoint is the last event
    // stored in it (none: 0), released.
    assert_eq!(
        projections[1],
        serde_json::json!({
            "name": "balances", "live": true, "partitions": 8, "workers": 0, "owned": 0, "lag": 0,
            "position": 0, "highest_position": 4, "parked": 2, "checkpoints": true,
        })
    );
    let text = human(url, &["projections"]);
    assert_eq!(
        table_rows(&text),
        [
            vec![
                "PROJECTION",
                "LIVE",
                "PARTITIONS",
                "WORKERS",
                "LAG",
                "POSITION",
                "PARKED"
            ],
            vec!["audit", "-", "-", "0", "-", "-", "1", "(no", "checkpoint)"],
            vec!["balances", "yes", "8", "0", "0", "0", "2"],
        ],
        "{text}"
    );
    assert!(
        text.starts_with("context bank (stream EVENTS_BANK, head 4): 2 projections\n"),
        "{text}"
    );

    check_replay_of_a_stopped_projection(url, &js).await;
}

/// `replay` of a stopped projection (`balances`, 2 events parked): every checkpoint is set to
/// 1 (the events from 2 on are handled again when a worker starts), so 3 events are behind.
async fn check_replay_of_a_stopped_projection(url: &str, js: &jetstream::Context) {
    let text = human(
        url,
        &["replay", "balances", "--from-position", "2", "--yes"],
    );
    assert_eq!(
        text,
        "projection balances (context bank): 8 partitions reset to position 2; \
         no live worker: the events are processed again when one starts\n"
    );
    assert_eq!(checkpoints_of(js, "balances").await, released(&[1; 8]));
    let row = &json(url, &["projections"])["projections"][1];
    assert_eq!(
        *row,
        serde_json::json!({
            "name": "balances", "live": true, "partitions": 8, "workers": 0, "owned": 0, "lag": 3,
            "position": 1, "highest_position": 1, "parked": 2, "checkpoints": true,
        })
    );
    let text = human(url, &["projections"]);
    assert!(
        table_rows(&text).contains(&vec!["balances", "yes", "8", "0", "3", "1", "2"]),
        "{text}"
    );
}

/// Starts a [`Counter`] named `name` and waits until it has applied the four events and
/// committed its checkpoints at `last` (the last position of each partition), held by it.
async fn start_caught_up(
    store: &JetStreamEventStore,
    js: &jetstream::Context,
    name: &'static str,
    last: &[u64],
) -> (JetStreamProjectionHandle<Counter>, Counter) {
    let (handle, counter) = spawn_counter(store, Counter::new(name)).await;
    handle
        .wait_for(4, Duration::from_secs(20))
        .await
        .expect("caught up");
    assert_eq!(counter.wait_for_count(4, 0).await, [1, 2, 3, 4]);
    settle(js, name, last, true).await;
    (handle, counter)
}

/// Runs projection `balances` until it has handled the four events and committed its
/// checkpoints (as `projections` shows), then stops it: its checkpoints stay, released. (Attaches to the context
/// without creating anything: the snapshot bucket stays deleted.)
async fn run_balances(url: &str, js: &jetstream::Context, last: &[u64]) {
    let store = JetStreamEventStore::connect(url, StoreConfig::new(CONTEXT).create_missing(false))
        .await
        .expect("store");
    let (handle, _balances) = start_caught_up(&store, js, "balances", last).await;
    // While it runs, its worker holds every partition (and is no worker of `audit`).
    let doc = json(url, &["projections"]);
    assert_eq!(doc["projections"][0]["name"], "audit", "{doc:#}");
    assert_eq!(doc["projections"][0]["workers"], 0, "{doc:#}");
    assert_eq!(
        doc["projections"][1],
        serde_json::json!({
            "name": "balances", "live": true, "partitions": 8, "workers": 1, "owned": 8, "lag": 0,
            "position": 0, "highest_position": 4, "parked": 2, "checkpoints": true,
        })
    );
    handle.stop().await.expect("stop");
    assert_eq!(
        checkpoints_of(js, "balances").await,
        released(last),
        "stopping commits and releases the checkpoints"
    );
}

/// The rows of a table as printed: the header and each row split on whitespace.
fn table_rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect()
}

/// The last position stored in each partition of the context (0: none), from the stream.
async fn last_positions(js: &jetstream::Context) -> Vec<u64> {
    let subjects = Subjects::new(CONTEXT).expect("subjects");
    let mut stream = js.get_stream("EVENTS_BANK").await.expect("stream");
    let head = stream
        .info()
        .await
        .expect("stream info")
        .state
        .last_sequence;
    let mut last = vec![0; subjects.partitions() as usize];
    for position in 1..=head {
        let message = stream.get_raw_message(position).await.expect("message");
        let (partition, ..) = subjects
            .parse_with_partition(&message.subject)
            .expect("an event subject");
        last[partition as usize] = position;
    }
    last
}

/// The checkpoints of `projection`, by partition, as stored.
async fn checkpoints_of(js: &jetstream::Context, projection: &str) -> BTreeMap<u32, Checkpoint> {
    read_checkpoints(js, &Subjects::new(CONTEXT).expect("subjects"))
        .await
        .expect("read the checkpoints")
        .remove(projection)
        .unwrap_or_default()
}

/// Checkpoints at `positions` (by partition), with no owner and each partition's filter.
fn released(positions: &[u64]) -> BTreeMap<u32, Checkpoint> {
    let subjects = Subjects::new(CONTEXT).expect("subjects");
    (0..)
        .zip(positions)
        .map(|(partition, position)| {
            (
                partition,
                Checkpoint {
                    position: *position,
                    owner: None,
                    filter: vec![subjects.partition_filter(partition)],
                },
            )
        })
        .collect()
}

/// Waits until the checkpoints of `projection` are at `positions` (by partition) and all held
/// by one worker (`owned`) or all released; returns them.
async fn settle(
    js: &jetstream::Context,
    projection: &str,
    positions: &[u64],
    owned: bool,
) -> BTreeMap<u32, Checkpoint> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let checkpoints = checkpoints_of(js, projection).await;
        let owners: std::collections::BTreeSet<Option<&str>> =
            checkpoints.values().map(|c| c.owner.as_deref()).collect();
        let owners_as_wanted = if owned {
            owners.len() == 1 && !owners.contains(&None)
        } else {
            owners.iter().all(Option::is_none)
        };
        let unowned: BTreeMap<u32, Checkpoint> = checkpoints
            .iter()
            .map(|(k, c)| {
                (
                    *k,
                    Checkpoint {
                        owner: None,
                        ..c.clone()
                    },
                )
            })
            .collect();
        if owners_as_wanted && unowned == released(positions) {
            return checkpoints;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints of {projection}: {checkpoints:#?}, waiting for {positions:?} (owned: {owned})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first write to each of the checkpoints of `projection` that `watch` sees (opened before
/// a reset: the reset's own writes), by partition.
async fn first_writes(
    watch: &mut kv::Watch,
    projection: &str,
    partitions: usize,
) -> BTreeMap<u32, Checkpoint> {
    let prefix = format!("{projection}.");
    let mut first = BTreeMap::new();
    while first.len() < partitions {
        let entry = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap_or_else(|_| panic!("no write to the checkpoints; saw {first:#?}"))
            .expect("the watch is open")
            .expect("a watched entry");
        assert_eq!(entry.operation, kv::Operation::Put, "{entry:?}");
        let partition: u32 = entry
            .key
            .strip_prefix(&prefix)
            .and_then(|k| k.parse().ok())
            .unwrap_or_else(|| panic!("not a checkpoint of {projection}: {}", entry.key));
        let checkpoint: Checkpoint =
            serde_json::from_slice(&entry.value).expect("a checkpoint's JSON");
        first.entry(partition).or_insert(checkpoint);
    }
    first
}

/// A watch on the checkpoints of `projection`, from now on.
async fn watch_checkpoints(js: &jetstream::Context, projection: &str) -> kv::Watch {
    js.get_key_value("PROJECTION_CHECKPOINTS_BANK")
        .await
        .expect("the checkpoints bucket")
        .watch(format!("{projection}.*"))
        .await
        .expect("watch")
}

/// A context with a mixed-case name and 3 partitions: the CLI takes both from the stream (the
/// store opens without a conflict, an aggregate's length is counted on its stored subject).
#[tokio::test(flavor = "multi_thread")]
async fn contexts_keep_their_name_and_partition_count() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let store = JetStreamEventStore::connect(&url, StoreConfig::new("Ops").partitions(3))
        .await
        .expect("store");
    let accounts: Repository<BankAccount, _> = Repository::new(store);
    for command in [
        AccountCommand::Open {
            owner: "Olga".into(),
            overdraft_limit: 0,
        },
        AccountCommand::Deposit { amount: 3 },
    ] {
        accounts
            .execute("x-1", command, CommandMetadata::root())
            .await
            .expect("command");
    }
    let doc = json(&url, &["streams"]);
    assert_eq!(doc["contexts"][0]["context"], "Ops", "{doc:#}");
    assert_eq!(doc["contexts"][0]["stream"], "EVENTS_OPS");
    let output = cqrs(&[
        "--server",
        &url,
        "--json",
        "--progress",
        "history",
        "BankAccount",
        "x-1",
    ]);
    let doc: Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(doc["context"], "Ops");
    assert_eq!(doc["events"].as_array().map(Vec::len), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("BankAccount/x-1: loaded 0 / 2 events (0%)"),
        "{stderr}"
    );
    let doc = json(&url, &["--context", "ops", "stats"]);
    assert_eq!(doc["context"], "Ops");
    assert_eq!(doc["total"], 2);
}

/// Counts what it applies: the positions, in the order applied. Of a version of its own (1 by
/// default), and held back by a gate if it has one (each event waits for a permit).
#[derive(Clone)]
struct Counter {
    name: &'static str,
    version: u32,
    gate: Option<Arc<Semaphore>>,
    positions: Arc<Mutex<Vec<u64>>>,
}

impl Counter {
    fn new(name: &'static str) -> Self {
        Self::versioned(name, 1)
    }

    fn versioned(name: &'static str, version: u32) -> Self {
        Self {
            name,
            version,
            gate: None,
            positions: Arc::default(),
        }
    }

    /// Applies nothing until `gate` gives a permit per event (or is closed).
    fn gated(self, gate: &Arc<Semaphore>) -> Self {
        Self {
            gate: Some(Arc::clone(gate)),
            ..self
        }
    }

    fn applied(&self) -> Vec<u64> {
        self.positions.lock().unwrap().clone()
    }

    /// Waits until it has applied `n` events in all; returns the positions of those after the
    /// first `seen`, sorted.
    async fn wait_for_count(&self, n: usize, seen: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let applied = self.applied();
            if applied.len() >= n {
                assert_eq!(applied.len(), n, "applied more than expected: {applied:?}");
                let mut new = applied[seen..].to_vec();
                new.sort_unstable();
                return new;
            }
            assert!(
                Instant::now() < deadline,
                "applied {applied:?}, waiting for {n} events"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Projection for Counter {
    fn name(&self) -> &str {
        self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        if let Some(gate) = &self.gate {
            // Closed: open for good.
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
        }
        self.positions.lock().unwrap().push(event.position);
        Ok(())
    }
}

/// `replay` moves the checkpoints of a running projection: its worker processes the events
/// again, from the beginning, a position or a time. Without `--yes` it only says what it would
/// do (exit code 2); an unknown projection or context is an error that creates nothing.
#[tokio::test(flavor = "multi_thread")]
async fn replay_moves_a_running_projection_back() {
    let (_server, url, store) = seeded().await;
    let js = store.jetstream().clone();
    let last = last_positions(&js).await;
    assert!(
        last.contains(&0) && last.iter().max() == Some(&4),
        "the test wants an empty partition and the head in another: {last:?}"
    );
    let (handle, counter) = start_caught_up(&store, &js, "counter", &last).await;
    check_grouped_projections(&url);
    check_replay_refusals(&url, &js, &counter).await;
    check_replays(&url, &js, &counter, &last).await;

    // Caught up again; the checkpoints are where the last replay (position 4, checkpoint 3)
    // and the events after it put them.
    handle
        .wait_for(4, Duration::from_secs(20))
        .await
        .expect("caught up");
    let expected = at_least(&last, 3);
    settle(&js, "counter", &expected, true).await;
    let row = &json(&url, &["projections"])["projections"][0];
    assert_eq!(
        *row,
        serde_json::json!({
            "name": "counter", "live": true, "partitions": 8, "workers": 1, "owned": 8, "lag": 0,
            "position": 3, "highest_position": 4, "parked": 0, "checkpoints": true,
        })
    );
    let text = human(&url, &["projections"]);
    assert_eq!(
        table_rows(&text)[1..],
        [vec!["counter", "yes", "8", "1", "0", "3", "0"]],
        "{text}"
    );
    assert_eq!(counter.applied().len(), 11);
    handle.stop().await.expect("stop");
    assert_eq!(checkpoints_of(&js, "counter").await, released(&expected));
    let row = &json(&url, &["projections"])["projections"][0];
    assert_eq!(row["workers"], 0, "the stopped worker withdrew: {row:#}");
    assert_eq!(row["owned"], 0, "{row:#}");
    assert_eq!(row["position"], 3, "{row:#}");
}

/// Blue/green with the CLI: versions 1 and 2 of `totals` run side by side, `projections` lists
/// both with version 1 live; `switch-over --to 2` says what it would do without `--yes`
/// (changing nothing), switches with it (version 1's runner retires, its checkpoints go) and
/// then refuses as live already; a version 3 held back is refused as not caught up, leaving
/// version 2 live and running.
#[tokio::test(flavor = "multi_thread")]
async fn switch_over_makes_a_caught_up_version_live() {
    let (_server, url, store) = seeded().await;
    open_and_deposit(&store, 10).await;
    let js = store.jetstream().clone();
    let last = last_positions(&js).await;
    let head = 24;
    assert_eq!(last.iter().max(), Some(&head), "{last:?}");
    let ((v1, _), (v2, v2_counter)) = start_totals(&store, head).await;
    settle(&js, "totals", &last, true).await;
    settle(&js, "totals_v2", &last, true).await;
    let row = |name: &str, live: bool| {
        serde_json::json!({
            "name": name, "live": live, "partitions": 8, "workers": 1, "owned": 8, "lag": 0,
            "position": last.iter().min(), "highest_position": head, "parked": 0,
            "checkpoints": true,
        })
    };
    let doc = json(&url, &["projections"]);
    assert_eq!(
        doc["projections"],
        serde_json::json!([row("totals", true), row("totals_v2", false)])
    );
    let lowest = last.iter().min().expect("partitions").to_string();
    let text = human(&url, &["projections"]);
    assert_eq!(
        table_rows(&text)[1..],
        [
            vec!["totals", "yes", "8", "1", "0", &lowest, "0"],
            vec!["totals_v2", "no", "8", "1", "0", &lowest, "0"],
        ],
        "{text}"
    );

    check_switch_over_refusals(&url, &js).await;
    assert!(!v1.is_retired() && !v1.is_finished());

    // Switched: version 2 is live, version 1's runner retired and its checkpoints are gone.
    let doc = json(&url, &["switch-over", "totals", "--to", "2", "--yes"]);
    assert_eq!(
        doc,
        serde_json::json!({
            "projection": "totals", "context": CONTEXT, "to": 2, "outcome": "switched",
            "from": 1, "checkpoints_removed": 8,
        })
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !v1.is_finished() {
        assert!(Instant::now() < deadline, "version 1's runner still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(v1.is_retired());
    assert!(!v2.is_retired() && !v2.is_finished());
    assert_eq!(
        JetStreamProjectionRunner::live_version(&store, "totals")
            .await
            .expect("live version"),
        2
    );
    let doc = json(&url, &["projections"]);
    assert_eq!(
        doc["projections"],
        serde_json::json!([row("totals_v2", true)]),
        "{doc:#}"
    );
    let text = human(&url, &["projections"]);
    assert_eq!(
        table_rows(&text)[1..],
        [vec!["totals_v2", "yes", "8", "1", "0", &lowest, "0"]],
        "{text}"
    );

    check_already_live(&url);
    let (v3, gate) = check_not_caught_up(&url, &store, &v2_counter, head).await;
    assert!(!v2.is_retired() && !v2.is_finished(), "version 2 runs on");

    // Once version 3 has caught up, it is switched to (the human line).
    gate.close();
    v3.wait_for(head + 1, Duration::from_secs(20))
        .await
        .expect("version 3 caught up");
    let text = human(&url, &["switch-over", "totals", "--to", "3", "--yes"]);
    assert_eq!(
        text,
        "projection totals (context bank): version 3 is live now, switched from version 2 (its \
         runners stopped; 8 checkpoints removed)\n"
    );
    assert!(v2.is_retired());
    assert!(!v3.is_retired());
    let doc = json(&url, &["projections"]);
    assert_eq!(doc["projections"][0]["name"], "totals_v3", "{doc:#}");
    assert_eq!(doc["projections"][0]["live"], true, "{doc:#}");
    assert_eq!(doc["projections"].as_array().map(Vec::len), Some(1));
    v3.stop().await.expect("stop version 3");
}

/// Opens `n` more accounts and deposits on each: `2 n` events, spread over the partitions.
async fn open_and_deposit(store: &JetStreamEventStore, n: usize) {
    let accounts: Repository<BankAccount, _> = Repository::new(store.clone());
    for i in 0..n {
        let id = format!("d-{i}");
        for command in [
            AccountCommand::Open {
                owner: "Dora".into(),
                overdraft_limit: 0,
            },
            AccountCommand::Deposit { amount: 1 },
        ] {
            accounts
                .execute(&id, command, CommandMetadata::root())
                .await
                .expect("command");
        }
    }
}

/// Versions 1 and 2 of `totals`, each caught up with the `head` events (applied once each).
async fn start_totals(
    store: &JetStreamEventStore,
    head: u64,
) -> (
    (JetStreamProjectionHandle<Counter>, Counter),
    (JetStreamProjectionHandle<Counter>, Counter),
) {
    let mut runners = Vec::new();
    for version in [1, 2] {
        let (handle, counter) = spawn_counter(store, Counter::versioned("totals", version)).await;
        handle
            .wait_for(head, Duration::from_secs(20))
            .await
            .expect("caught up");
        let count = usize::try_from(head).expect("a count");
        assert_eq!(counter.wait_for_count(count, 0).await.len(), count);
        runners.push((handle, counter));
    }
    let v2 = runners.pop().expect("version 2");
    let v1 = runners.pop().expect("version 1");
    (v1, v2)
}

/// `switch-over` to the live version (or an earlier one) is refused: exit code 1, the document
/// on stdout with `--json`, nothing on stdout without.
fn check_already_live(url: &str) {
    let (doc, message) = refused_switch(url, &["--to", "2", "--yes"]);
    assert_eq!(
        doc,
        serde_json::json!({
            "projection": "totals", "context": CONTEXT, "to": 2, "outcome": "already_live",
            "live": 2,
        })
    );
    assert_eq!(
        message,
        "error: projection `totals` (context `bank`) not switched to version 2: version 2 is \
         live already\n"
    );
    let again = cqrs(&[
        "--server",
        url,
        "switch-over",
        "totals",
        "--to",
        "1",
        "--yes",
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(again.stdout.is_empty(), "a human refusal is on stderr only");
    assert!(String::from_utf8_lossy(&again.stderr).contains("version 2 is live already"));
}

/// Without `--yes`, `switch-over` says what it would do (exit code 2) and changes nothing; an
/// unknown projection or context, or the name of a version, is an error that creates nothing.
async fn check_switch_over_refusals(url: &str, js: &jetstream::Context) {
    let kv = js
        .get_key_value("PROJECTION_CHECKPOINTS_BANK")
        .await
        .expect("the checkpoints bucket");
    let before = read_checkpoints(js, &Subjects::new(CONTEXT).expect("subjects"))
        .await
        .expect("checkpoints");
    let mut watch = kv.watch(">").await.expect("watch");
    refused_without_yes(
        &["--server", url, "switch-over", "totals", "--to", "2"],
        &[
            "without --yes",
            "version 2 of projection `totals` in context `bank`",
            "live now: version 1",
            "version 2 (`totals_v2`) has checkpoints on 8 of 8 partitions",
            "0 events behind the head (version 1: 0 events)",
            "the runners of version 1 would stop",
        ],
    );

    for (args, expected) in [
        (
            vec!["switch-over", "nope", "--to", "2", "--yes"],
            "projection `nope` has no checkpoints in context `bank`",
        ),
        (
            vec!["switch-over", "totals_v2", "--to", "3", "--yes"],
            "`totals_v2` is version 2 of projection `totals`",
        ),
        (
            vec![
                "--context",
                "bnak",
                "switch-over",
                "totals",
                "--to",
                "2",
                "--yes",
            ],
            "context `bnak` not found",
        ),
    ] {
        let output = cqrs(&[&["--server", url][..], &args].concat());
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(output.stdout.is_empty());
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(expected), "{message}");
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    }
    let zero = cqrs(&[
        "--server",
        url,
        "switch-over",
        "totals",
        "--to",
        "0",
        "--yes",
    ]);
    assert_eq!(zero.status.code(), Some(2), "versions start at 1");
    assert!(js.get_stream("EVENTS_BNAK").await.is_err());
    assert!(
        js.get_key_value("PROJECTION_CHECKPOINTS_BNAK")
            .await
            .is_err()
    );

    // Nothing written: no live version, the checkpoints as they were.
    if let Ok(write) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        panic!("a refused switch-over wrote to the bucket: {write:?}");
    }
    assert!(kv.get("totals.live").await.expect("get").is_none());
    let after = read_checkpoints(js, &Subjects::new(CONTEXT).expect("subjects"))
        .await
        .expect("checkpoints");
    assert_eq!(after, before);
}

/// A version 3 held back (it applies nothing until its gate opens) is refused: not caught up,
/// exit code 1, nothing changed — version 2 stays live and its runner goes on applying.
/// Returns version 3's runner and its gate.
async fn check_not_caught_up(
    url: &str,
    store: &JetStreamEventStore,
    v2: &Counter,
    head: u64,
) -> (JetStreamProjectionHandle<Counter>, Arc<Semaphore>) {
    let js = store.jetstream();
    let gate = Arc::new(Semaphore::new(0));
    let v3 = JetStreamProjectionRunner::spawn(
        store,
        Counter::versioned("totals", 3).gated(&gate),
        ProjectionConfig::new().heartbeat(Duration::from_millis(200)),
    )
    .await
    .expect("spawn version 3");
    // It takes every partition (its checkpoints at 0) and applies nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    while checkpoints_of(js, "totals_v3").await.len() < 8 {
        assert!(Instant::now() < deadline, "version 3 took no partitions");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let kv = js
        .get_key_value("PROJECTION_CHECKPOINTS_BANK")
        .await
        .expect("the checkpoints bucket");
    let live = kv
        .entry("totals.live")
        .await
        .expect("get")
        .expect("a live version");
    let (doc, message) = refused_switch(url, &["--to", "3", "--patience-secs", "1", "--yes"]);
    assert_eq!(
        doc,
        serde_json::json!({
            "projection": "totals", "context": CONTEXT, "to": 3, "outcome": "not_caught_up",
            "lag": head, "partitions_without_checkpoint": 0, "switch_under_way": false,
        })
    );
    assert!(
        message.starts_with(
            "error: projection `totals` (context `bank`) not switched to version 3: it has not \
             caught up (24 events behind the head, 0 partitions without a checkpoint); nothing \
             changed"
        ),
        "{message}"
    );
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    // Nothing changed: the live version's entry as it was, version 2 live and applying.
    let now = kv
        .entry("totals.live")
        .await
        .expect("get")
        .expect("a live version");
    assert_eq!((now.revision, now.value), (live.revision, live.value));
    let rows = json(url, &["projections"]);
    let lives: Vec<(&str, bool)> = rows["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .map(|p| (p["name"].as_str().expect("name"), p["live"] == true))
        .collect();
    assert_eq!(
        lives,
        [("totals_v2", true), ("totals_v3", false)],
        "{rows:#}"
    );
    let accounts: Repository<BankAccount, _> = Repository::new(store.clone());
    accounts
        .execute(
            "a-1",
            AccountCommand::Deposit { amount: 1 },
            CommandMetadata::root(),
        )
        .await
        .expect("deposit");
    assert_eq!(v2.wait_for_count(25, 24).await, [head + 1]);
    assert!(!v3.is_retired());
    (v3, gate)
}

/// Each partition's checkpoint after a reset to `checkpoint` and catching up: the last event in
/// the partition, or the reset's checkpoint if that is later.
fn at_least(last: &[u64], checkpoint: u64) -> Vec<u64> {
    last.iter().map(|p| (*p).max(checkpoint)).collect()
}

/// `projections`: the 8 checkpoints of `counter` as one row, with the live worker that owns
/// them all.
fn check_grouped_projections(url: &str) {
    let doc = json(url, &["projections"]);
    let projections = doc["projections"].as_array().expect("projections");
    assert_eq!(projections.len(), 1, "{doc:#}");
    assert_eq!(
        projections[0],
        serde_json::json!({
            "name": "counter", "live": true, "partitions": 8, "workers": 1, "owned": 8, "lag": 0,
            "position": 0, "highest_position": 4, "parked": 0, "checkpoints": true,
        })
    );
    let text = human(url, &["projections"]);
    assert_eq!(
        table_rows(&text)[1..],
        [vec!["counter", "yes", "8", "1", "0", "0", "0"]],
        "{text}"
    );
}

/// Without `--yes`, `replay` says what it would do (exit code 2) and changes nothing; an
/// unknown projection or context is an error that creates nothing; bad arguments are usage
/// errors.
async fn check_replay_refusals(url: &str, js: &jetstream::Context, counter: &Counter) {
    let before = checkpoints_of(js, "counter").await;
    let mut watch = watch_checkpoints(js, "counter").await;
    refused_without_yes(
        &["--server", url, "replay", "counter"],
        &[
            "without --yes",
            "projection `counter`",
            "(8 partitions)",
            "the beginning",
            "1 live worker",
        ],
    );

    // An unknown projection, an unknown context: errors, and nothing is created.
    for (args, expected) in [
        (
            vec!["replay", "nope", "--yes"],
            "projection `nope` has no checkpoints in context `bank`",
        ),
        (
            vec!["--context", "bnak", "replay", "counter", "--yes"],
            "context `bnak` not found",
        ),
    ] {
        let output = cqrs(&[&["--server", url][..], &args].concat());
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.contains(expected), "{message}");
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    }
    assert_eq!(
        json(url, &["streams"])["contexts"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(js.get_stream("EVENTS_BNAK").await.is_err());
    assert!(js.get_key_value("PROJECTION_WORKERS_BNAK").await.is_err());
    assert!(
        js.get_key_value("PROJECTION_CHECKPOINTS_BNAK")
            .await
            .is_err()
    );
    let projections: Vec<String> = read_checkpoints(js, &Subjects::new(CONTEXT).expect("subjects"))
        .await
        .expect("read the checkpoints")
        .into_keys()
        .collect();
    assert_eq!(projections, ["counter"], "no checkpoint of `nope` created");

    let both = cqrs(&[
        "--server",
        url,
        "replay",
        "counter",
        "--from-position",
        "1",
        "--from-time",
        "2026-01-01T00:00:00Z",
    ]);
    assert_eq!(both.status.code(), Some(2));
    let bad_time = cqrs(&[
        "--server",
        url,
        "replay",
        "counter",
        "--from-time",
        "yesterday",
    ]);
    assert_eq!(bad_time.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_time.stderr).contains("RFC 3339"));

    // Nothing moved: no write to the checkpoints, nothing replayed.
    if let Ok(write) = tokio::time::timeout(Duration::from_millis(500), watch.next()).await {
        panic!("a refused replay wrote a checkpoint: {write:?}");
    }
    assert_eq!(checkpoints_of(js, "counter").await, before);
    assert_eq!(counter.applied().len(), 4, "nothing replayed");
}

/// `replay` from the beginning, a position and a time: every checkpoint is set to the
/// position before that start (released, so the running worker takes it again) and the worker
/// applies the events from there again.
async fn check_replays(url: &str, js: &jetstream::Context, counter: &Counter, last: &[u64]) {
    // From the beginning: the checkpoints go to 0 and the running worker applies all 4 events
    // again.
    let mut watch = watch_checkpoints(js, "counter").await;
    let doc = json(url, &["replay", "counter", "--yes"]);
    assert_eq!(doc["projection"], "counter");
    assert_eq!(doc["context"], CONTEXT);
    assert_eq!(doc["partitions_reset"], 8);
    assert_eq!(doc["workers"], 1);
    assert_eq!(
        doc["from"],
        serde_json::json!({"kind": "beginning", "position": null, "time": null})
    );
    assert_eq!(
        first_writes(&mut watch, "counter", 8).await,
        released(&[0; 8])
    );
    assert_eq!(counter.wait_for_count(8, 4).await, [1, 2, 3, 4]);
    settle(js, "counter", last, true).await;

    // From a position: the checkpoints go to 2; events 3 and 4 are applied again.
    let mut watch = watch_checkpoints(js, "counter").await;
    let text = human(url, &["replay", "counter", "--from-position", "3", "--yes"]);
    assert_eq!(
        text,
        "projection counter (context bank): 8 partitions reset to position 3; \
         1 live worker processes the events again\n"
    );
    assert_eq!(
        first_writes(&mut watch, "counter", 8).await,
        released(&[2; 8])
    );
    assert_eq!(counter.wait_for_count(10, 8).await, [3, 4]);
    settle(js, "counter", &at_least(last, 2), true).await;

    // From a time: the time event 4 was stored at; the checkpoints go to 3.
    let stream = js.get_stream("EVENTS_BANK").await.expect("stream");
    let at = stream.get_raw_message(4).await.expect("message 4").time;
    let at_text = at.format(&Rfc3339).expect("RFC 3339");
    let mut watch = watch_checkpoints(js, "counter").await;
    let doc = json(
        url,
        &["replay", "counter", "--from-time", &at_text, "--yes"],
    );
    assert_eq!(doc["partitions_reset"], 8);
    assert_eq!(doc["from"]["kind"], "time");
    assert_eq!(doc["from"]["position"], Value::Null);
    let shown = time::OffsetDateTime::parse(doc["from"]["time"].as_str().expect("time"), &Rfc3339)
        .expect("an RFC 3339 time");
    assert_eq!(shown, at);
    assert_eq!(
        first_writes(&mut watch, "counter", 8).await,
        released(&[3; 8])
    );
    assert_eq!(counter.wait_for_count(11, 10).await, [4]);
}

fn check_errors(url: &str) {
    let unknown = cqrs(&["--server", url, "--context", "nope", "stats"]);
    assert_eq!(unknown.status.code(), Some(1));
    let message = String::from_utf8_lossy(&unknown.stderr);
    assert!(message.contains("context `nope` not found"), "{message}");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    let bad = cqrs(&["--server", url, "trace", "not-a-uuid"]);
    assert_eq!(bad.status.code(), Some(2), "clap rejects bad arguments");
}

#[test]
fn help_lists_every_command() {
    let text = stdout(&cqrs(&["--help"]));
    let commands = [
        "history",
        "trace",
        "tail",
        "streams",
        "stats",
        "export",
        "import",
        "projections",
        "health",
        "replay",
        "switch-over",
        "catalog",
        "diagram",
    ];
    // The `Commands:` section names exactly these (and `help`), each with a summary.
    let listed: Vec<&str> = text
        .lines()
        .skip_while(|line| *line != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next().expect("a command name");
            assert!(words.next().is_some(), "{name} has no summary in\n{text}");
            name
        })
        .collect();
    assert_eq!(listed, [&commands[..], &["help"]].concat(), "{text}");
    for command in commands {
        let help = stdout(&cqrs(&[command, "--help"]));
        assert!(
            help.contains("JSON"),
            "{command} --help documents its JSON:\n{help}"
        );
    }
    for option in ["--server", "--context", "--json", "--progress", "NATS_URL"] {
        assert!(text.contains(option), "{option} missing from\n{text}");
    }
    assert!(text.contains("This binary registers no types"), "{text}");
}

/// The stock binary registers no types: `catalog` says so and how to register them, and
/// succeeds; `diagram` is a one-line error. Neither needs a server.
#[test]
fn the_stock_binary_registers_nothing() {
    let unreachable = ["--server", "nats://127.0.0.1:1"];
    let text = stdout(&cqrs(&[&unreachable[..], &["catalog"]].concat()));
    assert!(text.contains("no event types registered"), "{text}");
    assert!(text.contains("cqrs_cli::Cli::new()"), "{text}");
    let doc: Value = serde_json::from_str(&stdout(&cqrs(
        &[&unreachable[..], &["--json", "catalog"]].concat(),
    )))
    .expect("JSON");
    assert_eq!(doc, serde_json::json!({"aggregates": [], "events": []}));
    let output = cqrs(&[&unreachable[..], &["diagram", "Order"]].concat());
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.starts_with("error: no aggregates are registered"),
        "{message}"
    );
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

#[test]
fn unreachable_server_is_a_one_line_error() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    for args in [
        vec!["--server", url.as_str(), "streams"],
        vec![
            "--server",
            url.as_str(),
            "--json",
            "history",
            "BankAccount",
            "a-1",
        ],
    ] {
        let output = cqrs(&args);
        assert_eq!(output.status.code(), Some(1));
        assert!(output.stdout.is_empty());
        let message = String::from_utf8_lossy(&output.stderr);
        assert!(message.starts_with("error: cannot connect to"), "{message}");
        assert!(message.contains(&url), "{message}");
        assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    }
}

/// Runs `args` without `--yes`: refused with exit code 2, nothing on stdout, one line on stderr
/// that says each of `needles`.
fn refused_without_yes(args: &[&str], needles: &[&str]) {
    let refused = cqrs(args);
    assert_eq!(refused.status.code(), Some(2));
    assert!(refused.stdout.is_empty());
    let message = String::from_utf8_lossy(&refused.stderr);
    for needle in needles {
        assert!(
            message.contains(needle),
            "{needle:?} missing from {message}"
        );
    }
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
}

/// `--json switch-over totals <args>`, refused (exit code 1): the outcome document on stdout
/// and the message on stderr.
fn refused_switch(url: &str, args: &[&str]) -> (Value, String) {
    let base = ["--server", url, "--json", "switch-over", "totals"];
    let output = cqrs(&[&base[..], args].concat());
    assert_eq!(output.status.code(), Some(1));
    let doc = serde_json::from_slice(&output.stdout).expect("a JSON document");
    (doc, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// Runs `counter` on `store` with a short heartbeat.
async fn spawn_counter(
    store: &JetStreamEventStore,
    counter: Counter,
) -> (JetStreamProjectionHandle<Counter>, Counter) {
    let handle = JetStreamProjectionRunner::spawn(
        store,
        counter.clone(),
        ProjectionConfig::new().heartbeat(Duration::from_millis(200)),
    )
    .await
    .expect("spawn");
    (handle, counter)
}

/// A server with the seeded bank context, its URL and a store on that context.
async fn seeded() -> (NatsServer, String, JetStreamEventStore) {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    seed(&url).await;
    let store = JetStreamEventStore::connect(&url, StoreConfig::new(CONTEXT))
        .await
        .expect("store");
    (server, url, store)
}

/// `export`: every event of the context as NDJSON, in stream order, subjects in the form writers
/// publish to, headers and bodies as stored; `--from` and `--output` too.
#[tokio::test(flavor = "multi_thread")]
async fn export_writes_every_event_as_ndjson() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let flow = seed(&url).await;
    let output = cqrs(&["--server", &url, "--context", CONTEXT, "export"]);
    let text = stdout(&output);
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect();
    assert_eq!(lines.len(), 4, "{text}");
    let positions: Vec<u64> = lines
        .iter()
        .map(|l| l["position"].as_u64().unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    // The subject writers publish to: no partition token.
    assert_eq!(lines[0]["subject"], "bank.events._.BankAccount.a-1");
    assert_eq!(lines[3]["subject"], "bank.events.acme.BankAccount.c-1");
    // Headers as stored: the event id and the envelope.
    assert_eq!(
        lines[0]["headers"]["Nats-Msg-Id"][0],
        flow.opened_a.as_str()
    );
    assert_eq!(
        lines[2]["headers"]["Nats-Msg-Id"][0],
        flow.deposited.as_str()
    );
    let envelope: Value =
        serde_json::from_str(lines[2]["headers"]["Cqrs-Envelope"][0].as_str().unwrap()).unwrap();
    assert_eq!(envelope["type"], "Deposited");
    assert_eq!(envelope["version"], 2);
    let body: Value = serde_json::from_str(lines[2]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["amount"], 250);
    assert!(lines[0]["time"].as_str().unwrap().ends_with('Z'));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("exported 4 events"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // From a position on.
    let later = stdout(&cqrs(&[
        "--server",
        &url,
        "--context",
        CONTEXT,
        "export",
        "--from",
        "3",
    ]));
    assert_eq!(later.lines().count(), 2, "{later}");
    assert_eq!(later.lines().next(), text.lines().nth(2));

    // To a file: the same lines.
    let dir = std::env::temp_dir().join(format!("cqrs-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bank.ndjson");
    let to_file = cqrs(&[
        "--server",
        &url,
        "--context",
        CONTEXT,
        "export",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert!(stdout(&to_file).is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each aggregate's events of `a` and `b` have the same ids, versions, metadata, times and
/// bodies.
fn assert_same_events(a: &[Vec<cqrs_core::RecordedEvent>], b: &[Vec<cqrs_core::RecordedEvent>]) {
    for (a, b) in a.iter().zip(b) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!(
                (
                    a.event_id,
                    a.version,
                    &a.metadata,
                    a.recorded_at,
                    &a.payload
                ),
                (
                    b.event_id,
                    b.version,
                    &b.metadata,
                    b.recorded_at,
                    &b.payload
                )
            );
        }
    }
}

/// What [`Ledger`] notes of an event: aggregate, version, type and body.
type Noted = (String, u64, String, Vec<u8>);

/// A projection that notes each event it is given.
#[derive(Default)]
struct Ledger(Mutex<Vec<Noted>>);

impl Projection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.0.lock().unwrap().push((
            event.aggregate_id.clone(),
            event.version,
            event.payload.event_type.clone(),
            event.payload.data.clone(),
        ));
        Ok(())
    }
}

/// What [`Ledger`] holds once rebuilt from the first event of `context`.
async fn ledger(url: &str, context: &str) -> Vec<Noted> {
    let store = JetStreamEventStore::connect(url, StoreConfig::new(context))
        .await
        .expect("store");
    let ledger = Ledger::default();
    cqrs_core::projection::catch_up(&store, &ledger, 1, &cqrs_core::RetryPolicy::default())
        .await
        .expect("rebuild");
    let noted = ledger.0.lock().unwrap().clone();
    assert_eq!(noted.len(), 4, "{noted:?}");
    noted
}

/// The events of `context`, aggregate by aggregate, as the library loads them.
async fn histories(url: &str, context: &str) -> Vec<Vec<cqrs_core::RecordedEvent>> {
    use cqrs_core::EventStore;
    use futures::TryStreamExt;
    let store = JetStreamEventStore::connect(url, StoreConfig::new(context))
        .await
        .expect("store");
    let mut all = Vec::new();
    for (id, tenant) in [("a-1", None), ("b-1", None), ("c-1", Some("acme"))] {
        let stream = cqrs_core::StreamId::of::<BankAccount>(id, tenant);
        let events: Vec<_> = store
            .load(&stream, 1)
            .await
            .expect("load")
            .try_collect()
            .await
            .expect("events");
        all.push(events);
    }
    all
}

/// `import`: an export written into a fresh server, and into another context, keeps ids,
/// versions, metadata and bodies; nothing without `--yes`; a re-run, or finishing an interrupted
/// import, writes nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn import_restores_an_export_once() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    seed(&url).await;
    let dir = std::env::temp_dir().join(format!("cqrs-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bank.ndjson");
    let file_arg = file.to_str().unwrap();
    stdout(&cqrs(&[
        "--server",
        &url,
        "--context",
        CONTEXT,
        "export",
        "--output",
        file_arg,
    ]));

    // Without --yes: says what it would do, writes nothing.
    let refused = cqrs(&[
        "--server",
        &url,
        "--context",
        "restored",
        "import",
        "--input",
        file_arg,
    ]);
    assert_eq!(refused.status.code(), Some(2));
    let contexts = json(&url, &["streams"]).to_string();
    assert!(!contexts.contains("RESTORED"), "{contexts}");

    let import = |context: &str, input: &str| {
        json(
            &url,
            &["--context", context, "import", "--input", input, "--yes"],
        )
    };
    let first = import("restored", file_arg);
    assert_eq!(first["imported"], 4, "{first}");
    assert_eq!(first["skipped"], 0, "{first}");
    let original = histories(&url, CONTEXT).await;
    // The same into a fresh server, under the context's own name.
    let fresh = NatsServer::start().await.expect("a second nats-server");
    let moved = json(
        &fresh.url(),
        &["--context", CONTEXT, "import", "--input", file_arg, "--yes"],
    );
    assert_eq!(moved["imported"], 4, "{moved}");
    for restored in [
        histories(&url, "restored").await,
        histories(&fresh.url(), CONTEXT).await,
    ] {
        assert_eq!(restored.len(), original.len());
        assert_same_events(&original, &restored);
    }
    // A projection rebuilt from the first event where the events now are sees what it sees
    // in the original context.
    assert_eq!(
        ledger(&url, CONTEXT).await,
        ledger(&fresh.url(), CONTEXT).await
    );
    // A re-run writes nothing.
    let again = import("restored", file_arg);
    assert_eq!(
        (again["imported"].as_u64(), again["skipped"].as_u64()),
        (Some(0), Some(4))
    );
    assert_eq!(histories(&url, "restored").await.concat().len(), 4);

    // An interrupted import (its first two lines), finished by a full one.
    let text = std::fs::read_to_string(&file).unwrap();
    let half = dir.join("half.ndjson");
    let head: String = text.lines().take(2).flat_map(|l| [l, "\n"]).collect();
    std::fs::write(&half, head).unwrap();
    assert_eq!(import("partial", half.to_str().unwrap())["imported"], 2);
    let rest = import("partial", file_arg);
    assert_eq!(
        (rest["imported"].as_u64(), rest["skipped"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(histories(&url, "partial").await.concat().len(), 4);

    // Another event at a version the context holds: the import stops at that line.
    let mut other: Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    other["headers"]["Nats-Msg-Id"][0] = Value::from(uuid::Uuid::now_v7().to_string());
    let forged = dir.join("forged.ndjson");
    std::fs::write(&forged, format!("{other}\n")).unwrap();
    let refused = cqrs(&[
        "--server",
        &url,
        "--context",
        "restored",
        "import",
        "--input",
        forged.to_str().unwrap(),
        "--yes",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("line 1") && stderr.contains("another event at version 1"),
        "{stderr}"
    );
    assert_eq!(histories(&url, "restored").await.concat().len(), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, cqrs_core::DomainEvent)]
enum PersonEvent {
    Named {
        person: String,
        #[personal(subject = person, replacement = "")]
        name: String,
    },
}

/// `history` never prints personal data: a sealed field shows as `[personal]` while its key
/// exists and as `[erased]` once its subject is forgotten.
#[tokio::test]
async fn history_marks_sealed_fields_without_opening_them() {
    use cqrs_core::personal::PersonalDataStore;
    use cqrs_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};

    let server = NatsServer::start().await.unwrap();
    let url = &server.url();
    let raw = JetStreamEventStore::connect(url, StoreConfig::new("people"))
        .await
        .unwrap();
    let keys = Arc::new(cqrs_nats::JetStreamKeyStore::open(&raw).await.unwrap());
    let store = PersonalDataStore::new(raw, keys);
    for person in ["p-1", "p-2"] {
        let named = PersonEvent::Named {
            person: person.to_owned(),
            name: format!("Secret Name {person}"),
        };
        let event = NewEvent::encode(
            &named,
            cqrs_core::metadata::new_id(),
            Metadata::standalone(),
        )
        .unwrap();
        let stream = StreamId::new("Person", person);
        store
            .append(&stream, ExpectedVersion::NoStream, vec![event], None)
            .await
            .unwrap();
    }
    store.forget("p-1").await.unwrap();

    let body = |id: &str| {
        let doc = json(url, &["--context", "people", "history", "Person", id]);
        doc["events"][0]["body"].clone()
    };
    assert_eq!(
        body("p-1"),
        serde_json::json!({"person": "p-1", "name": "[erased]"})
    );
    assert_eq!(
        body("p-2"),
        serde_json::json!({"person": "p-2", "name": "[personal]"})
    );
    let text = human(url, &["--context", "people", "history", "Person", "p-2"]);
    assert!(
        text.contains("[personal]") && !text.contains("Secret Name"),
        "{text}"
    );
}

/// Events of 20 aggregates, 150 each, appended in batches: enough that an import takes a
/// moment to kill.
async fn seed_many(store: &JetStreamEventStore) -> u64 {
    use cqrs_core::{EventStore, ExpectedVersion, StreamId};
    let (aggregates, per_aggregate, batch) = (20u64, 150u64, 50u64);
    for a in 0..aggregates {
        let stream = StreamId::new("Meter", format!("m-{a}"));
        for start in (0..per_aggregate).step_by(usize::try_from(batch).unwrap()) {
            let events = (start..start + batch).map(read_event).collect();
            let expected = if start == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(start)
            };
            store.append(&stream, expected, events, None).await.unwrap();
        }
    }
    aggregates * per_aggregate
}

async fn stored_count(js: &jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut stream) => stream.info().await.map_or(0, |info| info.state.messages),
        Err(_) => 0,
    }
}

/// An import killed (SIGKILL) halfway and run again ends with the same events as the original:
/// nothing doubled, nothing missing, ids, versions and envelopes kept.
#[tokio::test]
async fn import_killed_halfway_finishes_identically_when_run_again() {
    use cqrs_core::{EventStore, StreamId};
    use futures::TryStreamExt;
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let original = JetStreamEventStore::connect(&url, StoreConfig::new("meters"))
        .await
        .unwrap();
    let total = seed_many(&original).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("meters.ndjson");
    let file_arg = file.to_str().unwrap();
    stdout(&cqrs(&[
        "--server",
        &url,
        "--context",
        "meters",
        "export",
        "--output",
        file_arg,
    ]));
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());

    // Kill it once some, not all, events are in (a fresh context per attempt, in case one run
    // finishes before it is caught).
    let mut killed_at = None;
    for attempt in 0..5 {
        let context = format!("restored{attempt}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_cqrs"))
            .args(["--server", &url, "--context", &context, "import"])
            .args(["--input", file_arg, "--yes"])
            .env_remove("NATS_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stream = format!("EVENTS_{}", context.to_uppercase());
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
            seen = stored_count(&js, &stream).await;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let stored = stored_count(&js, &stream).await;
        if stored > 0 && stored < total {
            killed_at = Some((context, stored));
            break;
        }
    }
    let (context, stored) = killed_at.expect("an import killed halfway");

    let again = json(
        &url,
        &[
            "--context",
            &context,
            "import",
            "--input",
            file_arg,
            "--yes",
        ],
    );
    assert_eq!(again["skipped"].as_u64(), Some(stored), "{again}");
    assert_eq!(again["imported"].as_u64(), Some(total - stored), "{again}");
    let restored_stream = format!("EVENTS_{}", context.to_uppercase());
    assert_eq!(
        stored_count(&js, &restored_stream).await,
        total,
        "nothing doubled"
    );
    let restored = JetStreamEventStore::connect(&url, StoreConfig::new(&context))
        .await
        .unwrap();
    for a in 0..20 {
        let stream = StreamId::new("Meter", format!("m-{a}"));
        let load = |store: JetStreamEventStore| {
            let stream = stream.clone();
            async move {
                let events: Vec<RecordedEvent> = store
                    .load(&stream, 1)
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                events
            }
        };
        assert_same_events(
            &[load(original.clone()).await],
            &[load(restored.clone()).await],
        );
    }
}

/// `health` for probes: zero while every live projection keeps up and nothing is parked,
/// one (with the failing check on stderr and the document on stdout) when a projection lags
/// past `--max-lag` or has parked events.
#[tokio::test]
async fn health_fails_on_a_lagging_projection_and_on_parked_events() {
    use cqrs_core::{EventStore, ExpectedVersion, StreamId};
    let (_server, url, store) = seeded().await;
    let health = |max_lag: &str| {
        let output = cqrs(&[
            "--server",
            &url,
            "--json",
            "--context",
            CONTEXT,
            "health",
            "--max-lag",
            max_lag,
        ]);
        let doc: Value = serde_json::from_slice(&output.stdout).expect("a JSON document");
        (
            output.status.code(),
            doc,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, doc, _) = health("0");
    assert_eq!(code, Some(0), "{doc:#}");
    assert_eq!(doc["healthy"], true);
    let checks: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["server", "stream"], "no projection yet");

    // A projection that handled the four events, then stopped.
    let (handle, counter) = spawn_counter(&store, Counter::new("totals")).await;
    handle.wait_for(4, Duration::from_secs(20)).await.unwrap();
    assert_eq!(counter.wait_for_count(4, 0).await, [1, 2, 3, 4]);
    handle.stop().await.unwrap();
    assert_eq!(health("0").0, Some(0));

    // Three events it has not handled: a lag of 3.
    let events = (0..3).map(read_event).collect();
    store
        .append(
            &StreamId::new("Meter", "m-1"),
            ExpectedVersion::NoStream,
            events,
            None,
        )
        .await
        .unwrap();
    let (code, doc, stderr) = health("2");
    assert_eq!(code, Some(1), "{doc:#}");
    assert_eq!(doc["healthy"], false);
    let totals = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "projection totals")
        .unwrap();
    assert_eq!(totals["ok"], false);
    assert_eq!(totals["detail"], "lag 3 > 2");
    assert!(stderr.contains("projection totals: lag 3 > 2"), "{stderr}");
    assert_eq!(health("3").0, Some(0));

    // A parked event fails it whatever the lag allowed.
    let js = jetstream::new(async_nats::connect(&url).await.unwrap());
    let subjects = Subjects::new(CONTEXT).unwrap();
    let dead = DeadLetters::provision(&js, &subjects, 1).await.unwrap();
    let original = js
        .get_stream("EVENTS_BANK")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap();
    dead.park("totals", &original, "boom", 3).await.unwrap();
    let (code, doc, _) = health("1000");
    assert_eq!(code, Some(1), "{doc:#}");
    let text = human(&url, &["--context", CONTEXT, "projections"]);
    assert!(text.contains("totals"), "{text}");
    let plain = cqrs(&["--server", &url, "--context", CONTEXT, "health"]);
    assert_eq!(plain.status.code(), Some(1));
    let shown = String::from_utf8_lossy(&plain.stdout);
    assert!(
        shown.contains("UNHEALTHY") && shown.contains("FAIL"),
        "{shown}"
    );
    assert!(shown.contains("1 parked"), "{shown}");
}

/// An event `Read {"n": n}` of no particular aggregate type.
fn read_event(n: u64) -> cqrs_core::NewEvent {
    cqrs_core::NewEvent::new(
        cqrs_core::metadata::new_id(),
        cqrs_core::SerializedEvent {
            event_type: "Read".to_owned(),
            schema_version: 1,
            data: format!("{{\"n\":{n}}}").into_bytes(),
        },
        cqrs_core::Metadata::standalone(),
    )
}
