//! The order fulfilment example: its state machine as data, its event versions, its rules.

use cqrs_core::testing::given;
use cqrs_core::{Aggregate, CommandMetadata, DomainEvent, InvalidTransition};
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand, OrderError, OrderEvent};

const MERMAID_SNAPSHOT: &str = "tests/snapshots/order_fulfilment.mmd";

fn book() -> Vec<Item> {
    vec![Item {
        sku: "BOOK-42".into(),
        quantity: 2,
    }]
}

fn submitted() -> OrderEvent {
    OrderEvent::Submitted {
        items: book(),
        channel: Channel::Phone,
    }
}

/// Regenerate with `UPDATE_SNAPSHOTS=1 cargo test -p examples --test order_fulfilment`.
#[test]
fn mermaid_diagram_matches_the_snapshot() {
    let actual = Order::state_machine().to_mermaid();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(MERMAID_SNAPSHOT);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "the Mermaid diagram of Order changed; check it and regenerate {MERMAID_SNAPSHOT} with UPDATE_SNAPSHOTS=1\n--- expected\n{expected}\n--- actual\n{actual}"
    );
}

#[test]
fn the_order_machine_is_well_formed() {
    let machine = Order::state_machine();
    assert_eq!(machine.initial, "Draft");
    assert_eq!(machine.commands, ["Submit", "Pay", "Ship", "Cancel"]);
    let terminal: Vec<_> = machine
        .states
        .iter()
        .filter(|s| s.terminal)
        .map(|s| s.name)
        .collect();
    assert_eq!(terminal, ["Shipped", "Cancelled"]);
    let analysis = machine.analyze();
    assert!(analysis.is_clean(), "{analysis}");
    assert!(
        machine
            .to_dot()
            .contains("\"Paid\" -> \"Shipped\" [label=\"Ship\"];")
    );
}

#[test]
fn a_v1_submitted_event_decodes_through_v2_into_the_current_variant() {
    let stored = br#"{"sku":"BOOK-42","quantity":2}"#;
    assert_eq!(
        OrderEvent::decode("Submitted", 1, stored).unwrap(),
        OrderEvent::Submitted {
            items: book(),
            channel: Channel::Web,
        }
    );
    let paid = OrderEvent::Paid {
        payment_id: "p".into(),
    };
    assert_eq!(paid.event_type(), "PaymentValidated");
    assert_eq!(submitted().schema_version(), 3);
}

#[test]
fn the_happy_path_and_its_declared_targets() {
    given::<Order>([])
        .when(OrderCommand::Submit {
            items: book(),
            channel: Channel::Phone,
        })
        .then_events([submitted()])
        .then_state(Order::Submitted { items: book() });
    given::<Order>([submitted()])
        .when(OrderCommand::Pay {
            payment_id: "pay-7".into(),
        })
        .then_state(Order::Paid {
            items: book(),
            payment_id: "pay-7".into(),
        });
    given::<Order>([submitted()])
        .when(OrderCommand::Submit {
            items: vec![],
            channel: Channel::Web,
        })
        .then_error(OrderError::InvalidTransition(InvalidTransition {
            aggregate: "Order",
            state: "Submitted",
            command: "Submit",
        }));
    given::<Order>([])
        .when(OrderCommand::Submit {
            items: vec![],
            channel: Channel::Web,
        })
        .then_error(OrderError::NoItems);
}

#[tokio::test]
async fn shipping_then_cancelling_is_refused_through_the_repository() {
    let shipped = given::<Order>([
        submitted(),
        OrderEvent::Paid {
            payment_id: "p".into(),
        },
    ])
    .when_async(
        OrderCommand::Ship {
            tracking: "T-1".into(),
        },
        CommandMetadata::root(),
    )
    .await
    .then_state(Order::Shipped {
        tracking: "T-1".into(),
    });
    assert_eq!(shipped.envelopes()[0].version, 3);

    let refused = Order::Shipped {
        tracking: "T-1".into(),
    }
    .decide(OrderCommand::Cancel {
        reason: "late".into(),
    });
    assert_eq!(
        refused,
        Err(OrderError::InvalidTransition(InvalidTransition {
            aggregate: "Order",
            state: "Shipped",
            command: "Cancel",
        }))
    );
}

#[tokio::test]
async fn the_repository_refuses_an_undeclared_transition_before_deciding() {
    let orders = cqrs_core::Repository::<Order, _>::new(cqrs_core::InMemoryEventStore::new());
    let err = orders
        .execute(
            "o-1",
            OrderCommand::Ship {
                tracking: "T-1".into(),
            },
            CommandMetadata::root(),
        )
        .await
        .unwrap_err();
    match err {
        cqrs_core::CommandError::InvalidTransition(invalid) => assert_eq!(
            invalid,
            InvalidTransition {
                aggregate: "Order",
                state: "Draft",
                command: "Ship",
            }
        ),
        other => panic!("expected an invalid transition, got {other}"),
    }
    // Nothing was stored.
    let order = orders
        .load(&cqrs_core::StreamId::new("Order", "o-1"))
        .await
        .unwrap();
    assert_eq!(order.version(), 0);
}

/// Through the repository, on a stored order: a command the state has no transition for is an
/// invalid transition (nothing stored); a cancellation that races the payment is decided again
/// on the paid order; a payment retried after the order moved on answers with its original.
#[tokio::test]
async fn repository_scenarios_on_a_stored_order() {
    use cqrs_core::testing::given_stored;
    let ship = OrderCommand::Ship {
        tracking: "T-1".into(),
    };
    given_stored::<Order>("o-1")
        .in_tenant("shop")
        .events([submitted()], CommandMetadata::root())
        .when(ship, CommandMetadata::root())
        .await
        .then_invalid_transition()
        .then_stored([submitted()]);

    let pay = || OrderCommand::Pay {
        payment_id: "p-1".into(),
    };
    let paid = OrderEvent::Paid {
        payment_id: "p-1".into(),
    };
    let cancelled = OrderEvent::Cancelled {
        reason: "changed my mind".into(),
    };
    given_stored::<Order>("o-1")
        .events([submitted()], CommandMetadata::root())
        .racing(pay(), CommandMetadata::root())
        .with_conflict_retries(1)
        .when(
            OrderCommand::Cancel {
                reason: "changed my mind".into(),
            },
            CommandMetadata::root(),
        )
        .await
        .then_events([cancelled.clone()])
        .then_stored([submitted(), paid.clone(), cancelled]);

    let payment = CommandMetadata::root().with_actor("user:ada");
    given_stored::<Order>("o-1")
        .events([submitted()], CommandMetadata::root())
        .command(pay(), payment.clone())
        .command(
            OrderCommand::Ship {
                tracking: "T-1".into(),
            },
            CommandMetadata::root(),
        )
        .when(pay(), payment)
        .await
        .then_events([paid]);
}
