//! The `bank_account` example's walkthrough produces the expected story, on the in-memory store
//! and on JetStream against a spawned server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::InMemoryEventStore;
use cqrs_nats::{JetStreamEventStore, StoreConfig};

#[tokio::test]
async fn walkthrough_tells_the_expected_story() {
    let mut out = String::new();
    examples::bank_account::demo(InMemoryEventStore::new(), &mut out)
        .await
        .unwrap();
    check_story(&out);
}

#[tokio::test]
async fn walkthrough_runs_on_jetstream() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let store = JetStreamEventStore::connect(server.url(), StoreConfig::new("bank"))
        .await
        .unwrap();
    let mut out = String::new();
    examples::bank_account::demo(store, &mut out).await.unwrap();
    check_story(&out);
}

#[tokio::test]
async fn a_second_run_on_the_same_server_stops_and_says_why() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let store = examples::connect_fresh(&server.url(), "bank")
        .await
        .unwrap();
    let mut out = String::new();
    examples::bank_account::demo(store, &mut out).await.unwrap();
    let error = examples::connect_fresh(&server.url(), "bank")
        .await
        .expect_err("the context holds the first run's events");
    let used = error
        .downcast_ref::<examples::UsedContext>()
        .unwrap_or_else(|| panic!("expected UsedContext, got {error}"));
    assert_eq!(used.context, "bank");
    assert!(used.events > 0);
    assert!(error.to_string().contains("fresh server"), "{error}");
    // Another context on the same server is still fresh.
    examples::connect_fresh(&server.url(), "graphs")
        .await
        .unwrap();
}

/// The story both stores tell.
fn check_story(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        r#"v1 Opened { owner: "Alice", overdraft_limit: 5000 }"#
    );
    assert_eq!(lines[1], "v2 Deposited { amount: 12000 }");
    assert_eq!(lines[2], "v3 Withdrawn { amount: 15000 }");
    assert_eq!(lines[3], "balance: Some(-3000)");
    assert_eq!(
        lines[4],
        "rejected: insufficient funds: balance -3000, requested 3000, overdraft limit 5000"
    );
    assert_eq!(
        lines[5],
        "rejected: balance must be zero to close, it is -3000"
    );
    assert_eq!(
        lines[6],
        "transfer of 2500 from acc-2 to acc-1: positions [6, 7], balances Some(1500) and Some(-500)",
        "one atomic commit, contiguous positions"
    );
    assert_eq!(lines[7], "time travel to v2: balance Some(12000)");
    assert_eq!(lines[8], "event log:");
    assert_eq!(lines.len(), 17, "{out}");
    let positions = [1, 2, 3, 7];
    for (i, line) in lines[9..13].iter().enumerate() {
        assert!(
            line.starts_with(&format!("  #{} v{} ", positions[i], i + 1)),
            "{line}"
        );
        assert!(line.contains("tenant=acme actor=user:alice"), "{line}");
        assert!(!line.contains("causation=-"), "{line}");
    }
    assert_eq!(lines[13], "@alice claimed by acc-1");
    assert_eq!(
        lines[14],
        "@alice for acc-2: the username is taken by acc-1"
    );
    assert_eq!(
        lines[15],
        "paid 500 from acc-2 to @alice (acc-1): balances 1000 and 0"
    );
    assert_eq!(
        lines[16],
        "payment refused: Username alice moved since it was read at Exact(1); balances 1000 and 0",
        "the read guard on @alice refuses a payment decided before it was released"
    );
}
