//! The JetStream store on a 3-node cluster with R3 streams, where concurrent writers are
//! rejected with code 10164 rather than 10071 and dedup runs before the expectation check.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use cqrs_core::{
    EventStore, ExpectedVersion, IdempotencyKey, Metadata, NewEvent, StoreError, StreamId,
};
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use cqrs_tests::event;
use futures::TryStreamExt;
use std::time::{Duration, Instant};

async fn cluster_store() -> (Vec<cqrs_test_server::NatsServer>, JetStreamEventStore) {
    let servers = cqrs_test_server::start_cluster(3).await.expect("cluster");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Until the JetStream meta leader is elected, provisioning fails: retry.
        match JetStreamEventStore::connect(servers[0].url(), StoreConfig::new("test").replicas(3))
            .await
        {
            Ok(store) => return (servers, store),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cluster never became ready: {e}"),
        }
    }
}

async fn race(
    store: &JetStreamEventStore,
    stream: &StreamId,
    expected: ExpectedVersion,
    writers: usize,
    per_writer: usize,
) -> Vec<Result<cqrs_core::Committed, StoreError>> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(writers));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stream, barrier) = (store.clone(), stream.clone(), barrier.clone());
            tokio::spawn(async move {
                let events = (0..per_writer)
                    .map(|i| event("Raced", (w * 100 + i) as u64))
                    .collect();
                barrier.wait().await;
                store.append(&stream, expected, events, None).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn r3_cluster_fences_racing_writers_and_answers_retries() {
    let (_servers, store) = cluster_store().await;
    for (round, per_writer) in [(0u64, 1usize), (1, 3)] {
        let stream = StreamId::new("Account", format!("acc-{round}"));
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![event("Opened", 0)],
                None,
            )
            .await
            .expect("create");
        for attempt in 0..3u64 {
            let expected = 1 + attempt * per_writer as u64;
            let outcomes = race(
                &store,
                &stream,
                ExpectedVersion::Exact(expected),
                12,
                per_writer,
            )
            .await;
            let winners = outcomes.iter().filter(|o| o.is_ok()).count();
            assert_eq!(winners, 1, "exactly one writer wins: {outcomes:?}");
            for outcome in &outcomes {
                if let Err(e) = outcome {
                    assert!(e.is_conflict(), "losers get Conflict, got {e}");
                }
            }
        }
        let loaded: Vec<_> = store
            .load(&stream, 1)
            .await
            .expect("load")
            .try_collect()
            .await
            .expect("read");
        let versions: Vec<u64> = loaded.iter().map(|e| e.version).collect();
        assert_eq!(
            versions,
            (1..=1 + 3 * per_writer as u64).collect::<Vec<_>>()
        );
    }
    // Concurrent creates: one wins.
    let fresh = StreamId::new("Account", "fresh");
    let outcomes = race(&store, &fresh, ExpectedVersion::NoStream, 12, 1).await;
    assert_eq!(
        outcomes.iter().filter(|o| o.is_ok()).count(),
        1,
        "{outcomes:?}"
    );
    // A retried append with the same key is answered with the original (in a cluster the
    // server's dedup runs before the expectation check: a duplicate ack, or 10201 for a batch).
    let meta = Metadata::standalone();
    for count in [1, 3] {
        let key = IdempotencyKey::new(format!("cluster-retry-{count}"));
        let keyed = || -> Vec<NewEvent> {
            (0..count)
                .map(|i| NewEvent {
                    event_id: key.event_id(i),
                    metadata: meta.clone(),
                    ..event("Added", i as u64)
                })
                .collect()
        };
        let stream = StreamId::new("Account", format!("retried-{count}"));
        let first = store
            .append(&stream, ExpectedVersion::NoStream, keyed(), Some(&key))
            .await
            .expect("first");
        let again = store
            .append(&stream, ExpectedVersion::NoStream, keyed(), Some(&key))
            .await
            .expect("retry");
        assert!(again.duplicate);
        assert_eq!(again.events, first.events);
    }
}

/// Connects a store for context `test` (R3) to `url`, retrying while the cluster elects its
/// meta leader.
async fn store_on(url: String) -> JetStreamEventStore {
    store_with(url, StoreConfig::new("test").replicas(3)).await
}

/// A store with `config` on `url`, once the cluster is ready.
async fn store_with(url: String, config: StoreConfig) -> JetStreamEventStore {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match JetStreamEventStore::connect(url.clone(), config.clone()).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cluster never became ready: {e}"),
        }
    }
}

/// Runs `attempt` until it succeeds, while it fails with a retryable store error, for at most a
/// minute; a refusal or another error fails the test.
async fn until_done<T, E, F, Fut>(what: &str, mut attempt: F) -> T
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, cqrs_core::CommandError<E>>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(cqrs_core::CommandError::Store(e))
                if e.is_retryable() && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

/// A three-node cluster with the events stream provisioned by a store with `config`, and the
/// index of the stream's leader.
async fn cluster_and_leader(config: StoreConfig) -> (cqrs_test_server::ProxiedCluster, usize) {
    let cluster = cqrs_test_server::ProxiedCluster::builder(3)
        .start()
        .await
        .expect("cluster");
    let provisioned = store_with(cluster.server(0).url(), config).await;
    let info = provisioned
        .jetstream()
        .get_stream("EVENTS_TEST")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    let leader = (info.cluster.as_ref())
        .and_then(|c| c.leader.as_deref())
        .and_then(|name| cluster.index_of(name))
        .expect("the stream has a leader");
    (cluster, leader)
}

/// `Submit` of one book through the web channel.
fn submit_one() -> examples::order_fulfilment::OrderCommand {
    use examples::order_fulfilment::{Channel, Item, OrderCommand};
    OrderCommand::Submit {
        items: vec![Item {
            sku: "BOOK-42".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    }
}

/// Submits and pays order `id` through `orders`, waiting out elections; the `Paid` events.
async fn submit_and_pay<S: cqrs_core::EventStore>(
    orders: &cqrs_core::Repository<examples::order_fulfilment::Order, S>,
    id: &str,
) -> Vec<cqrs_core::EventEnvelope<examples::order_fulfilment::OrderEvent>> {
    use examples::order_fulfilment::OrderCommand;
    let pay = OrderCommand::Pay {
        payment_id: "pay-1".into(),
    };
    let mut paid = Vec::new();
    for command in [submit_one(), pay] {
        let metadata = cqrs_core::CommandMetadata::root();
        paid = until_done("writing on the majority side", || {
            orders.execute(id, command.clone(), metadata.clone())
        })
        .await;
    }
    paid
}

/// `command` (a `Ship` of order `o-1`, paid on the other side) sent through `on_leader` while
/// its server is cut off: a retryable error, never a refusal (`why` says who would refuse).
/// Then healed: it ships the order at version 3, and sending it again gets the same events.
async fn waits_then_ships_once<S: cqrs_core::EventStore>(
    cluster: &cqrs_test_server::ProxiedCluster,
    on_leader: &cqrs_core::Repository<examples::order_fulfilment::Order, S>,
    command: &examples::order_fulfilment::OrderCommand,
    metadata: &cqrs_core::CommandMetadata,
    why: &str,
) {
    let on_old_side = on_leader
        .execute("o-1", command.clone(), metadata.clone())
        .await;
    assert!(
        matches!(&on_old_side, Err(cqrs_core::CommandError::Store(e)) if e.is_retryable()),
        "the cut-off side answered {on_old_side:?}; {why}"
    );
    cluster.heal();
    let mut shipped = Vec::new();
    for attempt in ["after the heal", "sent again"] {
        shipped.push(
            until_done(attempt, || {
                on_leader.execute("o-1", command.clone(), metadata.clone())
            })
            .await,
        );
    }
    assert_eq!(shipped[0].len(), 1);
    assert_eq!(shipped[0][0].version, 3);
    assert_eq!(shipped[0], shipped[1]);
}

/// A leader cut off from the rest of its cluster keeps answering as leader, from its old state,
/// until it notices (7–18 s measured): to a client connected to it, an order the other side has
/// since submitted and paid has no events at all. The Shipping saga's `Ship`, issued for the
/// `Paid` event read on the other side, carries that event's position, so on the cut-off side it
/// waits (a retryable error) instead of being refused by `Draft` — a refusal a saga counts as
/// delivered, which would leave the paid order unshipped for good. Once the cut heals it ships,
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_connected_to_a_cut_off_leader_is_not_refused_by_its_old_state() {
    use cqrs_core::process::{ProcessManager, Targeted, reactions};
    use cqrs_core::{CommandMetadata, Repository};
    use examples::order_flow::Shipping;
    use examples::order_fulfilment::Order;

    let (cluster, leader) = cluster_and_leader(StoreConfig::new("test").replicas(3)).await;
    // The saga's connection goes straight to the stream's leader.
    let on_leader = Repository::<Order, _>::new(store_on(cluster.server(leader).url()).await);
    let elsewhere = store_on(cluster.server((leader + 1) % 3).url()).await;
    let orders_elsewhere = Repository::<Order, _>::new(elsewhere.clone());

    assert!(cluster.isolate(leader) > 0, "no route was cut");
    // The other two elect a leader; the order is submitted and paid there.
    let paid = submit_and_pay(&orders_elsewhere, "o-1").await;
    let paid = elsewhere
        .load(&StreamId::of::<Order>("o-1", None), paid[0].version)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .remove(0);
    let ((), commands) = Shipping.react((), &paid).unwrap();
    let [(ship, metadata)]: [(Targeted<Order>, CommandMetadata); 1] =
        reactions::<Shipping>(&paid, commands)
            .try_into()
            .expect("one Ship command");

    // Never refused on the cut-off side, whether the old leader still answers or has stopped;
    // after the heal, the saga's redeliveries ship it once.
    waits_then_ships_once(
        &cluster,
        &on_leader,
        &ship.command,
        &metadata,
        "it must wait for the paid order",
    )
    .await;
}

/// The same cut, for a root command: nothing tells it what its caller has seen, so only a
/// quorum can vouch for the state it would be refused by. With
/// `StoreConfig::linearizable_refusals` a client connected to the cut-off leader gets a
/// retryable error, never "no transition for `Ship` in `Draft`" for an order the other side
/// has paid (without it the refusal comes back while the old leader still answers); after the
/// heal the same command ships the order, once. A refusal that holds is still given — by the
/// quorum — and an order that really is a draft is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_a_cut_off_leader_is_refused_only_by_a_state_its_quorum_confirms() {
    use cqrs_core::{CommandMetadata, Repository, StreamPosition};
    use examples::order_fulfilment::{Order, OrderCommand};

    let linearizable = || {
        StoreConfig::new("test")
            .replicas(3)
            .linearizable_refusals(true)
    };
    let (cluster, leader) = cluster_and_leader(linearizable()).await;
    let on_leader =
        Repository::<Order, _>::new(store_with(cluster.server(leader).url(), linearizable()).await);
    let orders_elsewhere =
        Repository::<Order, _>::new(store_on(cluster.server((leader + 1) % 3).url()).await);
    let ship = OrderCommand::Ship {
        tracking: "TRACK-1".into(),
    };

    // Healthy: an order that is a draft is refused, the quorum confirming the draft.
    let draft = on_leader
        .execute("o-draft", ship.clone(), CommandMetadata::root())
        .await;
    assert!(
        matches!(&draft, Err(e) if e.is_refusal()),
        "a draft cannot ship: {draft:?}"
    );
    // The store's answer itself: the loaded version while it holds, a later one once moved.
    let submitted = orders_elsewhere
        .execute("o-2", submit_one(), CommandMetadata::root())
        .await
        .unwrap();
    let stream = StreamId::of::<Order>("o-2", None);
    let store = on_leader.store();
    let at_submit = submitted[0].stream_position();
    assert_eq!(store.current_version(&stream, at_submit).await.unwrap(), 1);
    let before = StreamPosition::default();
    assert_eq!(store.current_version(&stream, before).await.unwrap(), 1);

    assert!(cluster.isolate(leader) > 0, "no route was cut");
    submit_and_pay(&orders_elsewhere, "o-1").await;
    // A root command, with no seen position.
    waits_then_ships_once(
        &cluster,
        &on_leader,
        &ship,
        &CommandMetadata::root(),
        "only a quorum may refuse",
    )
    .await;
}
