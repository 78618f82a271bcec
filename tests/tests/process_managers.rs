//! The shipped dispatchers of process managers' commands ([`Targeted`]): a repository in
//! process, the command client over NATS. Both deliver a command to the aggregate it names (in
//! the flow's tenant or the one it names), count a refusal — a rejection or a command the
//! state has no transition for — as delivered, and return what can succeed later as an error,
//! so the runner retries the event.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use cqrs_core::testing::{EventLog, when_processed};
use cqrs_core::{
    CommandDispatcher, CommandMetadata, EventStore, InMemoryEventStore, Repository, StreamId,
    Targeted,
};
use cqrs_nats::command::{CommandClient, CommandService};
use examples::order_flow::Shipping;
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand, OrderEvent};
use std::time::Duration;

fn submit() -> OrderCommand {
    OrderCommand::Submit {
        items: vec![Item {
            sku: "BOOK-42".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    }
}

fn ship() -> Targeted<Order> {
    Targeted::new(
        "o-1",
        OrderCommand::Ship {
            tracking: "T-1".into(),
        },
    )
}

/// The flow's metadata as a process manager's reaction carries it: tenant `acme`.
fn reaction(index: u32) -> CommandMetadata {
    let mut event = cqrs_core::Metadata::standalone();
    event.tenant = Some("acme".into());
    CommandMetadata::reaction("shipping", &event, uuid::Uuid::now_v7(), index)
}

/// Through `dispatcher`, to order `o-1` of tenant `acme` (submitted here): `Ship` before the
/// payment is refused, and counts as delivered with nothing written; after the payment it ships,
/// once though dispatched twice.
async fn refused_then_shipped_once<D, S>(dispatcher: &D, orders: &Repository<Order, S>)
where
    D: CommandDispatcher<Targeted<Order>>,
    S: EventStore + Clone,
{
    let acme = || CommandMetadata::root().with_tenant("acme");
    let stream = StreamId::of::<Order>("o-1", Some("acme"));
    orders
        .execute("o-1", submit(), acme())
        .await
        .expect("submit");
    dispatcher
        .dispatch(ship(), reaction(0))
        .await
        .expect("a refusal is delivered");
    assert_eq!(version(orders.store(), &stream).await, 1);
    let pay = OrderCommand::Pay {
        payment_id: "p-1".into(),
    };
    orders.execute("o-1", pay, acme()).await.expect("pay");
    let metadata = reaction(1);
    dispatcher
        .dispatch(ship(), metadata.clone())
        .await
        .expect("ship");
    dispatcher.dispatch(ship(), metadata).await.expect("again");
    assert_eq!(version(orders.store(), &stream).await, 3);
}

async fn version<S: EventStore>(store: &S, stream: &StreamId) -> u64 {
    store
        .stream_position(stream)
        .await
        .expect("position")
        .version
}

#[tokio::test]
async fn a_repository_delivers_targeted_commands_and_counts_refusals_as_delivered() {
    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone());
    refused_then_shipped_once(&orders, &orders).await;

    // A target in another tenant than the flow's.
    let other = StreamId::of::<Order>("o-1", Some("other"));
    orders
        .dispatch(
            Targeted::new("o-1", submit()).in_tenant("other"),
            reaction(2),
        )
        .await
        .expect("submit in another tenant");
    assert_eq!(version(&store, &other).await, 1);
}

#[tokio::test]
async fn the_command_client_delivers_targeted_commands_through_the_service() {
    let fixture = cqrs_tests::jetstream()
        .await
        .expect("start nats-server and connect");
    let store = fixture.store.clone();
    let orders = Repository::<Order, _>::new(store.clone());
    let client =
        CommandClient::new(store.client().clone(), "test").with_timeout(Duration::from_millis(500));

    // No service yet: an error, so the runner retries the event later.
    client
        .dispatch(ship(), reaction(0))
        .await
        .expect_err("no command service: not delivered");

    let service = CommandService::new(store.client().clone(), "test", orders.clone())
        .spawn()
        .await
        .expect("command service");
    refused_then_shipped_once(&client, &orders).await;
    service.stop().await;
}

/// The shipping saga of the `order_flow` example issues a command targeted at the paid order.
#[test]
fn the_shipping_saga_targets_the_paid_order() {
    let log = EventLog::new().append(
        &StreamId::new("Order", "o-9"),
        [OrderEvent::Paid {
            payment_id: "p-9".into(),
        }],
    );
    when_processed(&Shipping, log.events()).then_commands([Targeted::new(
        "o-9",
        OrderCommand::Ship {
            tracking: "TRACK-p-9".into(),
        },
    )]);
}
