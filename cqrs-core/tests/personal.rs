//! Sealing and opening personal fields: upcasting over sealed fields, keys that do not match,
//! and what the derive declares.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cqrs_core::personal::{
    KeyFuture, KeyStore, MemoryKeyStore, PersonalDataStore, PersonalField, SubjectKey,
};
use cqrs_core::{
    DomainEvent, EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent,
    RecordedEvent, SerializedEvent, StoreError, StreamId,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Version 1 of `Named`: one field for the whole name.
#[derive(Debug, Clone, Deserialize)]
struct NamedV1 {
    member_id: String,
    full_name: String,
}

impl From<NamedV1> for ProfileEvent {
    fn from(v1: NamedV1) -> Self {
        let (given, family) = v1
            .full_name
            .split_once(' ')
            .map_or((v1.full_name.clone(), String::new()), |(g, f)| {
                (g.to_owned(), f.to_owned())
            });
        ProfileEvent::Named {
            member_id: v1.member_id,
            given,
            family,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum ProfileEvent {
    #[event(version = 2, upcast(from = 1, with = NamedV1))]
    Named {
        #[serde(rename = "member")]
        member_id: String,
        #[personal(subject = member_id, replacement = "?")]
        given: String,
        #[personal(subject = member_id, replacement = "?")]
        family: String,
    },
    Scored {
        member: u64,
        #[personal(subject = member, replacement = -1)]
        score: i64,
    },
}

fn stream() -> StreamId {
    StreamId::new("Profile", "p-1")
}

async fn events<S: EventStore>(store: &S) -> Vec<RecordedEvent> {
    store
        .load(&stream(), 1)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// A version 1 event, written before the split, with its personal field as v1 declared it.
fn v1(member: &str, full_name: &str) -> NewEvent {
    const V1_PERSONAL: &[PersonalField] = &[PersonalField {
        field: "full_name",
        subject: "member_id",
        replacement: "\"? ?\"",
    }];
    let mut event = NewEvent::new(
        cqrs_core::metadata::new_id(),
        SerializedEvent {
            event_type: "Named".to_owned(),
            schema_version: 1,
            data: serde_json::to_vec(&serde_json::json!({
                "member_id": member, "full_name": full_name
            }))
            .unwrap(),
        },
        Metadata::standalone(),
    );
    event.personal = V1_PERSONAL;
    event
}

#[test]
fn the_derive_declares_personal_fields_by_their_stored_names() {
    let named = ProfileEvent::Named {
        member_id: "m".into(),
        given: "G".into(),
        family: "F".into(),
    };
    let fields = named.personal_fields();
    assert_eq!(fields.len(), 2);
    assert_eq!(
        (fields[0].field, fields[0].subject, fields[0].replacement),
        ("given", "member", "\"?\"")
    );
    let scored = ProfileEvent::Scored {
        member: 7,
        score: 3,
    };
    assert_eq!(scored.personal_fields()[0].replacement, "-1");
    assert_eq!(
        ProfileEvent::catalog()[1].personal,
        scored.personal_fields()
    );
}

#[tokio::test]
async fn upcasting_reads_sealed_fields_of_old_versions() {
    let keys = Arc::new(MemoryKeyStore::new());
    let store = PersonalDataStore::new(InMemoryEventStore::new(), keys.clone());
    let current = ProfileEvent::Named {
        member_id: "m-1".into(),
        given: "Ada".into(),
        family: "Lovelace".into(),
    };
    let current = NewEvent::encode(
        &current,
        cqrs_core::metadata::new_id(),
        Metadata::standalone(),
    )
    .unwrap();
    let scored = ProfileEvent::Scored {
        member: 42,
        score: 99,
    };
    let scored = NewEvent::encode(
        &scored,
        cqrs_core::metadata::new_id(),
        Metadata::standalone(),
    )
    .unwrap();
    store
        .append(
            &stream(),
            ExpectedVersion::NoStream,
            vec![v1("m-1", "Augusta King"), current, scored],
            None,
        )
        .await
        .unwrap();
    let raw = events(store.inner()).await;
    assert!(raw.iter().all(|e| {
        let body = String::from_utf8_lossy(&e.payload.data);
        // Quoted or with their key: base64 may hold the bare letters by chance.
        !body.contains("\"Augusta King\"") && !body.contains("\"Ada\"") && !body.contains(":99")
    }));

    let decoded: Vec<ProfileEvent> = events(&store)
        .await
        .iter()
        .map(|e| e.payload.decode().unwrap())
        .collect();
    let named = |given: &str, family: &str| ProfileEvent::Named {
        member_id: "m-1".into(),
        given: given.into(),
        family: family.into(),
    };
    assert_eq!(decoded[0], named("Augusta", "King"));
    assert_eq!(decoded[1], named("Ada", "Lovelace"));
    assert_eq!(
        decoded[2],
        ProfileEvent::Scored {
            member: 42,
            score: 99
        }
    );

    store.forget("m-1").await.unwrap();
    let opened = events(&store).await;
    let decoded: Vec<ProfileEvent> = opened.iter().map(|e| e.payload.decode().unwrap()).collect();
    // The v1 replacement goes through the upcast like any v1 value.
    assert_eq!(decoded[0], named("?", "?"));
    assert_eq!(decoded[1], named("?", "?"));
    assert_eq!(opened[0].erased, ["full_name"]);
    assert_eq!(opened[1].erased, ["family", "given"]);
    assert!(
        opened[2].erased.is_empty(),
        "a numeric subject keeps its key"
    );

    store.forget("42").await.unwrap();
    let scored = events(&store).await[2]
        .payload
        .decode::<ProfileEvent>()
        .unwrap();
    assert_eq!(
        scored,
        ProfileEvent::Scored {
            member: 42,
            score: -1
        }
    );
}

/// Hands out a key with the id of the real one and other bytes.
struct Impostor(SubjectKey);

impl KeyStore for Impostor {
    fn key_for_writing<'a>(&'a self, _: &'a str) -> KeyFuture<'a, SubjectKey> {
        Box::pin(async move { Ok(self.0.clone()) })
    }
    fn key<'a>(&'a self, _: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        let forged = SubjectKey::from_parts(self.0.id(), [7; 32]);
        Box::pin(async move { Ok(Some(forged)) })
    }
    fn forget<'a>(&'a self, _: &'a str) -> KeyFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test]
async fn a_value_that_does_not_authenticate_is_an_error_not_an_erasure() {
    let store = PersonalDataStore::new(
        InMemoryEventStore::new(),
        Arc::new(Impostor(SubjectKey::generate())),
    );
    store
        .append(
            &stream(),
            ExpectedVersion::NoStream,
            vec![v1("m-1", "Ada")],
            None,
        )
        .await
        .unwrap();
    match store
        .load(&stream(), 1)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
    {
        Err(StoreError::MalformedEnvelope { position, reason }) => {
            assert_eq!(position, 1);
            assert!(reason.contains("full_name"), "{reason}");
        }
        other => panic!("expected a malformed event, got {other:?}"),
    }
}

/// Counts the keys it hands out for sealing.
#[derive(Default)]
struct Counting {
    keys: MemoryKeyStore,
    asked: std::sync::atomic::AtomicUsize,
}

impl KeyStore for Counting {
    fn key_for_writing<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.keys.key_for_writing(subject)
    }
    fn key<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        self.keys.key(subject)
    }
    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, ()> {
        self.keys.forget(subject)
    }
}

#[tokio::test]
async fn a_commit_asks_for_each_subjects_key_once() {
    let keys = Arc::new(Counting::default());
    let store = PersonalDataStore::new(InMemoryEventStore::new(), keys.clone());
    let named = |given: &str| {
        let event = ProfileEvent::Named {
            member_id: "m-1".into(),
            given: given.into(),
            family: "Lovelace".into(),
        };
        NewEvent::encode(
            &event,
            cqrs_core::metadata::new_id(),
            Metadata::standalone(),
        )
        .unwrap()
    };
    store
        .append(
            &stream(),
            ExpectedVersion::NoStream,
            vec![named("Ada"), named("Augusta"), v1("m-1", "Ada King")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(keys.asked.load(std::sync::atomic::Ordering::SeqCst), 1);
    let decoded: Vec<ProfileEvent> = events(&store)
        .await
        .iter()
        .map(|e| e.payload.decode().unwrap())
        .collect();
    assert_eq!(decoded.len(), 3);
}
