//! The event store contract every backend implements with the same semantics.

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::StoreError;
use crate::metadata::{IdempotencyKey, SeenPosition};
use crate::stream::{EventFilter, ExpectedVersion, StreamId, StreamPosition};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use time::OffsetDateTime;

/// A finite stream of stored events, read lazily. It ends at the store's head as of the call.
pub type EventStream = BoxStream<'static, Result<RecordedEvent, StoreError>>;

/// The outcome of an append.
#[derive(Debug, Clone, PartialEq)]
pub struct Committed {
    /// The stored events, with versions and positions, in order.
    pub events: Vec<RecordedEvent>,
    /// `true` when the append was a retry of an earlier one (same idempotency key): nothing new
    /// was written and `events` are the originals.
    pub duplicate: bool,
}

impl Committed {
    /// Where the stream stands after this commit, or `None` for an empty commit.
    pub fn stream_position(&self) -> Option<StreamPosition> {
        self.events.last().map(RecordedEvent::stream_position)
    }
}

/// One aggregate's part of a multi-aggregate commit ([`EventStore::append_all`]): its events and
/// the version it must be at — or, with no events, a *read guard* ([`AppendTo::guard`]): an
/// aggregate the decision read but does not change, which must still be at that version when
/// the commit is stored.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cqrs_core::{AppendTo, EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent, StreamId};
/// use cqrs_core::doc::CounterEvent;
/// use cqrs_core::metadata::new_id;
///
/// let store = InMemoryEventStore::new();
/// let added = |amount| NewEvent::encode(&CounterEvent::Added { amount }, new_id(), Metadata::standalone());
/// let (a, b) = (StreamId::new("Counter", "a"), StreamId::new("Counter", "b"));
/// let both = store
///     .append_all(
///         vec![
///             AppendTo::new(a.clone(), ExpectedVersion::NoStream, vec![added(1)?]),
///             AppendTo::new(b.clone(), ExpectedVersion::NoStream, vec![added(2)?]),
///         ],
///         None,
///     )
///     .await?;
/// assert_eq!(both[1].events[0].position, both[0].events[0].position + 1);
///
/// // `b` is at version 1 now: a commit expecting it new is refused as a whole.
/// let err = store
///     .append_all(
///         vec![
///             AppendTo::new(a.clone(), ExpectedVersion::Exact(1), vec![added(3)?]),
///             AppendTo::new(b.clone(), ExpectedVersion::NoStream, vec![added(4)?]),
///         ],
///         None,
///     )
///     .await
///     .unwrap_err();
/// assert!(matches!(err, cqrs_core::StoreError::Conflict { ref stream, .. } if *stream == b));
/// assert_eq!(store.stream_position(&a).await?.version, 1);
///
/// // Valid only while `b` is still at version 1 (a read guard): `b` gets nothing.
/// let guarded = store
///     .append_all(
///         vec![
///             AppendTo::new(a.clone(), ExpectedVersion::Exact(1), vec![added(5)?]),
///             AppendTo::guard(b.clone(), ExpectedVersion::Exact(1)),
///         ],
///         None,
///     )
///     .await?;
/// assert!(guarded[1].events.is_empty());
/// assert_eq!(store.stream_position(&b).await?.version, 1);
/// # Ok::<_, cqrs_core::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AppendTo {
    /// The aggregate.
    pub stream: StreamId,
    /// The version it must be at: [`ExpectedVersion::NoStream`] or [`ExpectedVersion::Exact`]
    /// (a multi-aggregate decision is based on the versions it read).
    pub expected: ExpectedVersion,
    /// Its new events; none for a read guard.
    pub events: Vec<NewEvent>,
}

impl AppendTo {
    /// `events` for `stream`, which must be at version `expected`. With no events the part is
    /// a read guard, as made by [`AppendTo::guard`].
    pub fn new(stream: StreamId, expected: ExpectedVersion, events: Vec<NewEvent>) -> Self {
        Self {
            stream,
            expected,
            events,
        }
    }

    /// A read guard: the commit holds only while `stream` is at version `expected`
    /// ([`ExpectedVersion::NoStream`]: while it has no events), though it writes nothing to it —
    /// "valid only while account B is still at version 7", "only while the username is
    /// unclaimed". If it moved, the commit stores nothing and is a [`StoreError::Conflict`]
    /// naming it. Its [`Committed`] has no events.
    pub fn guard(stream: StreamId, expected: ExpectedVersion) -> Self {
        Self::new(stream, expected, Vec::new())
    }

    /// Whether this part only guards its aggregate (it has no events).
    pub fn is_guard(&self) -> bool {
        self.events.is_empty()
    }
}

/// Checks the shape of a multi-aggregate commit before anything is sent: parts present, at
/// least one with events, each with an exact expectation, no aggregate twice, no personal data
/// in the clear ([`ensure_sealed`](crate::personal::ensure_sealed)), at most `max` events in all.
pub fn check_parts(parts: &[AppendTo], max: usize) -> Result<(), StoreError> {
    let invalid = |stream: &StreamId, reason: &str| StoreError::InvalidInput {
        stream: stream.clone(),
        reason: reason.to_owned(),
    };
    let Some(first) = parts.first() else {
        return Err(invalid(
            &StreamId::new("*", "*"),
            "a multi-aggregate commit needs at least one part",
        ));
    };
    if parts.iter().all(AppendTo::is_guard) {
        return Err(StoreError::empty_append(&first.stream));
    }
    let mut seen = std::collections::HashSet::new();
    for part in parts {
        if part.expected == ExpectedVersion::Any {
            return Err(invalid(
                &part.stream,
                "every part of a multi-aggregate commit needs the version it was decided on (NoStream or Exact), not Any; a read guard needs the version that was read",
            ));
        }
        if !seen.insert(&part.stream) {
            return Err(invalid(
                &part.stream,
                "the aggregate appears twice in one commit; put all its events in one part",
            ));
        }
        crate::personal::ensure_sealed(&part.stream, &part.events)?;
    }
    let count: usize = parts.iter().map(|p| p.events.len()).sum();
    if count > max {
        return Err(StoreError::TooManyEvents {
            stream: first.stream.clone(),
            count,
            max,
        });
    }
    Ok(())
}

/// A serialised aggregate state at a stream position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The version and store position of the last event folded into `state`.
    pub stream_position: StreamPosition,
    /// The aggregate's `STATE_VERSION` when the snapshot was taken.
    pub state_version: u32,
    /// The state as JSON.
    pub state: Vec<u8>,
    /// When it was taken.
    #[serde(with = "time::serde::rfc3339")]
    pub taken_at: OffsetDateTime,
}

/// Append-only storage of event streams.
///
/// Semantics every implementation keeps (the conformance suite in `tests/` checks them):
/// - `append` checks `expected` and writes all `events` atomically, or none;
/// - a conflict is [`StoreError::Conflict`];
/// - an append repeated with the same idempotency key (and the same event ids, as the
///   repository derives them from the key) writes nothing and returns the original events with
///   `duplicate = true` — also when its expected version has gone stale meanwhile, so that a
///   retry is never mistaken for a conflict;
/// - versions are gapless `1..=n` per stream; positions increase store-wide in append order;
/// - reads are lazy streams that end at the head as of the call.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if its version satisfies `expected`.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> impl Future<Output = Result<Committed, StoreError>> + Send;

    /// Appends to several aggregates atomically: every part's expected version must hold, then
    /// all events are stored, or none. Returns one [`Committed`] per part, in order; positions
    /// follow the parts' order.
    ///
    /// Parts without events are read guards ([`AppendTo::guard`]): checked like the others,
    /// written to never; their [`Committed`] has no events.
    ///
    /// A version that does not hold is [`StoreError::Conflict`] naming that aggregate. A retry
    /// with the same idempotency key (and event ids) returns the original commits with
    /// `duplicate = true`, also when its expected versions have gone stale meanwhile; an
    /// unknown outcome is resolved by looking the event ids up, as for [`append`](Self::append).
    ///
    /// The default commits a single part through [`append`](Self::append) and refuses more with
    /// [`StoreError::InvalidInput`]: a backend that can write several aggregates atomically
    /// overrides it (both stores of this workspace do).
    fn append_all(
        &self,
        parts: Vec<AppendTo>,
        idempotency: Option<&IdempotencyKey>,
    ) -> impl Future<Output = Result<Vec<Committed>, StoreError>> + Send {
        async move {
            check_parts(&parts, usize::MAX)?;
            let mut parts = parts;
            match (parts.pop(), parts.is_empty()) {
                (Some(part), true) => Ok(vec![
                    self.append(&part.stream, part.expected, part.events, idempotency)
                        .await?,
                ]),
                (Some(part), false) => Err(StoreError::InvalidInput {
                    stream: part.stream,
                    reason: "this store cannot commit to several aggregates atomically, nor guard one it does not write".to_owned(),
                }),
                (None, _) => Ok(Vec::new()),
            }
        }
    }

    /// The events of `stream` from version `from_version` (1 for all) to its current end.
    fn load(
        &self,
        stream: &StreamId,
        from_version: u64,
    ) -> impl Future<Output = Result<EventStream, StoreError>> + Send;

    /// The events of `stream` after `after` (a snapshot's or cache's position). Backends that
    /// can seek by position override this to skip what the reader already has.
    fn load_after(
        &self,
        stream: &StreamId,
        after: StreamPosition,
    ) -> impl Future<Output = Result<EventStream, StoreError>> + Send {
        self.load(stream, after.version + 1)
    }

    /// The commit an earlier append under `key` made to `stream`, if any: how a retried command
    /// finds its original outcome after the state moved on.
    ///
    /// The default scans `stream` for the event ids the repository derives from `key`
    /// ([`IdempotencyKey::event_id`]); stores with an index override it.
    fn find_commit(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
    ) -> impl Future<Output = Result<Option<Committed>, StoreError>> + Send {
        find_commit_by_scan(self, stream, key)
    }

    /// How long after an append the store recognises a repeat of it by itself, even when the
    /// repeat's expected version holds — a command decided again on the state its first attempt
    /// produced (JetStream: the stream's duplicate window, which `Nats-Msg-Id` answers).
    /// `None`: always (the in-memory store keeps every idempotency key).
    ///
    /// A repeat that may be older — a command whose id is not a fresh UUID v7, or has an
    /// explicit idempotency key — is looked up with [`find_commit`](Self::find_commit) by the
    /// repository before it is appended. The default, zero, has every command looked up (a
    /// store that wraps another forwards its window).
    fn deduplication_window(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::ZERO)
    }

    /// Where `stream` stands now (version 0 and position 0 when it has no events).
    fn stream_position(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<StreamPosition, StoreError>> + Send;

    /// The version of `stream` now, as told by a copy of the store that holds every event up to
    /// `seen` — `None` when the copy that answered has not got that far. The repository asks it
    /// before it answers a command with a refusal, or with nothing to write, on a state that
    /// does not include the command's [`seen_position`](crate::CommandMetadata::seen_position):
    /// a copy that lags says "no later event" where the caller has seen one — on JetStream even
    /// the leader, when it is cut off from the rest of its cluster and has not noticed yet. One
    /// answer says both, so that two copies cannot each vouch for half of it (after a partition
    /// heals, the old leader and the new one both answer for a while). A position in another
    /// store (`seen.store` is not this store's name) is no constraint.
    ///
    /// The default asks [`stream_position`](Self::stream_position), which is right for a store
    /// that reads from the one copy it writes (the in-memory store); a store that wraps another
    /// forwards it.
    fn version_past(
        &self,
        stream: &StreamId,
        seen: &SeenPosition,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        let _ = seen;
        async move { Ok(Some(self.stream_position(stream).await?.version)) }
    }

    /// The version of `stream` now, for a caller that loaded it at `loaded` and is about to
    /// answer a command with a refusal, or with nothing to write, on that state (the
    /// repository asks it when the command names no
    /// [`seen_position`](crate::CommandMetadata::seen_position) past `loaded`, else
    /// [`version_past`](Self::version_past)): `loaded.version` while the aggregate is still
    /// there, a later version once it has moved.
    ///
    /// The default asks [`stream_position`](Self::stream_position), which is right for a store
    /// whose one copy is the authority (the in-memory store); a store that wraps another
    /// forwards it. On JetStream that is the stream leader's word, or — with
    /// `StoreConfig::linearizable_refusals` — the stream's quorum, since a leader cut off from
    /// its cluster answers from its old state for seconds.
    fn current_version(
        &self,
        stream: &StreamId,
        loaded: StreamPosition,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        let _ = loaded;
        async move { Ok(self.stream_position(stream).await?.version) }
    }

    /// All events matching `filter`, from store position `from_position` (inclusive; 1 or 0
    /// for the beginning) to the head as of the call, in position order.
    fn read_all(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> impl Future<Output = Result<EventStream, StoreError>> + Send;

    /// The latest snapshot of `stream`, if any.
    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send;

    /// Stores a snapshot of `stream`, replacing older ones.
    fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// [`EventStore::find_commit`] by reading `stream`: the events whose ids the repository derives
/// from `key` ([`IdempotencyKey::event_id`] 0, 1, ...), in a row.
///
/// # Errors
/// What reading `stream` fails with.
pub async fn find_commit_by_scan<S: EventStore + ?Sized>(
    store: &S,
    stream: &StreamId,
    key: &IdempotencyKey,
) -> Result<Option<Committed>, StoreError> {
    let mut events = store.load(stream, 1).await?;
    let mut found: Vec<RecordedEvent> = Vec::new();
    while let Some(event) = events.try_next().await? {
        if event.event_id == key.event_id(found.len()) {
            found.push(event);
        } else if !found.is_empty() {
            break;
        }
    }
    Ok((!found.is_empty()).then_some(Committed {
        events: found,
        duplicate: true,
    }))
}

/// Forwards each listed [`EventStore`] method to `**self`: one line per method instead of a
/// restated signature and body each.
macro_rules! forward_to_inner {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $output:ty;)*) => {$(
        fn $name(&self, $($arg: $ty),*) -> impl Future<Output = Result<$output, StoreError>> + Send {
            (**self).$name($($arg),*)
        }
    )*};
}

#[cfg(test)]
pub(crate) use forward_to_inner;

/// A shared store is the store: every call goes to it.
impl<S: EventStore> EventStore for Arc<S> {
    forward_to_inner! {
        fn append(stream: &StreamId, expected: ExpectedVersion, events: Vec<NewEvent>, idempotency: Option<&IdempotencyKey>) -> Committed;
        fn append_all(parts: Vec<AppendTo>, idempotency: Option<&IdempotencyKey>) -> Vec<Committed>;
        fn load(stream: &StreamId, from_version: u64) -> EventStream;
        fn load_after(stream: &StreamId, after: StreamPosition) -> EventStream;
        fn find_commit(stream: &StreamId, key: &IdempotencyKey) -> Option<Committed>;
        fn stream_position(stream: &StreamId) -> StreamPosition;
        fn version_past(stream: &StreamId, seen: &SeenPosition) -> Option<u64>;
        fn current_version(stream: &StreamId, loaded: StreamPosition) -> u64;
        fn read_all(filter: &EventFilter, from_position: u64) -> EventStream;
        fn load_snapshot(stream: &StreamId) -> Option<Snapshot>;
        fn save_snapshot(stream: &StreamId, snapshot: Snapshot) -> ();
    }

    fn deduplication_window(&self) -> Option<std::time::Duration> {
        (**self).deduplication_window()
    }
}
