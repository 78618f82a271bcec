//! Names, versions, a two-step upcast chain, serde renames, the catalog, typed decode errors.
use cqrs_core::{DecodeError, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedV1 {
    cents: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedV2 {
    amount: u64,
}

impl From<AddedV1> for AddedV2 {
    fn from(v1: AddedV1) -> Self {
        AddedV2 { amount: u64::from(v1.cents) }
    }
}

impl From<AddedV2> for Event {
    fn from(v2: AddedV2) -> Self {
        Event::Added { amount: v2.amount, note: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
enum Event {
    #[event(version = 3, upcast(from = 2, with = AddedV2), upcast(from = 1, with = AddedV1))]
    Added { amount: u64, note: String },
    #[event(name = "counter.reset")]
    Reset,
    #[serde(rename = "Renamed")]
    Moved(String),
}

fn main() {
    let added = Event::Added { amount: 5, note: "x".into() };
    assert_eq!((added.event_type(), added.schema_version()), ("Added", 3));
    assert_eq!((Event::Reset.event_type(), Event::Reset.schema_version()), ("counter.reset", 1));

    for event in [added, Event::Reset, Event::Moved("here".into())] {
        let body = event.encode().unwrap();
        let decoded = Event::decode(event.event_type(), event.schema_version(), &body).unwrap();
        assert_eq!(decoded, event);
    }

    let from_v1 = Event::decode("Added", 1, br#"{"cents":7}"#).unwrap();
    assert_eq!(from_v1, Event::Added { amount: 7, note: String::new() });
    let from_v2 = Event::decode("Added", 2, br#"{"amount":8}"#).unwrap();
    assert_eq!(from_v2, Event::Added { amount: 8, note: String::new() });

    assert!(matches!(
        Event::decode("Added", 4, b"{}"),
        Err(DecodeError::UnsupportedVersion { version: 4, ref readable, .. }) if readable == &[1, 2, 3]
    ));
    assert!(matches!(Event::decode("Reset", 1, b"null"), Err(DecodeError::UnknownEventType { .. })));

    let catalog: Vec<_> = Event::catalog().iter().map(|s| (s.name, s.version, s.readable_versions)).collect();
    assert_eq!(
        catalog,
        [("Added", 3, &[1, 2, 3][..]), ("counter.reset", 1, &[1][..]), ("Moved", 1, &[1][..])]
    );
}
