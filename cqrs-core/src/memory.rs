//! The embedded event store: everything in memory, with the same semantics as JetStream.

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::StoreError;
use crate::metadata::IdempotencyKey;
use crate::store::{
    AppendTo, Committed, EventStore, EventStream, Snapshot, check_parts, find_commit_by_scan,
};
use crate::stream::{EventFilter, ExpectedVersion, StreamId, StreamPosition};
use futures::{Stream, StreamExt, stream};
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use time::OffsetDateTime;
use tokio::sync::broadcast;

/// How many events a lazy read copies out of the store per lock.
const READ_CHUNK: usize = 256;

/// How many appended events a live subscriber may fall behind before it is told it lagged.
const FEED_CAPACITY: usize = 4096;

/// An in-memory [`EventStore`]: the embedded default for demos and unit tests.
///
/// The expected-version check and the write happen under one lock, so concurrent writers get
/// the same [`StoreError::Conflict`] as on JetStream. Cloning shares the store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cqrs_core::{EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent, StreamId};
/// use cqrs_core::doc::CounterEvent;
///
/// let store = InMemoryEventStore::new();
/// let stream = StreamId::new("Counter", "c-1");
/// let event = NewEvent::encode(&CounterEvent::Added { amount: 1 }, cqrs_core::metadata::new_id(), Metadata::standalone())?;
/// store.append(&stream, ExpectedVersion::NoStream, vec![event.clone()], None).await?;
///
/// // A second creator loses.
/// let again = NewEvent { event_id: cqrs_core::metadata::new_id(), ..event };
/// let err = store.append(&stream, ExpectedVersion::NoStream, vec![again], None).await.unwrap_err();
/// assert!(err.is_conflict());
/// # Ok::<_, cqrs_core::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct InMemoryEventStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    feed: broadcast::Sender<RecordedEvent>,
}

#[derive(Debug, Default)]
struct State {
    /// Every event; the event at index `i` has position `i + 1`.
    log: Vec<RecordedEvent>,
    /// Indices into `log` of each stream's events, in version order.
    streams: HashMap<StreamId, Vec<usize>>,
    /// Which commit an idempotency key produced: the stream and log range of each part (one for
    /// an `append`, one per aggregate for an `append_all`).
    commits: HashMap<IdempotencyKey, Vec<(StreamId, Range<usize>)>>,
    snapshots: HashMap<StreamId, Snapshot>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                feed,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-written: every mutation
        // happens after all checks, so the data is consistent even if the lock is poisoned.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The store position of the last event (0 when empty).
    pub fn head(&self) -> u64 {
        self.state().log.len() as u64
    }

    /// Every event from `from_position` (inclusive) on, then every event appended later, in
    /// position order, with no gap between the two. The stream never ends by itself; it yields
    /// an error if the subscriber falls more than a few thousand events behind.
    pub fn subscribe(
        &self,
        from_position: u64,
    ) -> impl Stream<Item = Result<RecordedEvent, StoreError>> + Send + 'static {
        // Subscribe and read the head under the lock, so no append slips between history and
        // the live feed.
        let (receiver, head) = {
            let state = self.state();
            (self.shared.feed.subscribe(), state.log.len() as u64)
        };
        let history = self.read_range(EventFilter::all(), from_position, head);
        let live = stream::unfold(receiver, move |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) if event.position <= head || event.position < from_position => {}
                    Ok(event) => return Some((Ok(event), receiver)),
                    Err(broadcast::error::RecvError::Closed) => return None,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        let error = StoreError::Unavailable {
                            operation: "subscribe",
                            reason: format!(
                                "subscriber fell {missed} events behind the live feed; resubscribe from the last position it processed"
                            ),
                            source: None,
                        };
                        return Some((Err(error), receiver));
                    }
                }
            }
        });
        history.chain(live)
    }

    /// Lazily reads positions `from..=head` that match `filter`, a chunk per lock.
    fn read_range(&self, filter: EventFilter, from: u64, head: u64) -> EventStream {
        let store = self.clone();
        let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        let end = usize::try_from(head).unwrap_or(usize::MAX);
        stream::unfold(start, move |next| {
            let store = store.clone();
            let filter = filter.clone();
            async move {
                if next >= end {
                    return None;
                }
                let until = end.min(next + READ_CHUNK);
                let chunk: Vec<_> = store.state().log[next..until]
                    .iter()
                    .filter(|e| filter.matches(e))
                    .cloned()
                    .map(Ok)
                    .collect();
                Some((stream::iter(chunk), until))
            }
        })
        .flatten()
        .boxed()
    }

    fn stream_events(&self, stream: StreamId, from_version: u64) -> EventStream {
        let store = self.clone();
        let end = self.state().streams.get(&stream).map_or(0, Vec::len);
        let start = usize::try_from(from_version.max(1) - 1).unwrap_or(usize::MAX);
        stream::unfold(start, move |next| {
            let store = store.clone();
            let stream = stream.clone();
            async move {
                if next >= end {
                    return None;
                }
                let until = end.min(next + READ_CHUNK);
                let state = store.state();
                let chunk: Vec<_> = state.streams.get(&stream).map_or_else(Vec::new, |idx| {
                    idx[next..until]
                        .iter()
                        .map(|&i| Ok(state.log[i].clone()))
                        .collect()
                });
                drop(state);
                Some((stream::iter(chunk), until))
            }
        })
        .flatten()
        .boxed()
    }
}

impl State {
    fn committed(&self, range: Range<usize>, duplicate: bool) -> Committed {
        Committed {
            events: self.log[range].to_vec(),
            duplicate,
        }
    }

    fn append(
        &mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        key: IdempotencyKey,
    ) -> Result<Committed, StoreError> {
        if let Some(parts) = self.commits.get(&key) {
            // The same event ids may have gone out as this aggregate's part of a larger commit.
            return match parts.iter().find(|(original, _)| original == stream) {
                Some((_, range)) => Ok(self.committed(range.clone(), true)),
                None => Err(StoreError::IdempotencyKeyReused {
                    key: key.to_string(),
                    stream: stream.clone(),
                    original: parts[0].0.clone(),
                }),
            };
        }
        let current = self.version(stream);
        if !expected.is_satisfied_by(current) {
            return Err(StoreError::Conflict {
                stream: stream.clone(),
                expected,
                actual: Some(current),
            });
        }
        let range = self.push(stream, events, OffsetDateTime::now_utc());
        self.commits
            .insert(key, vec![(stream.clone(), range.clone())]);
        Ok(self.committed(range, false))
    }

    fn append_all(
        &mut self,
        parts: Vec<AppendTo>,
        key: IdempotencyKey,
    ) -> Result<Vec<Committed>, StoreError> {
        if let Some(original) = self.commits.get(&key) {
            // Only written parts are recorded: a retry's guards are not checked again.
            let written = parts.iter().filter(|p| !p.is_guard());
            let same = original.len() == written.clone().count()
                && original
                    .iter()
                    .zip(written)
                    .all(|((s, _), p)| *s == p.stream);
            if !same {
                return Err(StoreError::IdempotencyKeyReused {
                    key: key.to_string(),
                    stream: parts[0].stream.clone(),
                    original: original[0].0.clone(),
                });
            }
            let mut ranges = original.iter();
            let mut originals = Vec::with_capacity(parts.len());
            for part in &parts {
                let range = if part.is_guard() {
                    0..0
                } else {
                    ranges.next().map_or(0..0, |(_, range)| range.clone())
                };
                originals.push(self.committed(range, true));
            }
            return Ok(originals);
        }
        for part in &parts {
            let current = self.version(&part.stream);
            if !part.expected.is_satisfied_by(current) {
                return Err(StoreError::Conflict {
                    stream: part.stream.clone(),
                    expected: part.expected,
                    actual: Some(current),
                });
            }
        }
        let recorded_at = OffsetDateTime::now_utc();
        let ranges: Vec<(StreamId, Range<usize>)> = parts
            .into_iter()
            .map(|part| {
                let range = self.push(&part.stream, part.events, recorded_at);
                (part.stream, range)
            })
            .collect();
        let committed = ranges
            .iter()
            .map(|(_, range)| self.committed(range.clone(), false))
            .collect();
        self.commits.insert(
            key,
            ranges.into_iter().filter(|(_, r)| !r.is_empty()).collect(),
        );
        Ok(committed)
    }

    /// The version `stream` is at.
    fn version(&self, stream: &StreamId) -> u64 {
        self.streams.get(stream).map_or(0, Vec::len) as u64
    }

    /// Writes `events` after the end of `stream`; returns their range in the log.
    fn push(
        &mut self,
        stream: &StreamId,
        events: Vec<NewEvent>,
        recorded_at: OffsetDateTime,
    ) -> Range<usize> {
        let current = self.version(stream);
        let start = self.log.len();
        let indices = self.streams.entry(stream.clone()).or_default();
        for (offset, event) in (1u64..).zip(events) {
            let mut metadata = event.metadata;
            metadata.tenant.clone_from(&stream.tenant);
            indices.push(self.log.len());
            self.log.push(RecordedEvent {
                event_id: event.event_id,
                aggregate_type: stream.aggregate_type.clone(),
                aggregate_id: stream.aggregate_id.clone(),
                version: current + offset,
                position: self.log.len() as u64 + 1,
                recorded_at,
                metadata,
                payload: event.payload,
                erased: Vec::new(),
                store: None,
            });
        }
        start..self.log.len()
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed, StoreError> {
        let Some(first) = events.first() else {
            return Err(StoreError::empty_append(stream));
        };
        crate::personal::ensure_sealed(stream, &events)?;
        // Without an explicit key the first event id is the key, as `Nats-Msg-Id` is on
        // JetStream: appending the same event twice is a retry, not a second fact.
        let key = idempotency
            .cloned()
            .unwrap_or_else(|| IdempotencyKey::new(format!("event:{}", first.event_id)));
        let mut state = self.state();
        let committed = state.append(stream, expected, events, key)?;
        if !committed.duplicate {
            // Sent under the lock, so subscribers see appends in position order.
            for event in &committed.events {
                let _no_subscribers = self.shared.feed.send(event.clone());
            }
        }
        drop(state);
        Ok(committed)
    }

    async fn append_all(
        &self,
        parts: Vec<AppendTo>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Vec<Committed>, StoreError> {
        check_parts(&parts, usize::MAX)?;
        // Without an explicit key the first event id is the key, as for `append`.
        let key = idempotency.cloned().unwrap_or_else(|| {
            let first = parts
                .iter()
                .find_map(|p| p.events.first())
                .map(|e| e.event_id)
                .unwrap_or_default();
            IdempotencyKey::new(format!("event:{first}"))
        });
        let mut state = self.state();
        let committed = state.append_all(parts, key)?;
        if !committed.iter().any(|c| c.duplicate) {
            // Sent under the lock, so subscribers see appends in position order.
            for event in committed.iter().flat_map(|c| &c.events) {
                let _no_subscribers = self.shared.feed.send(event.clone());
            }
        }
        drop(state);
        Ok(committed)
    }

    async fn load(&self, stream: &StreamId, from_version: u64) -> Result<EventStream, StoreError> {
        Ok(self.stream_events(stream.clone(), from_version))
    }

    async fn find_commit(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        let found = {
            let state = self.state();
            state
                .commits
                .get(key)
                .and_then(|parts| parts.iter().find(|(original, _)| original == stream))
                .map(|(_, range)| state.committed(range.clone(), true))
        };
        match found {
            Some(found) => Ok(Some(found)),
            // Events whose ids derive from `key` though another key committed them (a unit of
            // work's part): found by their ids, as JetStream finds them.
            None => find_commit_by_scan(self, stream, key).await,
        }
    }

    /// Every idempotency key is kept: a repeat is recognised at any age.
    fn deduplication_window(&self) -> Option<std::time::Duration> {
        None
    }

    async fn stream_position(&self, stream: &StreamId) -> Result<StreamPosition, StoreError> {
        let state = self.state();
        Ok(state
            .streams
            .get(stream)
            .and_then(|idx| idx.last())
            .map_or_else(StreamPosition::default, |&i| state.log[i].stream_position()))
    }

    async fn read_all(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        Ok(self.read_range(filter.clone(), from_position, self.head()))
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        Ok(self.state().snapshots.get(stream).cloned())
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut state = self.state();
        let newer_exists = state.snapshots.get(stream).is_some_and(|s| {
            s.state_version == snapshot.state_version
                && s.stream_position.version > snapshot.stream_position.version
        });
        if !newer_exists {
            state.snapshots.insert(stream.clone(), snapshot);
        }
        Ok(())
    }
}
