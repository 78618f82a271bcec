//! The operator CLI with registered types, through the `cqrs-examples` binary (which registers
//! `BankAccount` in context `bank` and `Order` in `sales`): `catalog`, `diagram`, `--help`, and
//! the registered context as the default of `history`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_cli::Cli;
use cqrs_core::{Aggregate, CommandMetadata, Repository};
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use examples::bank_account::{AccountCommand, BankAccount};
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use serde_json::Value;
use std::process::{Command, Output};

/// No server listens there: `catalog` and `diagram` must not need one.
const NO_SERVER: &str = "nats://127.0.0.1:1";

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cqrs-examples"))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run the cqrs-examples binary")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "cqrs-examples failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).expect("utf-8 output")
}

fn offline(args: &[&str]) -> String {
    stdout(&cli(&[&["--server", NO_SERVER][..], args].concat()))
}

fn offline_json(args: &[&str]) -> Value {
    serde_json::from_str(&offline(&[&["--json"][..], args].concat()))
        .expect("--json prints one JSON document")
}

/// A one-line error on stderr, exit code 1, nothing on stdout.
fn offline_error(args: &[&str]) -> String {
    let output = cli(&[&["--server", NO_SERVER][..], args].concat());
    assert_eq!(output.status.code(), Some(1), "{args:?}");
    assert!(output.stdout.is_empty(), "{args:?}");
    let message = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    message
}

#[test]
fn catalog_lists_the_registered_event_types() {
    let doc = offline_json(&["catalog"]);
    let aggregates = doc["aggregates"].as_array().expect("aggregates");
    assert_eq!(aggregates.len(), 5, "{doc:#}");
    assert_eq!(aggregates[0]["aggregate_type"], "BankAccount");
    assert_eq!(aggregates[0]["context"], "bank");
    assert_eq!(aggregates[0]["state_machine"], true);
    assert_eq!(
        aggregates[0]["event_enum"],
        "examples::bank_account::AccountEvent"
    );
    assert_eq!(aggregates[1]["aggregate_type"], "Username");
    assert_eq!(
        aggregates[1]["event_types"],
        serde_json::json!(["Claimed", "Released"])
    );
    assert_eq!(aggregates[2]["aggregate_type"], "Order");
    assert_eq!(
        aggregates[2]["event_types"],
        serde_json::json!(["Submitted", "PaymentValidated", "Shipped", "Cancelled"])
    );

    let events = doc["events"].as_array().expect("events");
    assert_eq!(events.len(), 20, "{doc:#}");
    // A plain (not state-machine) aggregate is listed too.
    assert_eq!(aggregates[4]["aggregate_type"], "Graph");
    assert_eq!(aggregates[4]["state_machine"], false);
    let find = |name: &str| {
        events
            .iter()
            .find(|e| e["event_type"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {doc:#}"))
    };
    let submitted = find("Submitted");
    assert_eq!(submitted["context"], "sales");
    assert_eq!(submitted["aggregate_type"], "Order");
    assert_eq!(submitted["version"], 3);
    assert_eq!(submitted["readable_versions"], serde_json::json!([1, 2, 3]));
    assert_eq!(submitted["upcasts_from"], serde_json::json!([1, 2]));
    // The stored name, not the Rust variant `Paid`.
    assert_eq!(
        find("PaymentValidated")["upcasts_from"],
        serde_json::json!([])
    );
    assert_eq!(find("Opened")["context"], "bank");

    let text = offline(&["catalog"]);
    assert!(text.starts_with("5 aggregates, 20 event types\n"), "{text}");
    let row = |cells: &[&str]| {
        text.lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>() == cells)
    };
    assert!(
        row(&[
            "CONTEXT",
            "AGGREGATE",
            "EVENT",
            "TYPE",
            "VERSION",
            "UPCASTS",
            "FROM"
        ]),
        "{text}"
    );
    assert!(
        row(&["sales", "Order", "Submitted", "v3", "v1,", "v2"]),
        "{text}"
    );
    assert!(
        row(&["bank", "BankAccount", "Withdrawn", "v1", "-"]),
        "{text}"
    );
    assert!(
        row(&[
            "Order",
            "sales",
            "yes",
            "examples::order_fulfilment::OrderEvent"
        ]),
        "{text}"
    );

    // `--context` keeps one context's types.
    let bank = offline_json(&["--context", "bank", "catalog"]);
    assert_eq!(bank["aggregates"].as_array().map(Vec::len), Some(2));
    assert_eq!(bank["events"].as_array().map(Vec::len), Some(6));
    let text = offline(&["--context", "nowhere", "catalog"]);
    assert_eq!(text, "no event types registered in context nowhere\n");
}

#[test]
fn diagram_draws_the_registered_state_machines() {
    let snapshot = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots/order_fulfilment.mmd"),
    )
    .expect("snapshot");
    assert_eq!(offline(&["diagram", "Order"]), snapshot);
    assert_eq!(
        offline(&["diagram", "order", "--format", "mermaid"]),
        snapshot
    );
    assert_eq!(
        offline(&["diagram", "BankAccount", "--format", "dot"]),
        BankAccount::transition_table()
            .expect("a state machine")
            .to_dot()
    );

    let doc = offline_json(&["diagram", "Order"]);
    assert_eq!(doc["aggregate_type"], "Order");
    assert_eq!(doc["context"], "sales");
    assert_eq!(doc["initial"], "Draft");
    let states: Vec<(&str, bool)> = doc["states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["terminal"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("Draft", false),
            ("Submitted", false),
            ("Paid", false),
            ("Shipped", true),
            ("Cancelled", true)
        ]
    );
    assert_eq!(
        doc["commands"],
        serde_json::json!(["Submit", "Pay", "Ship", "Cancel"])
    );
    let transitions = doc["transitions"].as_array().expect("transitions");
    assert_eq!(transitions.len(), 6);
    assert_eq!(
        transitions[3],
        serde_json::json!({"from": "Draft", "on": "Cancel", "to": "Cancelled", "handler": "cancel"})
    );
    assert_eq!(
        doc["analysis"],
        serde_json::json!({"unreachable": [], "dead_ends": [], "clean": true})
    );
    // `--json` wins over `--format`.
    assert_eq!(offline_json(&["diagram", "Order", "--format", "dot"]), doc);
}

#[test]
fn diagram_of_an_unregistered_aggregate_names_the_registered_ones() {
    let message = offline_error(&["diagram", "Invoice"]);
    assert_eq!(
        message,
        "error: aggregate `Invoice` is not registered; registered: BankAccount (bank), Username (bank), Order (sales), Task (tasks), Graph (graphs)\n"
    );
    let message = offline_error(&["--context", "bank", "diagram", "Order"]);
    assert!(
        message.contains(
            "`Order` is not registered in context `bank`; registered: BankAccount (bank), Username (bank)"
        ),
        "{message}"
    );
    let message = offline_error(&["--context", "nowhere", "diagram", "Order"]);
    assert!(
        message.contains("no aggregates are registered in this binary in context `nowhere`"),
        "{message}"
    );
}

#[test]
fn help_names_the_registered_types() {
    let text = offline(&["--help"]);
    assert!(
        text.contains(
            "Registered aggregates: BankAccount (bank), Username (bank), Order (sales), Task (tasks), Graph (graphs); 20 event types. \
             `catalog` lists them, `diagram <AGGREGATE>` draws a state machine."
        ),
        "{text}"
    );
    for command in ["catalog", "diagram"] {
        let help = offline(&[command, "--help"]);
        assert!(
            help.contains("JSON"),
            "{command} --help documents its JSON:\n{help}"
        );
    }
    let help = offline(&["diagram", "--help"]);
    assert!(
        help.contains("--format <FORMAT>") && help.contains("dot"),
        "{help}"
    );
}

#[test]
fn the_library_registry_holds_what_was_registered() {
    let cli = Cli::new()
        .aggregate_in::<Order>("sales")
        .aggregate_in::<Order>("sales");
    let registry = cli.registry();
    assert_eq!(
        registry.aggregates().len(),
        1,
        "registering twice is a no-op"
    );
    let order = &registry.aggregates()[0];
    assert_eq!(order.aggregate_type(), "Order");
    assert_eq!(order.context(), Some("sales"));
    assert_eq!(order.state_machine(), Some(&Order::state_machine()));
    assert_eq!(order.events().aggregate_type(), Some("Order"));
    assert_eq!(order.events().catalog()[0].name, "Submitted");
}

/// `history` of a registered aggregate reads the context it is registered in, where the stock
/// binary would need `--context` with two contexts on the server.
#[tokio::test(flavor = "multi_thread")]
async fn history_defaults_to_the_registered_context() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let url = server.url();
    let orders: Repository<Order, _> = Repository::new(
        JetStreamEventStore::connect(&url, StoreConfig::new("sales"))
            .await
            .unwrap(),
    );
    orders
        .execute(
            "o-1",
            OrderCommand::Submit {
                items: vec![Item {
                    sku: "BOOK-42".into(),
                    quantity: 1,
                }],
                channel: Channel::Web,
            },
            CommandMetadata::root(),
        )
        .await
        .unwrap();
    let accounts: Repository<BankAccount, _> = Repository::new(
        JetStreamEventStore::connect(&url, StoreConfig::new("bank"))
            .await
            .unwrap(),
    );
    accounts
        .execute(
            "a-1",
            AccountCommand::Open {
                owner: "Alice".into(),
                overdraft_limit: 0,
            },
            CommandMetadata::root(),
        )
        .await
        .unwrap();

    let json = |args: &[&str]| -> Value {
        let output = cli(&[&["--server", url.as_str(), "--json"][..], args].concat());
        serde_json::from_str(&stdout(&output)).expect("JSON")
    };
    let order = json(&["history", "Order", "o-1"]);
    assert_eq!(order["context"], "sales");
    assert_eq!(order["events"][0]["event_type"], "Submitted");
    assert_eq!(order["events"][0]["schema_version"], 3);
    let account = json(&["history", "BankAccount", "a-1"]);
    assert_eq!(account["context"], "bank");
    assert_eq!(account["events"][0]["event_type"], "Opened");

    // An unregistered aggregate type still needs `--context` with two contexts.
    let output = cli(&["--server", url.as_str(), "history", "Invoice", "i-1"]);
    assert_eq!(output.status.code(), Some(1));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains("several contexts exist (bank, sales)"),
        "{message}"
    );
}

/// `catalog --json-schema` prints the schema of every event type and version of the registered
/// enums, as the library derives them, whatever the output mode.
#[test]
fn catalog_prints_the_json_schemas_of_registered_events() {
    use cqrs_core::schema::EventJsonSchemas;
    let doc: Value = serde_json::from_str(&offline(&["catalog", "--json-schema"])).unwrap();
    assert_eq!(doc["without_schemas"], serde_json::json!([]));
    let printed = doc["schemas"].as_array().unwrap();
    let expected = [
        examples::bank_account::AccountEvent::json_schemas(),
        examples::bank_account::UsernameEvent::json_schemas(),
        examples::order_fulfilment::OrderEvent::json_schemas(),
        examples::task_tracker::TaskEvent::json_schemas(),
        examples::graph_editor::GraphEvent::json_schemas(),
    ]
    .concat();
    assert_eq!(printed.len(), expected.len());
    for schema in expected {
        let entry = printed
            .iter()
            .find(|e| e["event_type"] == schema.event_type && e["version"] == schema.version)
            .unwrap_or_else(|| panic!("{} v{} missing", schema.event_type, schema.version));
        assert_eq!(entry["schema"], schema.schema);
    }
    let sales: Value = serde_json::from_str(&offline(&[
        "--context",
        "sales",
        "catalog",
        "--json-schema",
    ]))
    .unwrap();
    let versions: Vec<(String, u64)> = sales["schemas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_owned(),
                e["version"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        versions.contains(&("Submitted".to_owned(), 1)),
        "{versions:?}"
    );
    assert!(
        versions.iter().all(|(t, _)| t != "Deposited"),
        "{versions:?}"
    );
}
