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
