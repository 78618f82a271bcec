//! [`JetStreamEventStore`]: the [`EventStore`] on NATS JetStream.
//!
//! - One stream per bounded context, `EVENTS_<CONTEXT>` on `<context>.events.*.*.*` (file
//!   storage, `allow_atomic`, `allow_direct`, `deny_delete`, `deny_purge`, a duplicate window, no
//!   limits, and a subject transform that stores every event under a partition token, see
//!   [`crate::subject`]), one subject per aggregate, one message per event (see
//!   [`crate::headers`]). An existing stream is verified, never reconfigured.
//! - **Append.** The expected version is turned into the stream sequence of the aggregate's last
//!   event, which goes out as `Nats-Expected-Last-Subject-Sequence` on every append (0 for a new
//!   aggregate), so the server fences any writer that raced in between. Where that sequence
//!   comes from: 0 for `NoStream`/`Exact(0)`; the store's memory of aggregate heads it has seen
//!   (loads, appends; "version v is at sequence q" never changes, so it cannot be wrong); else a
//!   leader read of the aggregate's last message, whose version is compared with
//!   the expectation before anything is sent. Several events go out as one atomic batch
//!   (ADR-50): all are stored or none. Server codes 10071 and 10164 become
//!   [`StoreError::Conflict`]; `ExpectedVersion::Any` retries those a bounded number of times.
//! - **Multi-aggregate commits** (`append_all`) go out as one atomic batch across the
//!   aggregates' subjects; each aggregate's first message carries its own expected sequence, so
//!   the server stores all of them only if every aggregate is where the caller read it. A
//!   refused batch is a [`StoreError::Conflict`] naming an aggregate that moved (read back
//!   after the refusal: the server does not say which).
//! - **Idempotency.** Event ids are `Nats-Msg-Id`s. A retried append is answered with the
//!   original commit: from the server's duplicate ack, or, after a conflict or a whole-batch
//!   duplicate rejection (10201), by looking the event ids up on the aggregate's subject. An ack
//!   that times out is resolved the same way, or reported as [`StoreError::OutcomeUnknown`];
//!   nothing is ever resent blindly.
//! - **Load.** Only the aggregate's subject is read, with batched direct gets
//!   (`{"seq", "next_by_subj", "batch"}`), page by page, ending on the server's `Nats-Num-Pending`
//!   (never on a timeout); the next page is fetched while the current one is decoded. When more
//!   than 2,000 events follow the first page, an ordered consumer filtered to the subject reads
//!   exactly that many instead (at a bare ordered read's rate, where pages reached about 0.6x of
//!   it) and is deleted afterwards; a tenant-scoped store, or a user who may not create
//!   consumers, keeps paging. Versions must be gapless; garbage is a
//!   [`StoreError::MalformedEnvelope`] naming the stream sequence.
//! - **`read_all`** runs an ordered consumer filtered as narrowly as the filter allows (tenants and
//!   aggregate types become filter subjects; the rest is filtered on the client) and ends at the
//!   stream's last sequence as of the call.
//! - **Snapshots** live in the KV bucket `SNAPSHOTS_<CONTEXT>` under the key
//!   `<tenant token>.<AggregateType>.<id token>`, as the JSON of [`Snapshot`]; an older snapshot of
//!   the same state version never replaces a newer one (compare-and-set on the KV revision). The
//!   bucket's stream refuses roll-ups and purges, so no key's message can purge the others.
//!
//! Limits: the server deduplicates `Nats-Msg-Id` only within the stream's duplicate window
//! (2 minutes by default). Appends with an expected version find their original commit at any
//! age; an [`ExpectedVersion::Any`] append retried after the window is written again. On
//! replicated streams direct gets may be served by a follower that lags: a stale load leads to a
//! conflict on the next append, never to a lost update, and a look-up of a commit that finds
//! nothing is confirmed against the leader's last event (see `Inner::find_run`).
//!
//! **Permissions.** A request the server's permissions refuse is
//! [`StoreError::PermissionDenied`] at once, naming the subject (see [`crate::permissions`]);
//! on a store made with [`JetStreamEventStore::from_client`] it is a timeout instead. Loads and
//! head reads name the aggregate's subject in a JSON body by default, which per-tenant access
//! cannot scope; [`StoreConfig::tenant_scoped_reads`] reads through requests whose subjects name
//! the tenant instead (see [`crate::tenancy`] for the accounts and grants).

use crate::permissions::Guard;
use crate::replies::Replies;
use crate::subject::{SubjectError, Subjects};
use async_nats::Client;
use async_nats::jetstream::{self, stream};
use cqrs_core::{
    AppendTo, Committed, EventFilter, EventStore, EventStream, ExpectedVersion, IdempotencyKey,
    NewEvent, SeenPosition, Snapshot, StoreError, StreamId, StreamPosition,
};
use std::fmt;
use std::sync::{Arc, Mutex};
use tracing::Instrument;

/// An [`EventStore`] on NATS JetStream. Cloning shares the connection.
#[derive(Clone)]
pub struct JetStreamEventStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    client: Client,
    js: jetstream::Context,
    /// Addressed by name only: a tenant-scoped store may not ask for the stream's info.
    stream: stream::Stream<()>,
    subjects: Subjects,
    /// `None` when the bucket is missing and the store may not create it.
    snapshots: Option<SnapshotBucket>,
    config: StoreConfig,
    known: Mutex<KnownHeads>,
    replies: tokio::sync::OnceCell<Replies>,
    guard: Guard,
    /// Whether the stream stores read guards' carriers (a stream made before them and not
    /// updated since does not listen on their subject).
    read_guards: bool,
}

impl Inner {
    /// The events stream's name, `EVENTS_<CONTEXT>`: the context's subjects hold it.
    fn stream_name(&self) -> &str {
        self.subjects.stream()
    }
}

mod append;
mod append_all;
mod config;
mod confirm;
mod failure;
mod heads;
mod load;
mod provision;
mod read_all;
mod scoped;
mod snapshots;

use failure::backend;
pub(crate) use failure::{unavailable, unavailable_because};
use heads::KnownHeads;

pub use config::{MAX_BATCH, MIN_SERVER_VERSION, StoreConfig};

pub(crate) use scoped::RawPage;

use snapshots::{SnapshotBucket, Write};

impl fmt::Debug for JetStreamEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamEventStore")
            .field("stream", &self.inner.stream_name())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl JetStreamEventStore {
    /// The connection and stream behind the store, for the crate's own services (the tenant
    /// read service relays [`Inner::raw_page`]s).
    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }

    /// Whether the store was opened with
    /// [`StoreConfig::tenant_scoped_reads`]`(true)`.
    pub fn is_tenant_scoped(&self) -> bool {
        self.inner.config.scoped_reads
    }

    /// The underlying NATS connection.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The JetStream context the store uses.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The number of replicas the context's streams have.
    pub(crate) fn replicas(&self) -> usize {
        self.inner.config.replicas
    }

    /// The name of the context's stream.
    pub fn stream_name(&self) -> &str {
        self.inner.stream_name()
    }

    /// The subject `stream`'s events are published to:
    /// `<context>.events.<tenant>.<AggregateType>.<id>`.
    pub fn subject_for(&self, stream: &StreamId) -> Result<String, SubjectError> {
        self.inner.subjects.aggregate(
            stream.tenant.as_deref(),
            &stream.aggregate_type,
            &stream.aggregate_id,
        )
    }

    /// The subject the stream stores `stream`'s events under (what loads and consumers read):
    /// `<context>.events.<partition>.<tenant>.<AggregateType>.<id>`.
    pub fn stored_subject_for(&self, stream: &StreamId) -> Result<String, SubjectError> {
        self.inner.subjects.stored(&self.subject_for(stream)?)
    }

    /// The context's subjects (partition count included).
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    fn stored_subject_or_invalid(&self, stream: &StreamId) -> Result<String, StoreError> {
        self.stored_subject_for(stream)
            .map_err(|e| StoreError::InvalidInput {
                stream: stream.clone(),
                reason: e.to_string(),
            })
    }

    /// The subject `stream`'s events are published to and the one they are stored under.
    fn subjects_or_invalid(&self, stream: &StreamId) -> Result<(String, String), StoreError> {
        self.inner
            .subjects
            .aggregate_and_stored(
                stream.tenant.as_deref(),
                &stream.aggregate_type,
                &stream.aggregate_id,
            )
            .map_err(|e| StoreError::InvalidInput {
                stream: stream.clone(),
                reason: e.to_string(),
            })
    }

    fn subject_or_invalid(&self, stream: &StreamId) -> Result<String, StoreError> {
        self.subject_for(stream)
            .map_err(|e| StoreError::InvalidInput {
                stream: stream.clone(),
                reason: e.to_string(),
            })
    }

    /// The key of `stream`'s snapshot in the bucket: `<tenant>.<AggregateType>.<id>` tokens.
    fn snapshot_key(&self, stream: &StreamId) -> Result<String, StoreError> {
        let subject = self.subject_or_invalid(stream)?;
        let prefix = format!("{}.events.", self.inner.subjects.context());
        Ok(subject.strip_prefix(&prefix).unwrap_or(&subject).to_owned())
    }
}

impl EventStore for JetStreamEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed, StoreError> {
        // The idempotency key reaches the server as the event ids (`Nats-Msg-Id`), which the
        // repository derives from it.
        let span = tracing::debug_span!(
            "cqrs.nats.append",
            aggregate_type = %stream.aggregate_type,
            aggregate_id = %stream.aggregate_id,
            expected = %expected,
            events = events.len(),
            correlation_id = ?events.first().map(|e| e.metadata.correlation_id),
            version = tracing::field::Empty,
        );
        async {
            let committed = match self.append_inner(stream, expected, events).await {
                Err(StoreError::IdempotencyKeyReused {
                    key,
                    stream,
                    original,
                }) => {
                    // Name the key as the caller knows it (without one, the first event id is
                    // the key, as on the in-memory store).
                    let key =
                        idempotency.map_or_else(|| format!("event:{key}"), ToString::to_string);
                    return Err(StoreError::IdempotencyKeyReused {
                        key,
                        stream,
                        original,
                    });
                }
                other => other?,
            };
            if let Some(last) = committed.events.last() {
                tracing::Span::current().record("version", last.version);
            }
            Ok(committed)
        }
        .instrument(span)
        .await
    }

    async fn append_all(
        &self,
        parts: Vec<AppendTo>,
        _idempotency: Option<&IdempotencyKey>,
    ) -> Result<Vec<Committed>, StoreError> {
        // As for `append`, the key reaches the server as the event ids.
        let span = tracing::debug_span!(
            "cqrs.nats.append_all",
            aggregates = parts.len(),
            events = parts.iter().map(|p| p.events.len()).sum::<usize>(),
            correlation_id = ?parts.first().and_then(|p| p.events.first()).map(|e| e.metadata.correlation_id),
        );
        self.append_all_inner(parts).instrument(span).await
    }

    async fn load(&self, stream: &StreamId, from_version: u64) -> Result<EventStream, StoreError> {
        let subject = self.stored_subject_or_invalid(stream)?;
        tracing::debug!(
            aggregate_type = %stream.aggregate_type,
            aggregate_id = %stream.aggregate_id,
            from_version,
            "cqrs.nats.load"
        );
        Ok(self.inner.events(subject, 1, from_version, Some(1)))
    }

    async fn load_after(
        &self,
        stream: &StreamId,
        after: StreamPosition,
    ) -> Result<EventStream, StoreError> {
        let subject = self.stored_subject_or_invalid(stream)?;
        tracing::debug!(aggregate_type = %stream.aggregate_type, aggregate_id = %stream.aggregate_id, after_version = after.version, after_position = after.position, "cqrs.nats.load_after");
        Ok(self
            .inner
            .events(subject, after.position + 1, 0, Some(after.version + 1)))
    }

    /// Scans the aggregate's events for the ids derived from `key`, checking that the replica
    /// that answered was not behind the leader (a look-up that finds nothing is confirmed
    /// against the leader's last event of the aggregate).
    async fn find_commit(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        let subject = self.stored_subject_or_invalid(stream)?;
        Ok(self
            .inner
            .find_run(&subject, |index| Some(key.event_id(index)))
            .await?
            .map(|events| Committed {
                events,
                duplicate: true,
            }))
    }

    /// The stream's duplicate window ([`StoreConfig::duplicate_window`]), within which
    /// `Nats-Msg-Id` answers a repeated append.
    fn deduplication_window(&self) -> Option<std::time::Duration> {
        Some(self.inner.config.duplicate_window)
    }

    async fn stream_position(&self, stream: &StreamId) -> Result<StreamPosition, StoreError> {
        let subject = self.stored_subject_or_invalid(stream)?;
        Ok(self
            .inner
            .last(&subject)
            .await?
            .map_or_else(StreamPosition::default, |e| e.stream_position()))
    }

    async fn version_past(
        &self,
        stream: &StreamId,
        seen: &SeenPosition,
    ) -> Result<Option<u64>, StoreError> {
        // A position in another context's stream says nothing about this one; a tenant-scoped
        // store may not ask for the stream's info, and takes the leader's last event instead.
        if seen.store != self.inner.stream_name() || self.inner.config.scoped_reads {
            return Ok(Some(self.stream_position(stream).await?.version));
        }
        let subject = self.stored_subject_or_invalid(stream)?;
        self.inner
            .version_past(&subject, seen.position)
            .instrument(tracing::debug_span!(
                "cqrs.nats.version_past",
                position = seen.position
            ))
            .await
    }

    async fn current_version(
        &self,
        stream: &StreamId,
        loaded: StreamPosition,
    ) -> Result<u64, StoreError> {
        // A single replica has no other copy to be cut off from: its leader is the authority.
        if !self.inner.config.linearizable_refusals || self.inner.config.replicas <= 1 {
            return Ok(self.stream_position(stream).await?.version);
        }
        let subject = self.stored_subject_or_invalid(stream)?;
        self.confirm(stream, &subject, loaded)
            .instrument(tracing::debug_span!(
                "cqrs.nats.confirm",
                aggregate_type = %stream.aggregate_type,
                aggregate_id = %stream.aggregate_id,
                version = loaded.version,
            ))
            .await
    }

    async fn read_all(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        self.read_all_inner(filter, from_position)
            .instrument(tracing::debug_span!("cqrs.nats.read_all", from_position))
            .await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>, StoreError> {
        const OP: &str = "load snapshot";
        let key = self.snapshot_key(stream)?;
        let Some(bucket) = &self.inner.snapshots else {
            return Ok(None);
        };
        let subjects = bucket.guarded_subjects(&key);
        let entry = self
            .inner
            .guarded(OP, stream, &subjects, bucket.entry(&key))
            .await?
            .map_err(|e| unavailable_because(OP, "reading the snapshot", e))?;
        let Some(entry) = entry.filter(|e| !e.deleted) else {
            return Ok(None);
        };
        match serde_json::from_slice::<Snapshot>(&entry.value) {
            Ok(snapshot) => Ok(Some(snapshot)),
            Err(error) => {
                tracing::warn!(%stream, %error, "ignoring an unreadable snapshot");
                Ok(None)
            }
        }
    }

    async fn save_snapshot(&self, stream: &StreamId, snapshot: Snapshot) -> Result<(), StoreError> {
        const OP: &str = "save snapshot";
        let key = self.snapshot_key(stream)?;
        let value = bytes::Bytes::from(serde_json::to_vec(&snapshot).map_err(|e| backend(OP, e))?);
        let Some(bucket) = &self.inner.snapshots else {
            return Err(StoreError::Backend {
                operation: OP,
                source: format!(
                    "snapshot bucket {} does not exist and this store was opened with create_missing(false); open the context once with create_missing(true) to create it",
                    self.inner.config.bucket_name()
                )
                .into(),
            });
        };
        let subjects = bucket.guarded_subjects(&key);
        let inner = &self.inner;
        for _ in 0..8 {
            let entry = inner
                .guarded(OP, stream, &subjects, bucket.entry(&key))
                .await?
                .map_err(|e| unavailable_because(OP, "reading the snapshot", e))?;
            let revision = entry.as_ref().map_or(0, |e| e.revision);
            let newer = entry.filter(|e| !e.deleted).is_some_and(|e| {
                serde_json::from_slice::<Snapshot>(&e.value).is_ok_and(|s| {
                    s.state_version == snapshot.state_version
                        && s.stream_position.version > snapshot.stream_position.version
                })
            });
            if newer {
                return Ok(());
            }
            let write = bucket.write(&key, value.clone(), revision);
            match inner
                .guarded(OP, stream, &subjects, write)
                .await?
                .map_err(|e| unavailable_because(OP, "writing the snapshot", e))?
            {
                Write::Written => return Ok(()),
                // Another writer got in first: look again.
                Write::Raced => tracing::debug!(%stream, "snapshot write raced; retrying"),
            }
        }
        Err(unavailable(
            OP,
            "the snapshot kept changing under concurrent writers",
        ))
    }
}
