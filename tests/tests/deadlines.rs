//! Deadlines on JetStream, held by the server's message scheduling: a deadline fires once at
//! its time though the worker of the process that scheduled it died before; a cancelled one
//! never fires; a rescheduled one fires once, at its new time.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use cqrs_core::deadline::{Deadline, DeadlineKey, Deadlines};
use cqrs_core::{CommandMetadata, EventStore, Repository, StreamId, Targeted};
use cqrs_nats::deadlines::JetStreamDeadlines;
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::{Instant, sleep_until};

fn cancel(id: &str) -> Targeted<Order> {
    Targeted::new(
        id,
        OrderCommand::Cancel {
            reason: "not paid in time".into(),
        },
    )
}

/// A deadline for order `id`, in the flow of `metadata`, at `at`.
fn deadline(id: &str, metadata: &CommandMetadata, at: OffsetDateTime) -> Deadline<Targeted<Order>> {
    Deadline {
        key: DeadlineKey::new(metadata.correlation_id, "payment"),
        at,
        command: cancel(id),
        metadata: metadata.clone(),
    }
}

async fn version<S: EventStore>(store: &S, id: &str) -> u64 {
    store
        .stream_position(&StreamId::new("Order", id))
        .await
        .expect("position")
        .version
}

#[tokio::test]
async fn deadlines_fire_once_at_their_time_unless_cancelled_and_move_when_rescheduled() {
    let fixture = cqrs_tests::jetstream()
        .await
        .expect("start nats-server and connect");
    let store = fixture.store.clone();
    let orders = Repository::<Order, _>::new(store.clone());
    let ids = ["o-fire", "o-cancel", "o-move"];
    for id in ids {
        let submit = OrderCommand::Submit {
            items: vec![Item {
                sku: "PEN-1".into(),
                quantity: 1,
            }],
            channel: Channel::Web,
        };
        orders
            .execute(id, submit, CommandMetadata::root())
            .await
            .expect("submit");
    }

    // Another process schedules the deadlines and runs a worker, then dies before any is due.
    let scheduler = JetStreamEventStore::connect(fixture.server.url(), StoreConfig::new("test"))
        .await
        .expect("connect");
    let elsewhere = JetStreamDeadlines::<Targeted<Order>>::open(&scheduler)
        .await
        .expect("deadlines");
    let doomed = elsewhere
        .spawn_worker(Repository::<Order, _>::new(scheduler.clone()))
        .await
        .expect("worker");
    let start = Instant::now();
    let now = OffsetDateTime::now_utc();
    let seconds = |s: u64| now + Duration::from_secs(s);
    let flows: Vec<CommandMetadata> = ids.iter().map(|_| CommandMetadata::root()).collect();
    elsewhere
        .schedule(deadline("o-fire", &flows[0], seconds(2)))
        .await
        .expect("schedule o-fire");
    elsewhere
        .schedule(deadline("o-cancel", &flows[1], seconds(1)))
        .await
        .expect("schedule o-cancel");
    elsewhere
        .cancel(&DeadlineKey::new(flows[1].correlation_id, "payment"))
        .await
        .expect("cancel o-cancel");
    elsewhere
        .schedule(deadline("o-move", &flows[2], seconds(1)))
        .await
        .expect("schedule o-move");
    elsewhere
        .schedule(deadline("o-move", &flows[2], seconds(4)))
        .await
        .expect("reschedule o-move");
    drop(doomed);
    drop(elsewhere);
    drop(scheduler);

    // This process's worker sends what falls due.
    let deadlines = JetStreamDeadlines::<Targeted<Order>>::open(&store)
        .await
        .expect("deadlines");
    let worker = deadlines
        .spawn_worker(orders.clone())
        .await
        .expect("worker");
    sleep_until(start + Duration::from_millis(1500)).await;
    for id in ids {
        assert_eq!(version(&store, id).await, 1, "{id}: nothing is due yet");
    }
    sleep_until(start + Duration::from_secs(3)).await;
    assert_eq!(
        version(&store, "o-move").await,
        1,
        "o-move was rescheduled from 1 s to 4 s"
    );
    let deadline = start + Duration::from_secs(20);
    while (version(&store, "o-fire").await < 2 || version(&store, "o-move").await < 2)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Room for a second firing, had there been one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(version(&store, "o-fire").await, 2, "o-fire cancelled once");
    assert_eq!(version(&store, "o-move").await, 2, "o-move cancelled once");
    assert_eq!(
        version(&store, "o-cancel").await,
        1,
        "o-cancel's deadline was cancelled"
    );
    worker.stop().await;
}
