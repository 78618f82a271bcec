//! Crypto-shredding on both stores: personal fields are sealed on the way in, nothing of them is
//! in the stream's raw bytes, and after `forget` the subject's events read as the declared
//! replacements — aggregates load, projections rebuild — while other subjects' data is intact.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::personal::{
    KeyFuture, KeyStore, KeyStoreError, MemoryKeyStore, Opened, PersonalDataStore, SubjectKey,
};
use cqrs_core::projection::{RetryPolicy, catch_up};
use cqrs_core::{
    Aggregate, CommandError, CommandMetadata, DomainEvent, EventStore, HandlerError,
    InMemoryEventStore, Projection, RecordedEvent, Repository, StoreError, StreamId,
};
use cqrs_nats::async_nats::jetstream::consumer::{DeliverPolicy, pull};
use cqrs_nats::{JetStreamKeyStore, JetStreamProjectionRunner, ProjectionConfig};
use cqrs_tests::all_events;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, DomainEvent)]
#[event(json_schema)]
enum MemberEvent {
    Registered {
        member_id: String,
        #[personal(subject = member_id, replacement = "[erased]")]
        name: String,
        #[personal(subject = member_id)]
        email: Option<String>,
        plan: String,
    },
    Renamed {
        member_id: String,
        #[personal(subject = member_id, replacement = "[erased]")]
        name: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Member {
    name: String,
    email: Option<String>,
    plan: String,
}

/// Commands carry the member id: the subject of the personal fields is a field of the event.
#[derive(Debug, Clone)]
enum MemberCommand {
    Register {
        member_id: String,
        name: String,
        email: String,
        plan: String,
    },
    Rename {
        member_id: String,
        name: String,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("not registered")]
struct NotRegistered;

impl Aggregate for Member {
    const TYPE: &'static str = "Member";
    type Command = MemberCommand;
    type Event = MemberEvent;
    type Error = NotRegistered;

    fn decide(&self, command: MemberCommand) -> Result<Vec<MemberEvent>, NotRegistered> {
        Ok(vec![match command {
            MemberCommand::Register {
                member_id,
                name,
                email,
                plan,
            } => MemberEvent::Registered {
                member_id,
                name,
                email: Some(email),
                plan,
            },
            MemberCommand::Rename { member_id, name } if !self.plan.is_empty() => {
                MemberEvent::Renamed { member_id, name }
            }
            MemberCommand::Rename { .. } => return Err(NotRegistered),
        }])
    }

    fn evolve(self, event: &MemberEvent) -> Self {
        match event {
            MemberEvent::Registered {
                name, email, plan, ..
            } => Self {
                name: name.clone(),
                email: email.clone(),
                plan: plan.clone(),
            },
            MemberEvent::Renamed { name, .. } => Self {
                name: name.clone(),
                ..self
            },
        }
    }
}

/// Each member's names in order, with the fields each event read as erased.
type Seen = BTreeMap<String, Vec<(String, Vec<String>)>>;

#[derive(Debug, Default)]
struct Names {
    names: Mutex<Seen>,
}

impl Names {
    fn get(&self) -> Seen {
        self.names.lock().unwrap().clone()
    }
}

impl Projection for Names {
    fn name(&self) -> &'static str {
        "member-names"
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let decoded = event.decode::<MemberEvent>()?;
        let (MemberEvent::Registered {
            member_id, name, ..
        }
        | MemberEvent::Renamed { member_id, name }) = decoded.payload;
        self.names
            .lock()
            .unwrap()
            .entry(member_id)
            .or_default()
            .push((name, decoded.erased));
        Ok(())
    }
}

/// A key store that never answers.
struct Unreachable;

impl Unreachable {
    fn error(subject: &str) -> KeyStoreError {
        KeyStoreError::Unavailable {
            subject: subject.to_owned(),
            action: "reading",
            source: None,
        }
    }
}

impl KeyStore for Unreachable {
    fn key_for_writing<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        Box::pin(async move { Err(Self::error(subject)) })
    }
    fn key<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        Box::pin(async move { Err(Self::error(subject)) })
    }
    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, ()> {
        Box::pin(async move { Err(Self::error(subject)) })
    }
}

fn register(member_id: &str, name: &str, email: &str, plan: &str) -> MemberCommand {
    MemberCommand::Register {
        member_id: member_id.to_owned(),
        name: name.to_owned(),
        email: email.to_owned(),
        plan: plan.to_owned(),
    }
}

fn rename(member_id: &str, name: &str) -> MemberCommand {
    MemberCommand::Rename {
        member_id: member_id.to_owned(),
        name: name.to_owned(),
    }
}

fn member(id: &str) -> StreamId {
    StreamId::new("Member", id)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

const ALICE: [&str; 3] = ["Alice Liddell", "alice@example.com", "Alice Hargreaves"];
const BOB: [&str; 2] = ["Bob Dylan", "bob@example.com"];

async fn erased_of<S: EventStore>(store: &S, id: &str) -> Vec<Vec<String>> {
    store
        .load(&member(id), 1)
        .await
        .unwrap()
        .map(|event| event.unwrap().erased)
        .collect()
        .await
}

/// The whole story on one store. `raw_bytes` reads everything the backend stores for the
/// events (bodies and headers) without opening anything.
async fn personal_data_is_shredded<S: EventStore + Clone>(
    raw: S,
    keys: Arc<dyn KeyStore>,
    raw_bytes: impl AsyncFn() -> Vec<u8>,
) -> PersonalDataStore<S> {
    let store = PersonalDataStore::new(raw.clone(), keys);
    let members = Repository::<Member, _>::new(store.clone());
    let root = CommandMetadata::root;
    let alice = register("m-1", ALICE[0], ALICE[1], "gold");
    members.execute("m-1", alice, root()).await.unwrap();
    let bob = register("m-2", BOB[0], BOB[1], "silver");
    members.execute("m-2", bob, root()).await.unwrap();
    let renamed = rename("m-1", ALICE[2]);
    members.execute("m-1", renamed, root()).await.unwrap();

    let bytes = raw_bytes().await;
    assert!(
        contains(&bytes, "gold") && contains(&bytes, "m-1"),
        "the raw read sees the stream"
    );
    for secret in ALICE.iter().chain(&BOB) {
        assert!(
            !contains(&bytes, secret),
            "`{secret}` is stored in the clear"
        );
    }
    assert_eq!(
        members.load(&member("m-1")).await.unwrap().state.name,
        ALICE[2]
    );

    store.forget("m-1").await.unwrap();

    let bytes = raw_bytes().await;
    for secret in ALICE.iter().chain(&BOB) {
        assert!(
            !contains(&bytes, secret),
            "`{secret}` is stored in the clear"
        );
    }
    let alice = members.load(&member("m-1")).await.unwrap().state;
    assert_eq!(
        alice,
        Member {
            name: "[erased]".to_owned(),
            email: None,
            plan: "gold".to_owned(),
        }
    );
    let bob = members.load(&member("m-2")).await.unwrap().state;
    assert_eq!(
        (bob.name.as_str(), bob.email.as_deref()),
        (BOB[0], Some(BOB[1]))
    );
    assert_eq!(
        erased_of(&store, "m-1").await,
        [vec!["email", "name"], vec!["name"]]
    );
    assert_eq!(erased_of(&store, "m-2").await, [Vec::<String>::new()]);

    // A projection rebuilt from the first event shows the replacements.
    let names = Names::default();
    catch_up(&store, &names, 0, &RetryPolicy::default())
        .await
        .unwrap();
    assert_eq!(names.get(), rebuilt(false));

    // A forgotten subject seen again gets a new key: the new value reads, the old stay erased.
    let again = rename("m-1", "Alicia");
    members.execute("m-1", again, root()).await.unwrap();
    assert_eq!(
        members.load(&member("m-1")).await.unwrap().state.name,
        "Alicia"
    );
    let erased_again = erased_of(&store, "m-1").await;
    assert_eq!(erased_again, [vec!["email", "name"], vec!["name"], vec![]]);
    assert!(!contains(&raw_bytes().await, "Alicia"));

    // No key store: a typed, retryable error, and nothing written or read in its place.
    let before = all_events(&raw).await.len();
    let down =
        Repository::<Member, _>::new(PersonalDataStore::new(raw.clone(), Arc::new(Unreachable)));
    let carol = register("m-3", "Carol Ann", "carol@example.com", "gold");
    match down.execute("m-3", carol.clone(), root()).await {
        Err(CommandError::Store(StoreError::Unavailable { .. })) => {}
        other => panic!("expected the key store to be unavailable, got {other:?}"),
    }
    match down.load(&member("m-2")).await {
        Err(StoreError::Unavailable { .. }) => {}
        other => panic!("expected the key store to be unavailable, got {other:?}"),
    }
    // Without the sealing store, every backend refuses the personal fields.
    let plain = Repository::<Member, _>::new(raw.clone());
    match plain.execute("m-3", carol, root()).await {
        Err(CommandError::Store(StoreError::InvalidInput { reason, .. })) => {
            assert!(reason.contains("PersonalDataStore"), "{reason}");
        }
        other => panic!("expected plaintext to be refused, got {other:?}"),
    }
    assert_eq!(all_events(&raw).await.len(), before, "nothing written");
    assert!(!contains(&raw_bytes().await, "Carol"));
    store
}

/// A sealed body still validates against its schema, which allows each personal field sealed;
/// a body where another field is sealed does not.
#[tokio::test]
async fn sealed_bodies_validate_against_their_schema() {
    use cqrs_core::schema::EventJsonSchemas;
    let raw = InMemoryEventStore::new();
    let store = PersonalDataStore::new(raw.clone(), Arc::new(MemoryKeyStore::new()));
    let members = Repository::<Member, _>::new(store);
    let alice = register("m-1", ALICE[0], ALICE[1], "gold");
    members
        .execute("m-1", alice, CommandMetadata::root())
        .await
        .unwrap();
    let schemas = MemberEvent::json_schemas();
    let registered = &schemas
        .iter()
        .find(|s| s.event_type == "Registered")
        .unwrap()
        .schema;
    let validator = jsonschema::validator_for(registered).unwrap();
    let body: serde_json::Value =
        serde_json::from_slice(&all_events(&raw).await[0].payload.data).unwrap();
    assert!(body["name"]["$personal"].is_object(), "{body}");
    assert!(validator.is_valid(&body), "{body}");
    let mut plan_sealed = body.clone();
    plan_sealed["plan"] = body["name"].clone();
    assert!(!validator.is_valid(&plan_sealed));
}

#[tokio::test]
async fn in_memory_store_shreds_personal_data() {
    let raw = InMemoryEventStore::new();
    let reader = raw.clone();
    personal_data_is_shredded(raw, Arc::new(MemoryKeyStore::new()), async || {
        let mut bytes = Vec::new();
        for event in all_events(&reader).await {
            bytes.extend_from_slice(&event.payload.data);
            bytes.extend_from_slice(&serde_json::to_vec(&event.metadata).unwrap());
        }
        bytes
    })
    .await;
}

#[tokio::test]
async fn jetstream_shreds_personal_data() {
    let f = cqrs_tests::jetstream().await.unwrap();
    let keys: Arc<dyn KeyStore> = Arc::new(JetStreamKeyStore::open(&f.store).await.unwrap());
    let js = f.store.jetstream().clone();
    let store = personal_data_is_shredded(f.store.clone(), keys.clone(), async || {
        // A plain consumer: the messages as the server keeps them.
        let stream = js.get_stream("EVENTS_TEST").await.unwrap();
        let count = stream.get_info().await.unwrap().state.messages;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer
            .messages()
            .await
            .unwrap()
            .take(usize::try_from(count).unwrap());
        let mut bytes = Vec::new();
        while let Some(message) = messages.next().await {
            let message = message.unwrap();
            bytes.extend_from_slice(&message.payload);
            bytes.extend_from_slice(format!("{:?}", message.headers).as_bytes());
        }
        bytes
    })
    .await;

    // The live runner reads the stream itself: `Opened` hands it opened events.
    let head = all_events(store.inner()).await.last().unwrap().position;
    let config = ProjectionConfig::new().heartbeat(Duration::from_millis(200));
    let handle = JetStreamProjectionRunner::spawn(
        store.inner(),
        Opened::new(Names::default(), keys.clone()),
        config,
    )
    .await
    .unwrap();
    handle
        .wait_for(head, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(handle.projection().projection().get(), rebuilt(true));
    assert!(handle.parked().await.unwrap().is_empty());
    handle.stop().await.unwrap();

    // The key bucket keeps no older revision of a forgotten key.
    let bucket = js.get_key_value("KEYS_TEST").await.unwrap();
    assert_eq!(bucket.status().await.unwrap().history(), 1);
    keys.forget("m-2").await.unwrap();
    assert!(keys.key("m-2").await.unwrap().is_none());
}

/// What a projection rebuilt from the first event sees once `m-1` is forgotten, before or after
/// `m-1` was seen again.
fn rebuilt(seen_again: bool) -> Seen {
    let entry = |name: &str, erased: &[&str]| {
        let erased = erased.iter().map(|&f| f.to_owned()).collect();
        (name.to_owned(), erased)
    };
    let mut alice = vec![
        entry("[erased]", &["email", "name"]),
        entry("[erased]", &["name"]),
    ];
    if seen_again {
        alice.push(entry("Alicia", &[]));
    }
    Seen::from([
        ("m-1".to_owned(), alice),
        ("m-2".to_owned(), vec![entry(BOB[0], &[])]),
    ])
}
