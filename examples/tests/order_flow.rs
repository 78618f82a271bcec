//! The order fulfilment flow: web side, saga, projection and the causal chain it prints, on
//! the in-memory store and over NATS against a spawned server; in memory also the payment
//! deadline, and its process manager under the given-when-then fixture.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[tokio::test]
async fn the_flow_ships_the_order_and_prints_its_causal_chain() {
    let mut out = String::new();
    examples::order_flow::demo(&mut out).await.unwrap();
    let (story, deadline) = out.split_at(out.find("deadline:").expect("the deadline part"));
    check_story(story);
    // The paid order's deadline was cancelled; the unpaid one's cancels it once due.
    assert_eq!(
        deadline.lines().collect::<Vec<_>>(),
        [
            "deadline: order-2 must be paid by submission + 30 min (1 pending)",
            "deadline: after 29 min 0 sent, after 30 min 1 sent: order-2 Cancelled"
        ]
    );
}

#[tokio::test]
async fn the_flow_runs_over_nats() {
    let server = cqrs_test_server::NatsServer::start().await.unwrap();
    let mut out = String::new();
    Box::pin(examples::order_flow::demo_nats(&server.url(), &mut out))
        .await
        .unwrap();
    let (story, deadline) = out.split_at(out.find("deadline:").expect("the deadline part"));
    check_story(story);
    assert_eq!(
        deadline.trim_end(),
        "deadline: order-2 not paid within its window: Cancelled (scheduled on the server)"
    );
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

/// The payment deadline under the fixture: submitted, it schedules the cancellation 30 minutes
/// on; paid, it cancels it; unpaid, the cancellation is due after 30 minutes and not before.
#[test]
fn the_payment_deadline_is_scheduled_cancelled_and_due() {
    use cqrs_core::deadline::Timed;
    use cqrs_core::testing::{EventLog, when_processed};
    use cqrs_core::{CommandMetadata, StreamId, Targeted};
    use examples::order_flow::{PAYMENT_WINDOW, PaymentDeadline};
    use examples::order_fulfilment::{Channel, Item, OrderCommand, OrderEvent};
    use std::time::Duration;

    let order = StreamId::new("Order", "o-1");
    let submitted = OrderEvent::Submitted {
        items: vec![Item {
            sku: "BOOK-42".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    };
    let cancel = Targeted::new(
        "o-1",
        OrderCommand::Cancel {
            reason: "not paid within 1800 s".into(),
        },
    );
    let flow = CommandMetadata::root();
    let unpaid = EventLog::new()
        .in_flow(flow.clone())
        .append(&order, [submitted]);
    let issued = when_processed(&PaymentDeadline::default(), unpaid.events())
        .then_scheduled("payment", cancel.clone())
        .then_after(PAYMENT_WINDOW.saturating_sub(Duration::from_secs(1)), [])
        .then_after(PAYMENT_WINDOW, [cancel.clone()]);
    let Timed::At { at, .. } = &issued.commands()[0].0 else {
        panic!("a deadline first: {:?}", issued.commands());
    };
    assert_eq!(*at, unpaid.events()[0].recorded_at + PAYMENT_WINDOW);

    let paid = unpaid.in_flow(flow).append(
        &order,
        [OrderEvent::Paid {
            payment_id: "p-1".into(),
        }],
    );
    when_processed(&PaymentDeadline::default(), paid.events())
        .then_not_scheduled("payment")
        .then_after(PAYMENT_WINDOW * 2, []);
}
