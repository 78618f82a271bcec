//! Property: for random command sequences over several aggregates, the state the repository
//! loads equals the fold of `evolve` over the stored events, and versions are gapless 1..n.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Wallet, WalletCommand};
use cqrs_core::{
    Aggregate, CommandMetadata, EventFilter, EventStore, InMemoryEventStore, Repository, StreamId,
};
use futures::TryStreamExt;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn command() -> impl Strategy<Value = WalletCommand> {
    prop_oneof![
        Just(WalletCommand::Open),
        (-5i64..50).prop_map(WalletCommand::Credit),
        (-5i64..50).prop_map(WalletCommand::Debit),
        ((-5i64..50), (0i64..5))
            .prop_map(|(amount, fee)| WalletCommand::DebitWithFee { amount, fee }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn repository_state_is_the_fold_of_stored_events(
        script in prop::collection::vec((0usize..3, command()), 1..40),
        snapshot_every in 1u64..6,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let store = InMemoryEventStore::new();
            let repo = Repository::<Wallet, _>::new(store.clone())
                .with_snapshots_every(snapshot_every)
                .with_cache(2);
            // The model: each aggregate's state by pure transitions.
            let mut model: BTreeMap<usize, Wallet> = BTreeMap::new();
            for (target, command) in script {
                let id = format!("w{target}");
                let expected = model.entry(target).or_default().clone().transition(command.clone());
                let outcome = repo.execute(&id, command, CommandMetadata::root()).await;
                match (expected, outcome) {
                    (Ok((next, events)), Ok(committed)) => {
                        let payloads: Vec<_> = committed.into_iter().map(|e| e.payload).collect();
                        prop_assert_eq!(payloads, events);
                        model.insert(target, next);
                    }
                    (Err(expected), Err(actual)) => {
                        prop_assert_eq!(actual.rejection(), Some(&expected));
                    }
                    (expected, actual) => {
                        prop_assert!(false, "model {:?} vs repository {:?}", expected, actual);
                    }
                }
            }
            for (target, state) in &model {
                let stream = StreamId::new("Wallet", format!("w{target}"));
                let stored: Vec<_> = store.load(&stream, 1).await.unwrap().try_collect().await.unwrap();
                let versions: Vec<u64> = stored.iter().map(|e| e.version).collect();
                prop_assert_eq!(versions, (1..=stored.len() as u64).collect::<Vec<_>>());
                let events: Vec<_> = stored.iter().map(|e| e.payload.decode().unwrap()).collect();
                let folded = Wallet::replay(&events);
                prop_assert_eq!(&folded, state);
                let loaded = repo.load(&stream).await.unwrap();
                prop_assert_eq!(&loaded.state, state);
                prop_assert_eq!(loaded.version(), stored.len() as u64);
            }
            // Positions are gapless store-wide too.
            let all: Vec<_> = store.read_all(&EventFilter::all(), 0).await.unwrap().try_collect().await.unwrap();
            let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
            prop_assert_eq!(positions, (1..=all.len() as u64).collect::<Vec<_>>());
            Ok(())
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any stored (type, version, body) decodes into an event or a typed error: garbage bodies,
    /// wrong shapes, unknown types and future versions never panic.
    #[test]
    fn any_stored_body_decodes_or_is_a_typed_error(
        event_type in prop_oneof![
            Just("Opened".to_owned()),
            Just("Credited".to_owned()),
            Just("FeeCharged".to_owned()),
            "[A-Za-z]{0,12}",
        ],
        version in 0u32..4,
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..48),
            "\\{\"(amount|fee)\":-?[0-9]{1,20}\\}".prop_map(String::into_bytes),
            Just(b"null".to_vec()),
        ],
    ) {
        use cqrs_core::{DecodeError, DomainEvent};
        match common::WalletEvent::decode(&event_type, version, &body) {
            Ok(event) => {
                prop_assert_eq!(event.event_type(), event_type.as_str());
                prop_assert_eq!(version, 1);
            }
            Err(DecodeError::UnknownEventType { event_type: t }) => prop_assert_eq!(t, event_type),
            Err(DecodeError::UnsupportedVersion { version: v, .. }) => prop_assert_eq!(v, version),
            Err(DecodeError::Malformed { version: v, .. }) => prop_assert_eq!(v, version),
            Err(other) => prop_assert!(false, "unexpected error: {other}"),
        }
    }
}
