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
