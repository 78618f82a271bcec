//! Run with: `cargo run -p examples --example order_fulfilment`
//!
//! The order state machine declared with `#[derive(Aggregate)]` and `#[transitions]`: a few
//! commands through a `Repository` on the in-memory store (one of them refused as an invalid
//! transition), then the machine as data — its Mermaid diagram and its analysis.

use cqrs_core::{CommandError, CommandMetadata, InMemoryEventStore, Repository};
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let orders = Repository::<Order, _>::new(InMemoryEventStore::new());
    let id = "order-1";
    let steps = [
        OrderCommand::Submit {
            items: vec![Item {
                sku: "BOOK-42".into(),
                quantity: 2,
            }],
            channel: Channel::Web,
        },
        OrderCommand::Pay {
            payment_id: "pay-7".into(),
        },
        OrderCommand::Ship {
            tracking: "TRACK-1".into(),
        },
        // Shipped is terminal: no transition leaves it.
        OrderCommand::Cancel {
            reason: "changed my mind".into(),
        },
    ];
    for command in steps {
        match orders.execute(id, command, CommandMetadata::root()).await {
            Ok(committed) => {
                for event in committed {
                    println!("v{} {:?}", event.version, event.payload);
                }
            }
            Err(CommandError::Rejected(error)) => println!("refused: {error}"),
            Err(error) => return Err(error.into()),
        }
    }
    let loaded = orders
        .load(&Repository::<Order, InMemoryEventStore>::stream_id(
            id, None,
        ))
        .await?;
    println!("state at v{}: {:?}\n", loaded.version(), loaded.state);

    let machine = Order::state_machine();
    println!("{}", machine.to_mermaid());
    println!("analysis: {}", machine.analyze());
    Ok(())
}
