//! The order fulfilment flow: web side, saga, projection and the causal chain it prints, on
//! the in-memory store and over NATS against a spawned server.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[tokio::test]
async fn the_flow_ships_the_order_and_prints_its_causal_chain() {
    let mut out = String::new();
    examples::order_flow::demo(&mut out).await.unwrap();
    check_story(&out);
}

#[tokio::test]
async fn the_flow_runs_over_nats() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let mut out = String::new();
    Box::pin(examples::order_flow::demo_nats(&server.url(), &mut out))
        .await
        .unwrap();
    check_story(&out);
}

/// The story both runs tell: the same lines, the same causal chain.
fn check_story(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "web: submitted order-1 (v1)", "{out}");
    assert_eq!(lines[1], "web: payment validated (v2)", "{out}");
    assert_eq!(
        lines[2], "summary: order-1 Shipped items=2 tracking=TRACK-pay-7",
        "{out}"
    );
    assert!(
        lines[3]
            .starts_with("refused: Order: no transition for command `Cancel` in state `Shipped`"),
        "{out}"
    );
    // flow <correlation>, then one line per event: command (cause, actor) -> event id version.
    let flow = lines[4].strip_prefix("flow ").expect("a flow line");
    let chain: Vec<Vec<&str>> = lines[5..8]
        .iter()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 8, "{out}");
    // The root command's id is the flow's correlation id.
    assert_eq!(chain[0][1], flow, "{out}");
    assert_eq!(&chain[0][2..4], ["(root,", "user:ada)"], "{out}");
    assert_eq!(&chain[0][5..], ["Submitted", chain[0][6], "v1"], "{out}");
    // Each later command names the event that caused it.
    assert_eq!(
        &chain[1][2..6],
        ["(caused", "by", "Submitted", &format!("{},", chain[0][6])],
        "{out}"
    );
    assert_eq!(chain[1][8], "PaymentValidated", "{out}");
    assert_eq!(
        &chain[2][2..7],
        [
            "(caused",
            "by",
            "PaymentValidated",
            &format!("{},", chain[1][9]),
            "process:shipping)"
        ],
        "{out}"
    );
    assert_eq!(&chain[2][8..], ["Shipped", chain[2][9], "v3"], "{out}");
}
