//! Poison events and malformed messages are parked; later events still project.

use super::support::*;
use cqrs_core::read_model::InMemoryReadModelStore;
use cqrs_core::{EventFilter, HandlerError, Projection, RecordedEvent, StoreError, StreamId};
use cqrs_nats::JetStreamProjectionRunner;
use cqrs_nats::async_nats::{self, HeaderMap, jetstream};
use cqrs_tests::jetstream as fixture;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[tokio::test]
async fn poison_event_is_parked_and_later_events_still_project() {
    let f = fixture().await.unwrap();
    let append = |id: &'static str, n: u64| add(&f.store, id, n);
    // The poison event between two events of another aggregate of its partition, all written
    // before the runner starts: one batch.
    let partition = |id: &str| {
        f.store
            .stored_subject_for(&StreamId::new("Counter", id))
            .unwrap()
            .split('.')
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let sibling: &'static str = ["c0", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
        .into_iter()
        .find(|id| partition(id) == partition("c1"))
        .unwrap_or_else(|| panic!("no id shares a partition with c1"));
    append(sibling, 1).await;
    let poison_position = append("c1", 13).await;
    append(sibling, 5).await;
    let head = append(sibling, 7).await;

    let mut sums = Sums::new("balances", InMemoryReadModelStore::new());
    sums.poison = Some(13);
    /// Counts the deliveries of the poison event and the largest batch.
    struct Counting(
        Sums<InMemoryReadModelStore<u64>>,
        Arc<AtomicU32>,
        Arc<AtomicU32>,
    );
    impl Projection for Counting {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn filter(&self) -> EventFilter {
            self.0.filter()
        }
        async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
            if amount(event)? == 13 {
                self.1.fetch_add(1, Ordering::SeqCst);
            }
            self.0.apply(event).await
        }
        async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<(), HandlerError> {
            self.2
                .fetch_max(u32::try_from(events.len()).unwrap(), Ordering::SeqCst);
            for event in events {
                self.apply(event).await?;
            }
            Ok(())
        }
    }
    let (attempts, largest) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    // The four events are in the stream before the runner starts; the linger lets the first
    // batch wait for all of them however slowly the client takes them in (without it, the
    // batch held what the client had parsed when the lane looked: under load, fewer than 3).
    let handle = JetStreamProjectionRunner::spawn(
        &f.store,
        Counting(sums.clone(), attempts.clone(), largest.clone()),
        config(3).batch_linger(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    handle.wait_for(head, PATIENT).await.unwrap();
    assert!(
        largest.load(Ordering::SeqCst) >= 3,
        "delivered in one batch"
    );
    // Once in the batch, then three times on its own after the batch failed.
    assert_eq!(attempts.load(Ordering::SeqCst), 4);
    // Parked alone: its neighbours are applied.
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([(sibling.into(), 13)])
    );

    // Listed from the dead-letter stream, with the error, attempts and original position.
    let parked = handle.parked().await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].projection, "balances");
    assert_eq!(parked[0].event.position, poison_position);
    assert_eq!(parked[0].event.aggregate_id, "c1");
    assert_eq!(parked[0].attempts, 3);
    assert_eq!(parked[0].error, "cannot book 13");
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(
        letters[0].subject,
        f.store
            .stored_subject_for(&StreamId::new("Counter", "c1"))
            .unwrap()
    );
    // It sits on `<context>.deadletter.<projection>`, as a plain client sees it.
    let client = async_nats::connect(f.server.url()).await.unwrap();
    let raw = jetstream::new(client)
        .get_stream("DEADLETTER_TEST")
        .await
        .unwrap()
        .get_last_raw_message_by_subject("test.deadletter.balances")
        .await
        .unwrap();
    assert_eq!(
        raw.headers.get("Cqrs-Parked-Error").unwrap().as_str(),
        "cannot book 13"
    );
    assert_eq!(
        raw.headers.get("Cqrs-Parked-Sequence").unwrap().as_str(),
        poison_position.to_string()
    );

    // Replayed while still failing: it stays parked.
    assert_eq!(handle.replay_parked().await.unwrap(), 0);
    assert_eq!(handle.parked().await.unwrap().len(), 1);
    assert_eq!(attempts.load(Ordering::SeqCst), 7);
    // After the fix it succeeds and leaves the dead-letter stream.
    sums.poison_on.store(false, Ordering::SeqCst);
    assert_eq!(handle.replay_parked().await.unwrap(), 1);
    assert!(handle.parked().await.unwrap().is_empty());
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([(sibling.into(), 13), ("c1".into(), 13)])
    );
    handle.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_message_is_parked_not_looped_on() {
    let f = fixture().await.unwrap();
    // Another client writes garbage headers on an event subject.
    let client = async_nats::connect(f.server.url()).await.unwrap();
    let js = jetstream::new(client);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "not-a-uuid");
    headers.insert("Cqrs-Aggregate-Version", "zero");
    let bad = js
        .publish_with_headers("test.events._.Counter.bad", headers, "{\"n\":1}".into())
        .await
        .unwrap()
        .await
        .unwrap()
        .sequence;
    let head = write_history(&f.store, 2, 1).await;

    let sums = Sums::new("sums", InMemoryReadModelStore::new());
    let handle = JetStreamProjectionRunner::spawn(&f.store, sums.clone(), config(5))
        .await
        .unwrap();
    handle.wait_for(head, PATIENT).await.unwrap();
    assert_eq!(sums.applied.load(Ordering::SeqCst), 2);
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([("c0".into(), 10), ("c1".into(), 11)])
    );
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, bad);
    assert_eq!(letters[0].attempts, 1);
    assert_eq!(
        letters[0].subject,
        f.store
            .stored_subject_for(&StreamId::new("Counter", "bad"))
            .unwrap()
    );
    assert!(
        matches!(letters[0].event, Err(StoreError::MalformedEnvelope { position, .. }) if position == bad),
        "{:?}",
        letters[0].event
    );
    assert!(
        letters[0].error.contains("Nats-Msg-Id"),
        "{}",
        letters[0].error
    );
    // Not a readable event: not among the parked events, and a replay skips it.
    assert!(handle.parked().await.unwrap().is_empty());
    assert_eq!(handle.replay_parked().await.unwrap(), 0);
    // Passed once: nothing behind on any partition.
    assert_eq!(handle.lag().await.unwrap().total, 0);
    handle.stop().await.unwrap();

    // A projection name must be usable as a consumer name and a subject token.
    let bad = JetStreamProjectionRunner::spawn(
        &f.store,
        Sums::new("bad.name", InMemoryReadModelStore::new()),
        config(1),
    )
    .await;
    assert!(bad.is_err());
}

/// The store the projection writes to is unavailable while `outage` is set; every try counts.
struct DuringOutage {
    sums: Sums<InMemoryReadModelStore<u64>>,
    outage: Arc<std::sync::atomic::AtomicBool>,
    tries: Arc<AtomicU32>,
}

impl Projection for DuringOutage {
    fn name(&self) -> &str {
        self.sums.name()
    }
    fn filter(&self) -> EventFilter {
        self.sums.filter()
    }
    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        self.tries.fetch_add(1, Ordering::SeqCst);
        if self.outage.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable {
                operation: "put",
                reason: "no responders".to_owned(),
                source: None,
            }
            .into());
        }
        self.sums.apply(event).await
    }
}

/// An outage longer than the retry policy's attempts parks nothing: the event waits in its
/// place (its partition's checkpoint stays before it), a stop does not wait the outage out,
/// and once the outage is over the event is applied once.
#[tokio::test]
async fn an_outage_parks_nothing_and_a_stop_does_not_wait_it_out() {
    let f = fixture().await.unwrap();
    let first = add(&f.store, "c1", 2).await;
    let head = add(&f.store, "c1", 3).await;
    let sums = Sums::new("balances", InMemoryReadModelStore::new());
    let outage = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let tries = Arc::new(AtomicU32::new(0));
    let projection = || DuringOutage {
        sums: sums.clone(),
        outage: outage.clone(),
        tries: tries.clone(),
    };
    // Two attempts, pauses of 1-5 ms: without the transient rule the event would be parked
    // within milliseconds.
    let handle = JetStreamProjectionRunner::spawn(&f.store, projection(), config(2))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + PATIENT;
    while tries.load(Ordering::SeqCst) < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tried {} times",
            tries.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(handle.parked().await.unwrap().is_empty());
    assert_eq!(handle.checkpoint(), 0, "nothing handled");
    // Stopping gives the delivery up after five heartbeats (1 s here) instead of retrying for
    // the policy's five minutes of patience.
    let checkpoint = tokio::time::timeout(PATIENT, handle.stop())
        .await
        .expect("the stop did not wait the outage out")
        .unwrap();
    assert!(
        checkpoint < first,
        "checkpoint {checkpoint} passed the event"
    );
    let committed = checkpoints(&f.store, "balances").await;
    assert!(
        committed.values().all(|c| c.position < first),
        "{committed:?}"
    );

    // The outage ends: a new runner applies both events once.
    outage.store(false, Ordering::SeqCst);
    let handle = JetStreamProjectionRunner::spawn(&f.store, projection(), config(2))
        .await
        .unwrap();
    handle.wait_for(head, PATIENT).await.unwrap();
    assert_eq!(
        snapshot(&sums.model).await,
        BTreeMap::from([("c1".into(), 5)])
    );
    assert!(handle.parked().await.unwrap().is_empty());
    assert!(handle.dead_letters().await.unwrap().is_empty());
    handle.stop().await.unwrap();
}
