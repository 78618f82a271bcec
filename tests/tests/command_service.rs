//! The command service over NATS request/reply, against a spawned nats-server.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use cqrs_core::{CommandMetadata, EventStore, Repository, StreamId};
use cqrs_nats::async_nats::{self, HeaderMap};
use cqrs_nats::command::{
    CommandClient, CommandFailure, CommandReply, CommandService, FailureKind, command_subject,
    header, request_headers,
};
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use cqrs_test_server::NatsServer;
use examples::order_fulfilment::{Channel, Item, Order, OrderCommand};
use futures::TryStreamExt;
use std::time::Duration;

struct Fixture {
    _server: NatsServer,
    client: async_nats::Client,
    store: JetStreamEventStore,
    commands: CommandClient,
}

async fn fixture() -> Fixture {
    let server = NatsServer::start().await.unwrap();
    let store = JetStreamEventStore::connect(server.url(), StoreConfig::new("sales"))
        .await
        .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let commands = CommandClient::new(client.clone(), "sales").with_timeout(Duration::from_secs(5));
    Fixture {
        _server: server,
        client,
        store,
        commands,
    }
}

async fn serve(f: &Fixture) -> cqrs_nats::command::ServiceHandle {
    let repository = Repository::<Order, _>::new(f.store.clone()).with_cache(100);
    CommandService::new(f.store.client().clone(), "sales", repository)
        .spawn()
        .await
        .unwrap()
}

fn submit() -> OrderCommand {
    OrderCommand::Submit {
        items: vec![Item {
            sku: "BOOK-1".into(),
            quantity: 1,
        }],
        channel: Channel::Web,
    }
}

#[tokio::test]
async fn commands_round_trip_with_their_metadata() {
    let f = fixture().await;
    let _service = serve(&f).await;
    let root = CommandMetadata::root()
        .with_tenant("acme")
        .with_actor("user:7")
        .with_extra("ip", "127.0.0.1");
    let receipt = f
        .commands
        .send::<Order>("o-1", &submit(), &root)
        .await
        .unwrap();
    assert_eq!(
        (receipt.version, receipt.aggregate_id.as_str()),
        (Some(1), "o-1")
    );

    let pay = CommandMetadata::root()
        .with_tenant("acme")
        .with_expected_version(1);
    let paid = f
        .commands
        .send::<Order>(
            "o-1",
            &OrderCommand::Pay {
                payment_id: "pay-1".into(),
            },
            &pay,
        )
        .await
        .unwrap();
    assert_eq!(paid.version, Some(2));

    let stream = StreamId::new("Order", "o-1").with_tenant("acme");
    let events: Vec<_> = f
        .store
        .load(&stream, 1)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].event_id, receipt.event_ids[0]);
    assert_eq!(events[0].metadata.causation_id, Some(root.command_id));
    assert_eq!(events[0].metadata.correlation_id, root.correlation_id);
    assert_eq!(events[0].metadata.actor.as_deref(), Some("user:7"));
    assert_eq!(
        events[0].metadata.extra.get("ip").map(String::as_str),
        Some("127.0.0.1")
    );
    assert_eq!(events[1].metadata.command_id, Some(pay.command_id));
}

#[tokio::test]
async fn failures_are_typed() {
    let f = fixture().await;
    let _service = serve(&f).await;
    let kind = |result: Result<_, CommandFailure>| result.unwrap_err().kind();

    let empty = OrderCommand::Submit {
        items: vec![],
        channel: Channel::Web,
    };
    let rejected = f
        .commands
        .send::<Order>("o-1", &empty, &CommandMetadata::root())
        .await;
    assert_eq!(kind(rejected), Some(FailureKind::Rejected));

    let ship = OrderCommand::Ship {
        tracking: "T".into(),
    };
    let invalid = f
        .commands
        .send::<Order>("o-1", &ship, &CommandMetadata::root())
        .await;
    let invalid = invalid.unwrap_err();
    assert_eq!(invalid.kind(), Some(FailureKind::InvalidTransition));
    assert!(
        invalid.to_string().contains("`Ship` in state `Draft`"),
        "{invalid}"
    );

    f.commands
        .send::<Order>("o-1", &submit(), &CommandMetadata::root())
        .await
        .unwrap();
    let stale = CommandMetadata::root().with_expected_version(0);
    let conflict = f
        .commands
        .send::<Order>(
            "o-1",
            &OrderCommand::Pay {
                payment_id: "p".into(),
            },
            &stale,
        )
        .await;
    assert_eq!(kind(conflict), Some(FailureKind::Conflict));
    // `Cqrs-Expected-Version` is checked before deciding: a submitted order refuses `Submit`,
    // but a command based on version 0 is told it is stale.
    let stale_refused = f
        .commands
        .send::<Order>(
            "o-1",
            &submit(),
            &CommandMetadata::root().with_expected_version(0),
        )
        .await;
    assert_eq!(kind(stale_refused), Some(FailureKind::Conflict));
}

#[tokio::test]
async fn a_retried_command_returns_the_original_receipt() {
    let f = fixture().await;
    let _service = serve(&f).await;
    let metadata = CommandMetadata::root();
    let first = f
        .commands
        .send::<Order>("o-1", &submit(), &metadata)
        .await
        .unwrap();
    let again = f
        .commands
        .send::<Order>("o-1", &submit(), &metadata)
        .await
        .unwrap();
    assert_eq!(first, again);
    let position = f
        .store
        .stream_position(&StreamId::new("Order", "o-1"))
        .await
        .unwrap();
    assert_eq!(position.version, 1);
}

async fn raw_request(f: &Fixture, headers: HeaderMap, body: &[u8]) -> CommandReply {
    let reply = f
        .client
        .request_with_headers(
            command_subject("sales", "Order"),
            headers,
            body.to_vec().into(),
        )
        .await
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn bad_request(reply: &CommandReply) -> &str {
    match reply {
        CommandReply::Failed {
            kind: FailureKind::BadRequest,
            message,
        } => message,
        other => panic!("expected a bad-request reply, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_requests_get_error_replies_and_the_service_keeps_serving() {
    let f = fixture().await;
    let _service = serve(&f).await;
    let valid_body = serde_json::to_vec(&submit()).unwrap();
    let valid_headers = || request_headers("o-1", &CommandMetadata::root());

    let reply = raw_request(&f, HeaderMap::new(), &valid_body).await;
    assert!(bad_request(&reply).contains(header::AGGREGATE_ID));

    for garbage in [
        &b"{not json"[..],
        b"",
        b"\xff\xfe",
        br#"{"Teleport":{}}"#,
        b"[]",
    ] {
        let reply = raw_request(&f, valid_headers(), garbage).await;
        assert!(
            bad_request(&reply).contains("not a valid command"),
            "{reply:?}"
        );
    }

    let mut headers = valid_headers();
    headers.insert(header::COMMAND_ID, "not-a-uuid");
    assert!(bad_request(&raw_request(&f, headers, &valid_body).await).contains(header::COMMAND_ID));

    let mut headers = valid_headers();
    headers.insert(header::EXPECTED_VERSION, "-1");
    assert!(
        bad_request(&raw_request(&f, headers, &valid_body).await)
            .contains(header::EXPECTED_VERSION)
    );

    // A message that is not a request gets no reply and does no harm.
    f.client
        .publish(command_subject("sales", "Order"), valid_body.clone().into())
        .await
        .unwrap();

    // Still serving.
    let receipt = f
        .commands
        .send::<Order>("o-1", &submit(), &CommandMetadata::root())
        .await
        .unwrap();
    assert_eq!(receipt.version, Some(1));
}

#[tokio::test]
async fn several_services_share_the_commands_in_a_queue_group() {
    let f = fixture().await;
    let first = serve(&f).await;
    let _second = serve(&f).await;
    let sends = (0..20).map(|i| {
        let commands = f.commands.clone();
        async move {
            commands
                .send::<Order>(&format!("o-{i}"), &submit(), &CommandMetadata::root())
                .await
        }
    });
    for receipt in futures::future::join_all(sends).await {
        assert_eq!(receipt.unwrap().version, Some(1));
    }
    // With one worker gone, the other serves alone.
    first.stop().await;
    f.commands
        .send::<Order>("o-99", &submit(), &CommandMetadata::root())
        .await
        .unwrap();
}

#[tokio::test]
async fn no_service_is_a_typed_error() {
    let f = fixture().await;
    let err = f
        .commands
        .send::<Order>("o-1", &submit(), &CommandMetadata::root())
        .await
        .unwrap_err();
    assert!(matches!(err, CommandFailure::NoService { .. }), "{err}");
}

/// An aggregate whose handler panics on demand.
#[derive(Debug, Clone, Default)]
struct Fragile;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum FragileCommand {
    Panic,
    Fine,
}

impl cqrs_core::Aggregate for Fragile {
    const TYPE: &'static str = "Fragile";
    type Command = FragileCommand;
    type Event = cqrs_core::doc::CounterEvent;
    type Error = cqrs_core::doc::CounterError;

    fn decide(
        &self,
        command: FragileCommand,
    ) -> Result<Vec<cqrs_core::doc::CounterEvent>, cqrs_core::doc::CounterError> {
        match command {
            FragileCommand::Panic => panic!("boom"),
            FragileCommand::Fine => Ok(vec![cqrs_core::doc::CounterEvent::Added { amount: 1 }]),
        }
    }

    fn evolve(self, _: &cqrs_core::doc::CounterEvent) -> Self {
        self
    }
}

#[tokio::test]
async fn a_panicking_handler_becomes_an_error_reply() {
    let f = fixture().await;
    let repository = Repository::<Fragile, _>::new(f.store.clone());
    let _service = CommandService::new(f.client.clone(), "sales", repository)
        .spawn()
        .await
        .unwrap();
    let err = f
        .commands
        .send::<Fragile>("f-1", &FragileCommand::Panic, &CommandMetadata::root())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(FailureKind::Internal), "{err}");
    assert!(err.to_string().contains("panicked"), "{err}");
    let receipt = f
        .commands
        .send::<Fragile>("f-1", &FragileCommand::Fine, &CommandMetadata::root())
        .await
        .unwrap();
    assert_eq!(receipt.version, Some(1));
}

/// The command service is a NATS micro service: a plain client's `$SRV.PING`, `$SRV.INFO` and
/// `$SRV.STATS` find it, list its endpoint, and count the commands sent, with the outcomes by
/// kind in the endpoint's data.
#[tokio::test]
async fn the_service_protocol_discovers_and_counts_the_command_service() {
    let f = fixture().await;
    let service = serve(&f).await;
    let ask = |subject: &'static str| {
        let client = f.client.clone();
        async move {
            let reply = client.request(subject, Vec::new().into()).await.unwrap();
            serde_json::from_slice::<serde_json::Value>(&reply.payload).unwrap()
        }
    };
    let ping = ask("$SRV.PING").await;
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["name"], "cqrs-sales");

    let info = ask("$SRV.INFO.cqrs-sales").await;
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    let endpoints = info["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1, "{info:#}");
    assert_eq!(endpoints[0]["name"], "Order");
    assert_eq!(endpoints[0]["subject"], command_subject("sales", "Order"));
    assert_eq!(endpoints[0]["queue_group"], "cqrs-sales-Order");

    for id in ["o-1", "o-2"] {
        f.commands
            .send::<Order>(id, &submit(), &CommandMetadata::root())
            .await
            .unwrap();
    }
    // The same order again: a rejection is still a request answered.
    let again = f
        .commands
        .send::<Order>("o-1", &submit(), &CommandMetadata::root())
        .await;
    assert!(again.is_err());

    let stats = ask("$SRV.STATS.cqrs-sales").await;
    assert_eq!(stats["type"], "io.nats.micro.v1.stats_response");
    let order = &stats["endpoints"][0];
    assert_eq!(order["name"], "Order");
    assert_eq!(order["num_requests"], 3, "{stats:#}");
    assert_eq!(order["num_errors"], 0, "{stats:#}");
    assert!(order["processing_time"].as_u64().unwrap() > 0, "{stats:#}");
    let outcomes = &order["data"]["outcomes"];
    assert_eq!(outcomes["committed"], 2, "{stats:#}");
    assert_eq!(
        outcomes
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>(),
        3
    );

    // Stopped, it is gone from discovery.
    service.stop().await;
    let client = f.client.clone();
    let gone = tokio::time::timeout(
        Duration::from_millis(500),
        client.request("$SRV.PING.cqrs-sales", Vec::new().into()),
    )
    .await;
    assert!(
        !matches!(gone, Ok(Ok(_))),
        "still answering after stop: {gone:?}"
    );
}
