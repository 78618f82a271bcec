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
//! conflict on the next append, never to a lost update.
//!
//! **Permissions.** A request the server's permissions refuse is
//! [`StoreError::PermissionDenied`] at once, naming the subject (see [`crate::permissions`]);
//! on a store made with [`JetStreamEventStore::from_client`] it is a timeout instead. Loads and
//! head reads name the aggregate's subject in a JSON body by default, which per-tenant access
//! cannot scope; [`StoreConfig::tenant_scoped_reads`] reads through requests whose subjects name
//! the tenant instead (see [`crate::tenancy`] for the accounts and grants).

use crate::error::NatsStoreError;
use crate::headers::{self, Control, HeaderBuilder};
use crate::permissions::{Guard, PermissionWatch, api};
use crate::replies::Replies;
use crate::subject::{SubjectError, Subjects};
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, ToServerAddrs};
use cqrs_core::{
    Committed, EventFilter, EventStore, EventStream, ExpectedVersion, IdempotencyKey, NewEvent,
    RecordedEvent, Snapshot, StoreError, StreamId, StreamPosition,
};
use futures::FutureExt;
use futures::stream::{self as fstream, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use tracing::Instrument;
use uuid::Uuid;

/// The oldest nats-server the store runs on: atomic batches with `Nats-Msg-Id` (2.12.1).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 1);
const MIN_SERVER_VERSION_TEXT: &str = "2.12.1";

/// Most events one append can carry: the server's atomic batch limit.
pub const MAX_BATCH: usize = 1000;

/// Settings of a [`JetStreamEventStore`].
#[derive(Debug, Clone)]
pub struct StoreConfig {
    context: String,
    replicas: usize,
    duplicate_window: Duration,
    any_version_retries: u32,
    load_batch: usize,
    request_timeout: Duration,
    partitions: u32,
    scoped_reads: bool,
    create_missing: bool,
    compressed: bool,
}

impl StoreConfig {
    /// The settings for bounded context `context` (`[A-Za-z0-9_-]`, checked at connect): one
    /// replica, a 2-minute duplicate window.
    pub fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            any_version_retries: 5,
            load_batch: 512,
            request_timeout: Duration::from_secs(5),
            partitions: crate::subject::DEFAULT_PARTITIONS,
            scoped_reads: false,
            create_missing: true,
            compressed: false,
        }
    }

    /// Whether opening the store creates the context's stream and snapshot bucket when they are
    /// missing (the default). With `false` the store only attaches to what exists, which suits
    /// tools that must not change a server by looking at it (the `cqrs` CLI opens stores this
    /// way): a missing stream is [`NatsStoreError::ContextNotFound`], and a missing snapshot
    /// bucket means no snapshots (loading finds none, saving fails with a typed error, which a
    /// [`Repository`](cqrs_core::Repository) only logs).
    pub fn create_missing(mut self, create: bool) -> Self {
        self.create_missing = create;
        self
    }

    /// Partitions of the context's stream (clamped to 1 to 1024, default
    /// [`DEFAULT_PARTITIONS`](crate::subject::DEFAULT_PARTITIONS)): the most workers one
    /// projection can spread over. Fixed when the stream is created; connecting with another
    /// count to an existing stream is a [`NatsStoreError::StreamConflict`].
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.clamp(1, crate::subject::MAX_PARTITIONS);
        self
    }

    /// The partition count this configuration asks for.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// Whether the context's stream compresses what it stores (JetStream's S2; off by default).
    /// Fixed when the stream is created: connecting with the other setting to an existing stream
    /// is a [`NatsStoreError::StreamConflict`]. `examples/bench.rs` measures what it costs and
    /// saves (variant `repository_s2`).
    pub fn compressed(mut self, compressed: bool) -> Self {
        self.compressed = compressed;
        self
    }

    /// Stream and bucket replicas (1 locally, 3 in a cluster).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// How long the server remembers message ids for deduplication.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// How often an [`ExpectedVersion::Any`] append is retried when another writer got in first.
    pub fn any_version_retries(mut self, retries: u32) -> Self {
        self.any_version_retries = retries;
        self
    }

    /// Events fetched per batched direct get while loading an aggregate (1 to 1000).
    pub fn load_batch(mut self, batch: usize) -> Self {
        self.load_batch = batch.clamp(1, 1000);
        self
    }

    /// How long to wait for the server's answer to one request or publish.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The stream name of the context: `EVENTS_<CONTEXT>`.
    pub fn stream_name(&self) -> String {
        format!("EVENTS_{}", self.context.to_uppercase())
    }

    /// The snapshot bucket of the context: `SNAPSHOTS_<CONTEXT>`.
    pub fn bucket_name(&self) -> String {
        format!("SNAPSHOTS_{}", self.context.to_uppercase())
    }

    /// The configuration the context's stream is created with and checked against.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name(),
            subjects: vec![format!("{}.events.*.*.*", self.context)],
            subject_transform: Some(stream::SubjectTransform {
                source: format!("{}.events.*.*.*", self.context),
                destination: Subjects::with_partitions(&self.context, self.partitions)
                    .map(|s| s.transform_destination())
                    .unwrap_or_default(),
            }),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: self.replicas,
            allow_atomic_publish: true,
            allow_direct: true,
            deny_delete: true,
            deny_purge: true,
            duplicate_window: self.duplicate_window,
            max_messages_per_subject: -1,
            max_messages: -1,
            max_bytes: -1,
            compression: Some(if self.compressed {
                stream::Compression::S2
            } else {
                stream::Compression::None
            }),
            ..Default::default()
        }
    }
}

/// An [`EventStore`] on NATS JetStream. Cloning shares the connection.
#[derive(Clone)]
pub struct JetStreamEventStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    /// Addressed by name only: a tenant-scoped store may not ask for the stream's info.
    stream: stream::Stream<()>,
    stream_name: String,
    subjects: Subjects,
    /// `None` when the bucket is missing and the store may not create it.
    snapshots: Option<SnapshotBucket>,
    config: StoreConfig,
    known: Mutex<KnownHeads>,
    replies: tokio::sync::OnceCell<Replies>,
    guard: Guard,
}

mod scoped;
mod snapshots;

pub(crate) use scoped::RawPage;

use snapshots::{SnapshotBucket, Write};

/// Recently seen heads of aggregates: "version `v` of subject `s` is at stream sequence `q`".
/// These are immutable facts, so a cached entry is never wrong, at most old: an append with
/// `Exact(v)` whose `v` is known skips the lookup of the last message and lets the server's
/// `Nats-Expected-Last-Subject-Sequence` check decide.
#[derive(Debug, Default)]
struct KnownHeads {
    heads: HashMap<String, Last>,
}

/// How many aggregate heads the store remembers (cleared when full).
const KNOWN_HEADS: usize = 16_384;

impl KnownHeads {
    fn get(&self, subject: &str) -> Option<Last> {
        self.heads.get(subject).copied()
    }

    fn record(&mut self, subject: &str, head: Last) {
        if let Some(known) = self.heads.get_mut(subject) {
            if head.version > known.version {
                *known = head;
            }
            return;
        }
        if self.heads.len() >= KNOWN_HEADS {
            self.heads.clear();
        }
        self.heads.insert(subject.to_owned(), head);
    }
}

impl fmt::Debug for JetStreamEventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamEventStore")
            .field("stream", &self.inner.stream_name)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Parses `major.minor.patch` from a server version such as `2.12.8` or `2.14.0-RC.1`.
pub fn parse_server_version(version: &str) -> Option<(u64, u64, u64)> {
    let core = version.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(str::parse::<u64>);
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some((major, minor, patch))
}

fn provision_error(
    what: impl Into<String>,
    source: impl Into<cqrs_core::error::BoxError>,
) -> NatsStoreError {
    NatsStoreError::Provision {
        what: what.into(),
        source: source.into(),
    }
}

/// The JetStream API error code somewhere in `error`'s source chain.
fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        current = e.source();
    }
    None
}

fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        // async-nats errors often repeat their source in their own message.
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        current = e.source();
    }
    text
}

/// What the differences between a wanted and an existing stream config are.
fn config_differences(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut check = |field: &str, ok: bool, expected: String, found: String| {
        if !ok {
            diffs.push(format!("{field}: expected {expected}, found {found}"));
        }
    };
    check(
        "subjects",
        have.subjects == want.subjects,
        format!("{:?}", want.subjects),
        format!("{:?}", have.subjects),
    );
    check(
        "subject_transform",
        have.subject_transform
            .as_ref()
            .map(|t| (&t.source, &t.destination))
            == want
                .subject_transform
                .as_ref()
                .map(|t| (&t.source, &t.destination)),
        format!("{:?}", want.subject_transform),
        format!(
            "{:?} (the partition count is fixed when the stream is created)",
            have.subject_transform
        ),
    );
    check(
        "storage",
        have.storage == want.storage,
        format!("{:?}", want.storage),
        format!("{:?}", have.storage),
    );
    check(
        "retention",
        have.retention == want.retention,
        format!("{:?}", want.retention),
        format!("{:?}", have.retention),
    );
    check(
        "num_replicas",
        have.num_replicas == want.num_replicas,
        want.num_replicas.to_string(),
        have.num_replicas.to_string(),
    );
    for (field, want_flag, have_flag) in [
        (
            "allow_atomic",
            want.allow_atomic_publish,
            have.allow_atomic_publish,
        ),
        ("allow_direct", want.allow_direct, have.allow_direct),
        ("deny_delete", want.deny_delete, have.deny_delete),
        ("deny_purge", want.deny_purge, have.deny_purge),
    ] {
        check(
            field,
            want_flag == have_flag,
            want_flag.to_string(),
            have_flag.to_string(),
        );
    }
    // A stream created without the field reports no compression.
    let compression = |c: &Option<stream::Compression>| c.clone().unwrap_or(stream::Compression::None);
    check(
        "compression",
        compression(&have.compression) == compression(&want.compression),
        format!("{:?}", compression(&want.compression)),
        format!("{:?}", compression(&have.compression)),
    );
    check(
        "duplicate_window",
        have.duplicate_window == want.duplicate_window,
        format!("{:?}", want.duplicate_window),
        format!("{:?}", have.duplicate_window),
    );
    for (field, value) in [
        ("max_msgs_per_subject", have.max_messages_per_subject),
        ("max_msgs", have.max_messages),
        ("max_bytes", have.max_bytes),
    ] {
        check(field, value <= 0, "unlimited".to_owned(), value.to_string());
    }
    check(
        "max_age",
        have.max_age.is_zero(),
        "unlimited".to_owned(),
        format!("{:?}", have.max_age),
    );
    diffs
}

impl JetStreamEventStore {
    /// Connects to `servers` with default options and provisions the context.
    pub async fn connect(
        servers: impl ToServerAddrs,
        config: StoreConfig,
    ) -> Result<Self, NatsStoreError> {
        Self::connect_with_options(servers, ConnectOptions::new(), config).await
    }

    /// Connects with the given options (credentials, TLS, name, ...) and provisions the context.
    ///
    /// The store installs an event callback on `options` (replacing one set before) that
    /// records the server's permission violations, so that a denied request fails at once with
    /// [`StoreError::PermissionDenied`] instead of timing out (see [`crate::permissions`]). To
    /// keep a callback of your own, feed a [`PermissionWatch`] from it and use
    /// [`from_client_with_watch`](Self::from_client_with_watch).
    pub async fn connect_with_options(
        servers: impl ToServerAddrs,
        options: ConnectOptions,
        config: StoreConfig,
    ) -> Result<Self, NatsStoreError> {
        let watch = PermissionWatch::new();
        let client = watch
            .install(options)
            .connect(servers)
            .await
            .map_err(NatsStoreError::from_connect)?;
        Self::from_client_with_watch(client, config, watch).await
    }

    /// Uses an existing connection: checks the server version, then creates the context's stream
    /// and snapshot bucket, or verifies them if they exist (a conflicting stream configuration is
    /// an error, never changed silently). With
    /// [`StoreConfig::create_missing`]`(false)` nothing is created.
    ///
    /// The store cannot see the connection's events here: a request the server's permissions
    /// refuse ends in a timeout ([`StoreError::Unavailable`], [`StoreError::OutcomeUnknown`] for
    /// an append), not in [`StoreError::PermissionDenied`]. Prefer
    /// [`from_client_with_watch`](Self::from_client_with_watch).
    pub async fn from_client(client: Client, config: StoreConfig) -> Result<Self, NatsStoreError> {
        Box::pin(Self::with_guard(client, config, None)).await
    }

    /// [`from_client`](Self::from_client) on a connection whose event callback feeds `watch`
    /// ([`PermissionWatch::install`] or [`PermissionWatch::observe`]): permission violations
    /// fail the requests they concern at once, with [`StoreError::PermissionDenied`].
    pub async fn from_client_with_watch(
        client: Client,
        config: StoreConfig,
        watch: PermissionWatch,
    ) -> Result<Self, NatsStoreError> {
        Box::pin(Self::with_guard(client, config, Some(watch))).await
    }

    async fn with_guard(
        client: Client,
        config: StoreConfig,
        watch: Option<PermissionWatch>,
    ) -> Result<Self, NatsStoreError> {
        let guard = Guard::new(watch, &client);
        let subjects = Subjects::with_partitions(&config.context, config.partitions)?;
        let info = client.server_info();
        match parse_server_version(&info.version) {
            Some(found) if found >= MIN_SERVER_VERSION => {}
            _ => {
                return Err(NatsStoreError::ServerTooOld {
                    found: info.version.clone(),
                    required: MIN_SERVER_VERSION_TEXT,
                });
            }
        }
        if !info.jetstream {
            return Err(NatsStoreError::JetStreamDisabled {
                server: format!("{} ({}:{})", info.server_name, info.host, info.port),
            });
        }
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);
        let bucket = config.bucket_name();
        // A tenant-scoped store touches nothing stream-wide: it neither verifies nor creates.
        let has_bucket = if config.scoped_reads {
            true
        } else {
            Self::provision_stream(&js, &config, &guard).await?;
            Self::provision_bucket(&js, &config, &guard).await?
        };
        let no_info = |e| provision_error(format!("stream {}", config.stream_name()), e);
        let stream = js
            .get_stream_no_info(config.stream_name())
            .await
            .map_err(no_info)?;
        let snapshots = if has_bucket {
            Some(SnapshotBucket::new(&js, &bucket).await.map_err(no_info)?)
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                stream,
                stream_name: config.stream_name(),
                subjects,
                snapshots,
                config,
                known: Mutex::new(KnownHeads::default()),
                replies: tokio::sync::OnceCell::new(),
                guard,
            }),
        })
    }

    async fn provision_stream(
        js: &jetstream::Context,
        config: &StoreConfig,
        guard: &Guard,
    ) -> Result<(), NatsStoreError> {
        let want = config.stream_config();
        let name = want.name.clone();
        let verify = |stream: stream::Stream| {
            let diffs = config_differences(&want, &stream.cached_info().config);
            if diffs.is_empty() {
                Ok(())
            } else {
                Err(NatsStoreError::StreamConflict {
                    stream: name.clone(),
                    differences: diffs,
                })
            }
        };
        let what = || format!("stream {name}");
        let info = api::stream_info(&name);
        let found = guard.run(&[&info], js.get_stream(&name)).await;
        match found.map_err(|v| NatsStoreError::denied(what(), &v))? {
            Ok(stream) => return verify(stream),
            Err(e) if crate::error::is_stream_not_found(&e) => {}
            Err(e) => return Err(provision_error(format!("stream {name}"), e)),
        }
        if !config.create_missing {
            return Err(NatsStoreError::ContextNotFound {
                context: config.context.clone(),
                stream: name,
            });
        }
        let create = api::stream_create(&name);
        let created = guard.run(&[&create], js.create_stream(want.clone())).await;
        match created.map_err(|v| NatsStoreError::denied(what(), &v))? {
            Ok(stream) => verify(stream),
            Err(create_error) => match js.get_stream(&name).await {
                // Another process created it in between: verify theirs.
                Ok(stream) => verify(stream),
                Err(_) => Err(provision_error(format!("stream {name}"), create_error)),
            },
        }
    }

    /// The snapshot bucket: created if missing, unless `create_missing` is false, in which case a
    /// missing bucket means no snapshots (`false`). Its stream is hardened (no roll-ups, no
    /// purges, see [`snapshots::harden`]), an existing one too unless `create_missing` is false.
    async fn provision_bucket(
        js: &jetstream::Context,
        config: &StoreConfig,
        guard: &Guard,
    ) -> Result<bool, NatsStoreError> {
        let bucket = config.bucket_name();
        let what = || format!("snapshot bucket {bucket}");
        let info = api::stream_info(&format!("KV_{bucket}"));
        let store = if config.create_missing {
            let create = api::stream_create(&format!("KV_{bucket}"));
            let opened = crate::bucket::open_or_create(
                js,
                snapshots::bucket_config(&bucket, &config.context, config.replicas),
            );
            guard
                .run(&[&info, &create, "$JS.API.INFO"], opened)
                .await
                .map_err(|v| NatsStoreError::denied(what(), &v))?
                .map_err(|create_error| provision_error(what(), create_error))?
        } else {
            let opened = guard
                .run(
                    &[&info, "$JS.API.INFO"],
                    crate::bucket::open_existing(js, &bucket),
                )
                .await
                .map_err(|v| NatsStoreError::denied(what(), &v))?
                .map_err(|error| provision_error(what(), error))?;
            match opened {
                Some(store) => store,
                None => return Ok(false),
            }
        };
        if let Some(hardened) = snapshots::harden(&store.stream.cached_info().config) {
            if config.create_missing {
                let update = api::stream_update(&format!("KV_{bucket}"));
                guard
                    .run(&[&update], js.update_stream(&hardened))
                    .await
                    .map_err(|v| NatsStoreError::denied(what(), &v))?
                    .map_err(|error| provision_error(what(), error))?;
                tracing::info!(bucket = %bucket, "snapshot bucket hardened: roll-ups refused, purges denied");
            } else {
                tracing::warn!(bucket = %bucket, "snapshot bucket allows roll-ups, so any user who may write one key can purge all; open the context once with create_missing(true) to harden it");
            }
        }
        Ok(true)
    }

    /// One page of `subject`'s messages as the stream answered a batched direct get, for the
    /// tenant read service to relay.
    pub(crate) async fn raw_page(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
    ) -> Result<RawPage, StoreError> {
        self.inner.raw_page(subject, from_seq, batch).await
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

    /// The name of the context's stream.
    pub fn stream_name(&self) -> &str {
        &self.inner.stream_name
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

/// The last message of an aggregate: its stream sequence and version.
#[derive(Debug, Clone, Copy, Default)]
struct Last {
    sequence: u64,
    version: u64,
}

/// How many events must follow the first page of a load for the rest to be read by a consumer
/// rather than page by page: creating the consumer costs about as much as a page.
const LONG_TAIL: u64 = 2_000;

/// Where the next events of a load come from.
enum Source {
    /// A page being fetched.
    Page(Prefetch),
    /// An ordered consumer reading the rest.
    Tail(Box<Tail>),
    /// Nothing more.
    Done,
}

/// The rest of a long aggregate, read by an ordered consumer filtered to its subject.
struct Tail {
    messages: jetstream::consumer::pull::Ordered,
    remaining: u64,
    stream: stream::Stream<()>,
    name: String,
}

impl Tail {
    async fn open(
        inner: &Arc<Inner>,
        subject: &str,
        from_seq: u64,
        remaining: u64,
    ) -> Result<Self, StoreError> {
        use jetstream::consumer::{DeliverPolicy, pull};
        const OP: &str = "load";
        // Named, so that the filter is part of the create's API subject (see `read_all`).
        let name = format!("cqrs-load-{}", Uuid::now_v7().simple());
        let create = [
            api::consumer_create(&inner.stream_name, &name, subject),
            format!("$JS.API.CONSUMER.CREATE.{}.{name}", inner.stream_name),
        ];
        let config = pull::OrderedConfig {
            name: Some(name.clone()),
            filter_subject: subject.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: from_seq,
            },
            ..Default::default()
        };
        let create: Vec<&str> = create.iter().map(String::as_str).collect();
        let consumer = inner
            .guard
            .run(&create, inner.stream.create_consumer(config))
            .await
            .map_err(|violation| inner.denied(OP, subject, &violation))?
            .map_err(|e| unavailable(OP, chain_text(&e)))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(OP, chain_text(&e)))?;
        Ok(Self {
            messages,
            remaining,
            stream: inner.stream.clone(),
            name,
        })
    }

    /// Up to `max` messages: those already delivered, at least one.
    async fn next_chunk(
        &mut self,
        max: usize,
    ) -> Result<Vec<jetstream::message::StreamMessage>, StoreError> {
        const OP: &str = "load";
        let mut chunk = Vec::with_capacity(max.min(usize::try_from(self.remaining).unwrap_or(max)));
        while self.remaining > 0 && chunk.len() < max {
            let next = if chunk.is_empty() {
                self.messages.next().await
            } else {
                match self.messages.next().now_or_never() {
                    Some(next) => next,
                    None => break,
                }
            };
            let message = next
                .ok_or_else(|| unavailable(OP, "the consumer ended before the aggregate's end"))?
                .map_err(|e| unavailable(OP, chain_text(&e)))?;
            chunk.push(headers::from_consumer(message).map_err(|e| backend(OP, e))?);
            self.remaining -= 1;
        }
        Ok(chunk)
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // The server would remove it after its inactivity threshold; free it now.
        let (stream, name) = (self.stream.clone(), std::mem::take(&mut self.name));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

/// One page of an aggregate's messages, fetched on a task of its own so that it travels while
/// the page before it is decoded; aborted when the load is dropped.
struct Prefetch {
    task:
        tokio::task::JoinHandle<Result<(Vec<jetstream::message::StreamMessage>, u64), StoreError>>,
}

impl Prefetch {
    fn start(inner: &Arc<Inner>, subject: String, from_seq: u64) -> Self {
        let inner = Arc::clone(inner);
        let span = tracing::debug_span!(
            "cqrs.nats.load_page",
            subject = %subject,
            from_sequence = from_seq,
            events = tracing::field::Empty,
            pending = tracing::field::Empty,
        );
        let task = tokio::spawn(
            async move {
                let page = inner
                    .page(&subject, from_seq, inner.config.load_batch)
                    .await;
                if let Ok((messages, pending)) = &page {
                    tracing::Span::current()
                        .record("events", messages.len())
                        .record("pending", pending);
                }
                page
            }
            .instrument(span),
        );
        Self { task }
    }

    async fn finish(mut self) -> Result<(Vec<jetstream::message::StreamMessage>, u64), StoreError> {
        match (&mut self.task).await {
            Ok(page) => page,
            Err(join) => Err(unavailable(
                "load",
                format!("the page fetch failed: {join}"),
            )),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a publish failed.
enum Failure {
    Conflict,
    DuplicateBatch,
    Busy(String),
    TooLarge(String),
    OutcomeUnknown(String),
    Unavailable(String),
    PermissionDenied(String),
    Backend(cqrs_core::error::BoxError),
}

fn classify_code(code: u64, text: String) -> Failure {
    match code {
        10071 | 10164 => Failure::Conflict,
        10201 => Failure::DuplicateBatch,
        // A retry raced its original (cluster), or too many batches in flight: back off.
        10158 | 10210 => Failure::Busy(text),
        10199 | 10097 => Failure::TooLarge(text),
        // JetStream not ready, no leader, cluster unavailable.
        10008 | 10009 | 10023 | 10076 => Failure::Unavailable(text),
        _ => Failure::Backend(text.into()),
    }
}

fn classify_publish(error: &jetstream::context::PublishError) -> Failure {
    use jetstream::context::PublishErrorKind as K;
    let text = chain_text(error);
    if text.to_lowercase().contains("permission") {
        return Failure::PermissionDenied(text);
    }
    match error.kind() {
        K::WrongLastSequence => Failure::Conflict,
        K::TimedOut | K::BrokenPipe => Failure::OutcomeUnknown(text),
        K::StreamNotFound | K::MaxAckPending => Failure::Unavailable(text),
        K::MaxPayloadExceeded => Failure::TooLarge(text),
        _ => match jetstream_code(error) {
            Some(code) => classify_code(code, text),
            None => Failure::Backend(text.into()),
        },
    }
}

fn classify_request(error: &async_nats::RequestError) -> Failure {
    use async_nats::RequestErrorKind as K;
    let text = chain_text(error);
    if text.to_lowercase().contains("permission") {
        return Failure::PermissionDenied(text);
    }
    match error.kind() {
        K::NoResponders | K::TimedOut => Failure::Unavailable(text),
        _ => Failure::Backend(text.into()),
    }
}

/// An error reply of the JetStream API: `{"error":{"code":..,"err_code":..,"description":..}}`.
#[derive(serde::Deserialize)]
struct ApiErrorReply {
    error: ApiError,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u64,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

fn unavailable(operation: &'static str, reason: impl fmt::Display) -> StoreError {
    StoreError::Unavailable {
        operation,
        reason: reason.to_string(),
    }
}

fn backend(operation: &'static str, source: impl Into<cqrs_core::error::BoxError>) -> StoreError {
    StoreError::Backend {
        operation,
        source: source.into(),
    }
}

impl Inner {
    fn known(&self) -> std::sync::MutexGuard<'_, KnownHeads> {
        // The map holds only facts; a panic elsewhere cannot leave a wrong one behind.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remember(&self, subject: &str, event: &RecordedEvent) {
        self.known().record(
            subject,
            Last {
                sequence: event.position,
                version: event.version,
            },
        );
    }

    /// The aggregate's last message, read from the stream leader.
    async fn last(&self, subject: &str) -> Result<Option<RecordedEvent>, StoreError> {
        let Some(message) = self.last_message(subject).await? else {
            return Ok(None);
        };
        let event = headers::decode(&self.subjects, &message)?;
        self.remember(subject, &event);
        Ok(Some(event))
    }

    /// The events of `subject` from stream sequence `from_seq` on, lazily; `first_version` is
    /// the version the first yielded event must have (`None`: any, with events below
    /// `min_version` skipped).
    ///
    /// They come in pages of batched direct gets; while one page is decoded and consumed, the
    /// next is already being fetched. When the first page says that more than
    /// [`LONG_TAIL`] events follow, the rest is read by an ordered consumer instead, which
    /// streams at the server's pace (a batched direct get answers message by message, each
    /// with a full set of stream headers): exactly as many messages as the page said remain, so
    /// the load still ends on a count, never on a timeout.
    fn events(
        self: &Arc<Self>,
        subject: String,
        from_seq: u64,
        min_version: u64,
        first_version: Option<u64>,
    ) -> EventStream {
        struct State {
            source: Source,
            expect_version: Option<u64>,
        }
        let inner = Arc::clone(self);
        let start = State {
            source: Source::Page(Prefetch::start(&inner, subject.clone(), from_seq.max(1))),
            expect_version: first_version,
        };
        fstream::try_unfold(start, move |mut state| {
            let inner = Arc::clone(&inner);
            let subject = subject.clone();
            async move {
                let messages = match std::mem::replace(&mut state.source, Source::Done) {
                    Source::Done => return Ok(None),
                    Source::Page(fetching) => {
                        let (messages, pending) = fetching.finish().await?;
                        // Ask for what follows before decoding this page.
                        if pending > 0
                            && let Some(last) = messages.last()
                        {
                            let next = last.sequence + 1;
                            let tail = if pending > LONG_TAIL && !inner.config.scoped_reads {
                                match Tail::open(&inner, &subject, next, pending).await {
                                    Ok(tail) => Some(Box::new(tail)),
                                    // A user who may read but not create consumers: page on.
                                    Err(StoreError::PermissionDenied { reason, .. }) => {
                                        tracing::debug!(%reason, "reading the rest page by page");
                                        None
                                    }
                                    Err(other) => return Err(other),
                                }
                            } else {
                                None
                            };
                            state.source = match tail {
                                Some(tail) => Source::Tail(tail),
                                None => Source::Page(Prefetch::start(&inner, subject.clone(), next)),
                            };
                        }
                        messages
                    }
                    Source::Tail(mut tail) => {
                        let messages = tail.next_chunk(inner.config.load_batch).await?;
                        if tail.remaining > 0 {
                            state.source = Source::Tail(tail);
                        }
                        messages
                    }
                };
                let mut events = Vec::with_capacity(messages.len());
                let mut decoder = headers::Decoder::new(&inner.subjects);
                for message in &messages {
                    let event = decoder.decode(message)?;
                    if let Some(expected) = state.expect_version
                        && event.version != expected
                    {
                        return Err(StoreError::MalformedEnvelope {
                            position: event.position,
                            reason: format!(
                                "aggregate version {} where version {expected} was expected (versions must be gapless)",
                                event.version
                            ),
                        });
                    }
                    state.expect_version = Some(event.version + 1);
                    if event.version >= min_version {
                        events.push(Ok(event));
                    }
                }
                if let Some(last) = events.last().and_then(|e| e.as_ref().ok()) {
                    inner.remember(&subject, last);
                }
                Ok(Some((fstream::iter(events), state)))
            }
        })
        .try_flatten()
        .boxed()
    }

    /// Scans `subject` for the commit whose event ids are `ids` (the first, then as many of the
    /// following as match in order).
    async fn find_ids(
        self: &Arc<Self>,
        subject: &str,
        ids: &[Uuid],
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let Some(&first) = ids.first() else {
            return Ok(None);
        };
        let mut events = self.events(subject.to_owned(), 1, 0, None);
        let mut found: Vec<RecordedEvent> = Vec::new();
        while let Some(event) = events.try_next().await? {
            if found.is_empty() {
                if event.event_id == first {
                    found.push(event);
                }
            } else if ids.get(found.len()) == Some(&event.event_id) {
                found.push(event);
            } else {
                break;
            }
            if found.len() == ids.len() {
                break;
            }
        }
        Ok((!found.is_empty()).then_some(found))
    }
}

/// One event ready to go out.
struct Outgoing {
    headers: HeaderBuilder,
    payload: Vec<u8>,
}

impl JetStreamEventStore {
    fn check_size(&self, stream: &StreamId, outgoing: &Outgoing) -> Result<(), StoreError> {
        let max = self.inner.client.max_payload();
        // Room for the expectation and batch headers added later.
        let size = outgoing.headers.wire_len() + 200 + outgoing.payload.len();
        if max > 0 && size > max {
            return Err(StoreError::InvalidInput {
                stream: stream.clone(),
                reason: format!(
                    "an event of {size} bytes (headers and body) exceeds the server's max_payload of {max} bytes; store large data elsewhere and reference it"
                ),
            });
        }
        if outgoing.headers.wire_len() + 200 > usize::from(u16::MAX) {
            return Err(StoreError::InvalidInput {
                stream: stream.clone(),
                reason: "the event's headers exceed 65535 bytes; carry less metadata".to_owned(),
            });
        }
        Ok(())
    }

    fn prepare(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
        after_version: u64,
        recorded_at: OffsetDateTime,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let invalid = |reason| StoreError::InvalidInput {
            stream: stream.clone(),
            reason,
        };
        let recorded_at = headers::rfc3339(recorded_at).map_err(invalid)?;
        (after_version + 1..)
            .zip(events)
            .map(|(version, event)| {
                let headers = headers::encode(event, version, &recorded_at).map_err(invalid)?;
                let outgoing = Outgoing {
                    headers,
                    payload: event.payload.data.clone(),
                };
                self.check_size(stream, &outgoing)?;
                Ok(outgoing)
            })
            .collect()
    }

    /// Sends `outgoing` with the expectation `expected_seq`; returns the sequence of the first
    /// stored message and whether the server reported a duplicate.
    async fn publish(
        &self,
        subject: &str,
        outgoing: Vec<Outgoing>,
        expected_seq: u64,
    ) -> Result<(u64, bool), Failure> {
        let count = outgoing.len() as u64;
        let mut outgoing = outgoing;
        let Some(mut first) = outgoing.first_mut().map(|o| std::mem::take(&mut o.headers)) else {
            return Err(Failure::Backend("empty append".into()));
        };
        first.control(
            Control::ExpectedLastSubjectSequence,
            expected_seq.to_string(),
        );
        if count == 1 {
            let payload = outgoing
                .first_mut()
                .map(|o| std::mem::take(&mut o.payload))
                .unwrap_or_default();
            return self.send_commit(subject, first, payload, count).await;
        }
        let batch_id = Uuid::now_v7().simple().to_string();
        let mut last = None;
        for (index, message) in outgoing.into_iter().enumerate() {
            let mut h = if index == 0 {
                std::mem::take(&mut first)
            } else {
                message.headers
            };
            h.control(Control::BatchId, batch_id.clone());
            h.control(Control::BatchSequence, (index + 1).to_string());
            if index as u64 + 1 == count {
                h.control(Control::BatchCommit, "1".to_owned());
                last = Some((h, message.payload));
            } else if index == 0 {
                let request = async_nats::Request::new()
                    .headers(h.build())
                    .payload(message.payload.into())
                    .timeout(Some(self.inner.config.request_timeout));
                let reply = self
                    .inner
                    .client
                    .send_request(subject.to_owned(), request)
                    .await
                    .map_err(|e| classify_request(&e))?;
                if !reply.payload.is_empty() {
                    let reply: ApiErrorReply = serde_json::from_slice(&reply.payload)
                        .map_err(|e| Failure::Backend(e.into()))?;
                    let text = format!(
                        "{} (code {}, error code {})",
                        reply.error.description, reply.error.code, reply.error.err_code
                    );
                    return Err(classify_code(reply.error.err_code, text));
                }
            } else {
                self.inner
                    .client
                    .publish_with_headers(subject.to_owned(), h.build(), message.payload.into())
                    .await
                    .map_err(|e| Failure::Unavailable(e.to_string()))?;
            }
        }
        let Some((h, payload)) = last else {
            return Err(Failure::Backend("batch without a commit message".into()));
        };
        self.send_commit(subject, h, payload, count).await
    }

    async fn send_commit(
        &self,
        subject: &str,
        headers: HeaderBuilder,
        payload: Vec<u8>,
        count: u64,
    ) -> Result<(u64, bool), Failure> {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers.build());
        let ack = self
            .inner
            .js
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(|e| classify_publish(&e))?
            .await
            .map_err(|e| classify_publish(&e))?;
        if ack.duplicate {
            return Ok((ack.sequence, true));
        }
        if count > 1 && ack.batch_size != Some(count) {
            tracing::warn!(
                expected = count,
                acknowledged = ?ack.batch_size,
                "atomic batch acknowledged with an unexpected size"
            );
        }
        Ok((ack.sequence + 1 - count, false))
    }

    /// The original commit of the event ids `ids` on `subject`, if it exists.
    async fn original(&self, subject: &str, ids: &[Uuid]) -> Result<Option<Committed>, StoreError> {
        Ok(self
            .inner
            .find_ids(subject, ids)
            .await?
            .map(|events| Committed {
                events,
                duplicate: true,
            }))
    }

    /// Resolves a duplicate ack that points at `sequence`.
    async fn resolve_duplicate(
        &self,
        stream: &StreamId,
        subject: &str,
        sequence: u64,
        ids: &[Uuid],
    ) -> Result<Committed, StoreError> {
        let scoped = self.inner.config.scoped_reads;
        if scoped && let Some(committed) = self.original(subject, ids).await? {
            return Ok(committed);
        }
        let api = api::msg_get(&self.inner.stream_name);
        let read = self.inner.stream.get_raw_message(sequence);
        let message = match self.inner.guard.run(&[&api], read).await {
            Ok(read) => read.map_err(|e| unavailable("append", chain_text(&e))),
            Err(violation) => Err(self.inner.denied("append", subject, &violation)),
        };
        let message = match message {
            Ok(message) => message,
            // The message is not on this aggregate's subject, and a tenant may not read by
            // sequence (it may be another tenant's): the key was used elsewhere. Where it may,
            // the answer names the aggregate that has the key.
            Err(_) if scoped => {
                return Err(StoreError::IdempotencyKeyReused {
                    key: ids.first().map(Uuid::to_string).unwrap_or_default(),
                    stream: stream.clone(),
                    original: StreamId::new("?", format!("stream sequence {sequence}")),
                });
            }
            Err(e) => return Err(e),
        };
        if message.subject.as_str() != subject {
            let original = match self.inner.subjects.parse(message.subject.as_str()) {
                Ok((tenant, aggregate_type, aggregate_id)) => {
                    StreamId::new(aggregate_type, aggregate_id).with_optional_tenant(tenant)
                }
                Err(_) => StreamId::new("?", message.subject.to_string()),
            };
            return Err(StoreError::IdempotencyKeyReused {
                key: ids.first().map(Uuid::to_string).unwrap_or_default(),
                stream: stream.clone(),
                original,
            });
        }
        match self.original(subject, ids).await? {
            Some(committed) => Ok(committed),
            None => Ok(Committed {
                events: vec![headers::decode(&self.inner.subjects, &message)?],
                duplicate: true,
            }),
        }
    }

    async fn append_inner(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Committed, StoreError> {
        if events.is_empty() {
            return Err(StoreError::empty_append(stream));
        }
        if events.len() > MAX_BATCH {
            return Err(StoreError::TooManyEvents {
                stream: stream.clone(),
                count: events.len(),
                max: MAX_BATCH,
            });
        }
        // Published to the aggregate's subject, stored (and read back) under its partitioned form.
        let publish_to = self.subject_or_invalid(stream)?;
        let subject = self.stored_subject_or_invalid(stream)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut attempt = 0u32;
        loop {
            let known = match expected {
                _ if attempt > 0 => None,
                ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => Some(Last::default()),
                ExpectedVersion::Exact(version) => self
                    .inner
                    .known()
                    .get(&subject)
                    .filter(|k| k.version == version),
                ExpectedVersion::Any => self.inner.known().get(&subject),
            };
            let last = match known {
                Some(known) => known,
                None => self
                    .inner
                    .last(&subject)
                    .await?
                    .map_or(Last::default(), |e| Last {
                        sequence: e.position,
                        version: e.version,
                    }),
            };
            if !expected.is_satisfied_by(last.version) {
                if let Some(original) = self.original(&subject, &ids).await? {
                    return Ok(original);
                }
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: Some(last.version),
                });
            }
            let recorded_at = OffsetDateTime::now_utc();
            let outgoing = self.prepare(stream, &events, last.version, recorded_at)?;
            let publish = self.publish(&publish_to, outgoing, last.sequence);
            let published = self.inner.guard.run(&[&publish_to], publish).await;
            match published.unwrap_or_else(|v| Err(Failure::PermissionDenied(v.to_string()))) {
                Ok((sequence, true)) => {
                    return self
                        .resolve_duplicate(stream, &subject, sequence, &ids)
                        .await;
                }
                Ok((first_seq, false)) => {
                    let committed = recorded(stream, events, last.version, first_seq, recorded_at);
                    if let Some(head) = committed.events.last() {
                        self.inner.remember(&subject, head);
                    }
                    return Ok(committed);
                }
                Err(failure) => {
                    if let Some(outcome) = self
                        .on_failure(stream, &subject, expected, &ids, failure, &mut attempt)
                        .await
                    {
                        return outcome;
                    }
                }
            }
        }
    }

    /// What a failed publish means: the final outcome, or `None` to try again.
    async fn on_failure(
        &self,
        stream: &StreamId,
        subject: &str,
        expected: ExpectedVersion,
        ids: &[Uuid],
        failure: Failure,
        attempt: &mut u32,
    ) -> Option<Result<Committed, StoreError>> {
        const OP: &str = "append";
        let first_id = ids.first().copied().unwrap_or_default();
        let retries = self.inner.config.any_version_retries;
        let outcome_unknown = |reason: String| StoreError::OutcomeUnknown {
            stream: stream.clone(),
            event_id: first_id,
            reason,
        };
        Some(match failure {
            // `Any` went out with a stale head: try again with a fresh one. A retry of an append
            // that already landed is then answered by the server's deduplication.
            Failure::Conflict if expected == ExpectedVersion::Any && *attempt < retries => {
                *attempt += 1;
                return None;
            }
            Failure::Conflict => match self.original(subject, ids).await {
                Ok(Some(original)) => Ok(original),
                Ok(None) => Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    // Best effort: the version the aggregate is at now.
                    actual: self
                        .inner
                        .last(subject)
                        .await
                        .ok()
                        .map(|last| last.map_or(0, |e| e.version)),
                }),
                Err(e) => Err(e),
            },
            Failure::DuplicateBatch => match self.original(subject, ids).await {
                Ok(Some(original)) => Ok(original),
                Ok(None) => Err(StoreError::InvalidInput {
                    stream: stream.clone(),
                    reason: "the event ids of this append were already used by another append within the duplicate window (an idempotency key reused on another aggregate?)".to_owned(),
                }),
                Err(e) => Err(e),
            },
            Failure::Busy(_) if *attempt < retries => {
                *attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 << (*attempt).min(6))).await;
                return None;
            }
            Failure::Busy(reason) => Err(outcome_unknown(reason)),
            Failure::OutcomeUnknown(reason) => match self.original(subject, ids).await {
                Ok(Some(mut original)) => {
                    original.duplicate = false;
                    Ok(original)
                }
                Ok(None) => Err(outcome_unknown(reason)),
                Err(lookup) => Err(outcome_unknown(format!(
                    "{reason}; looking the event up failed too: {lookup}"
                ))),
            },
            Failure::TooLarge(reason) => Err(StoreError::InvalidInput {
                stream: stream.clone(),
                reason,
            }),
            Failure::Unavailable(reason) => Err(unavailable(OP, reason)),
            Failure::PermissionDenied(reason) => Err(StoreError::PermissionDenied {
                operation: OP,
                stream: stream.clone(),
                reason,
            }),
            Failure::Backend(source) => Err(backend(OP, source)),
        })
    }
}

/// The recorded form of `events`, stored from stream sequence `first_seq` on after version
/// `after_version`.
fn recorded(
    stream: &StreamId,
    events: Vec<NewEvent>,
    after_version: u64,
    first_seq: u64,
    recorded_at: OffsetDateTime,
) -> Committed {
    let events = events
        .into_iter()
        .zip(0u64..)
        .map(|(event, offset)| {
            let mut metadata = event.metadata;
            metadata.tenant.clone_from(&stream.tenant);
            RecordedEvent {
                event_id: event.event_id,
                aggregate_type: stream.aggregate_type.clone(),
                aggregate_id: stream.aggregate_id.clone(),
                version: after_version + 1 + offset,
                position: first_seq + offset,
                recorded_at,
                metadata,
                payload: event.payload,
            }
        })
        .collect();
    Committed {
        events,
        duplicate: false,
    }
}

impl JetStreamEventStore {
    /// The consumer filter subjects that narrow `filter` on the server (the client applies the
    /// whole filter anyway).
    fn filter_subjects(&self, filter: &EventFilter) -> Vec<String> {
        let subjects = &self.inner.subjects;
        let narrowed = crate::projection::filter_subjects(subjects, filter);
        if narrowed.is_empty() {
            vec![subjects.all_events()]
        } else {
            narrowed
        }
    }

    async fn read_all_inner(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        use jetstream::consumer::{DeliverPolicy, pull};
        const OP: &str = "read all";
        if self.inner.config.scoped_reads {
            return self.inner.read_all_scoped(filter, from_position).await;
        }
        let all = StreamId::new("*", "*");
        let info = [api::stream_info(&self.inner.stream_name)];
        let stream = self
            .inner
            .guarded(
                OP,
                &all,
                &info,
                self.inner.js.get_stream(&self.inner.stream_name),
            )
            .await?
            .map_err(|e| unavailable(OP, chain_text(&e)))?;
        let head = stream.cached_info().state.last_sequence;
        let start = from_position.max(1);
        if start > head {
            return Ok(fstream::empty().boxed());
        }
        let mut filters = self.filter_subjects(filter);
        let (filter_subject, filter_subjects) = if filters.len() == 1 {
            (filters.pop().unwrap_or_default(), Vec::new())
        } else {
            (String::new(), filters)
        };
        // Named, so that a single filter subject is part of the create's API subject, where
        // per-tenant permissions can allow it.
        let name = format!("cqrs-read-{}", Uuid::now_v7().simple());
        let create = [
            api::consumer_create(&self.inner.stream_name, &name, &filter_subject),
            format!("$JS.API.CONSUMER.CREATE.{}.{name}", self.inner.stream_name),
        ];
        let config = pull::OrderedConfig {
            name: Some(name),
            filter_subject,
            filter_subjects,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        };
        let consumer = self
            .inner
            .guarded(OP, &all, &create, stream.create_consumer(config))
            .await?
            .map_err(|e| unavailable(OP, chain_text(&e)))?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(fstream::empty().boxed());
        }
        let messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(OP, chain_text(&e)))?;
        let inner = Arc::clone(&self.inner);
        let filter = filter.clone();
        let events = fstream::try_unfold(Some(messages), move |state| {
            let inner = Arc::clone(&inner);
            let filter = filter.clone();
            async move {
                let Some(mut messages) = state else {
                    return Ok(None);
                };
                loop {
                    let Some(message) = messages.next().await else {
                        return Err(unavailable(OP, "the consumer ended before the head"));
                    };
                    let message = message.map_err(|e| unavailable(OP, chain_text(&e)))?;
                    let info = message.info().map_err(|e| backend(OP, e.to_string()))?;
                    let (sequence, pending, time) =
                        (info.stream_sequence, info.pending, info.published);
                    if sequence > head {
                        return Ok(None);
                    }
                    let stored = jetstream::message::StreamMessage {
                        subject: message.subject.clone(),
                        sequence,
                        headers: message.headers.clone().unwrap_or_default(),
                        payload: message.payload.clone(),
                        time,
                    };
                    let event = headers::decode(&inner.subjects, &stored)?;
                    let next = (sequence < head && pending > 0).then_some(messages);
                    if filter.matches(&event) {
                        return Ok(Some((event, next)));
                    }
                    match next {
                        Some(m) => messages = m,
                        None => return Ok(None),
                    }
                }
            }
        });
        Ok(events.boxed())
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

    async fn stream_position(&self, stream: &StreamId) -> Result<StreamPosition, StoreError> {
        let subject = self.stored_subject_or_invalid(stream)?;
        Ok(self
            .inner
            .last(&subject)
            .await?
            .map_or_else(StreamPosition::default, |e| e.stream_position()))
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
            .map_err(|e| unavailable(OP, chain_text(&e)))?;
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
                .map_err(|e| unavailable(OP, chain_text(&e)))?;
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
                .map_err(|e| unavailable(OP, chain_text(&*e)))?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_versions() {
        assert_eq!(parse_server_version("2.12.8"), Some((2, 12, 8)));
        assert_eq!(parse_server_version("v2.14.0-RC.1"), Some((2, 14, 0)));
        assert_eq!(parse_server_version("2.9"), Some((2, 9, 0)));
        assert_eq!(parse_server_version("junk"), None);
        assert!(parse_server_version("2.12.0") < Some(MIN_SERVER_VERSION));
        assert!(parse_server_version("2.15.1") >= Some(MIN_SERVER_VERSION));
    }

    #[test]
    fn stream_config_differences_are_reported() {
        let config = StoreConfig::new("sales");
        let want = config.stream_config();
        assert!(config_differences(&want, &want).is_empty());
        let mut have = want.clone();
        have.deny_delete = false;
        have.max_messages_per_subject = 1;
        let diffs = config_differences(&want, &have);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].starts_with("deny_delete"));
        have = want.clone();
        have.compression = None;
        assert!(config_differences(&want, &have).is_empty(), "none is no compression");
        have.compression = Some(stream::Compression::S2);
        assert!(config_differences(&want, &have)[0].starts_with("compression"));
    }

    #[test]
    fn conflict_codes_are_conflicts() {
        assert!(matches!(
            classify_code(10071, String::new()),
            Failure::Conflict
        ));
        assert!(matches!(
            classify_code(10164, String::new()),
            Failure::Conflict
        ));
        assert!(matches!(
            classify_code(10201, String::new()),
            Failure::DuplicateBatch
        ));
        assert!(matches!(
            classify_code(10158, String::new()),
            Failure::Busy(_)
        ));
        assert!(matches!(
            classify_code(10210, String::new()),
            Failure::Busy(_)
        ));
    }
}
