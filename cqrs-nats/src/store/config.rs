//! [`StoreConfig`]: what a store provisions, and how an existing stream is checked against it.

use crate::subject::Subjects;
use async_nats::jetstream::stream;
use std::time::Duration;

/// The oldest nats-server the store runs on: atomic batches with `Nats-Msg-Id` (2.12.1).
pub const MIN_SERVER_VERSION: (u64, u64, u64) = (2, 12, 1);
pub(super) const MIN_SERVER_VERSION_TEXT: &str = "2.12.1";

/// Most events one append can carry: the server's atomic batch limit.
pub const MAX_BATCH: usize = 1000;

/// Settings of a [`JetStreamEventStore`](super::JetStreamEventStore).
#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)] // independent switches, each set by its own method
pub struct StoreConfig {
    pub(super) context: String,
    pub(super) replicas: usize,
    pub(super) duplicate_window: Duration,
    pub(super) any_version_retries: u32,
    pub(super) load_batch: usize,
    pub(super) request_timeout: Duration,
    pub(super) partitions: u32,
    pub(super) scoped_reads: bool,
    pub(super) create_missing: bool,
    pub(super) compressed: bool,
    pub(super) linearizable_refusals: bool,
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
            linearizable_refusals: false,
        }
    }

    /// Whether opening the store creates the context's stream and snapshot bucket when they are
    /// missing (the default). With `false` the store only attaches to what exists, which suits
    /// tools that must not change a server by looking at it (the `cqrs` CLI opens stores this
    /// way): a missing stream is [`ConnectError::ContextNotFound`](crate::ConnectError::ContextNotFound), and a missing snapshot
    /// bucket means no snapshots (loading finds none, saving fails with a typed error, which a
    /// [`Repository`](cqrs_core::Repository) only logs).
    pub fn create_missing(mut self, create: bool) -> Self {
        self.create_missing = create;
        self
    }

    /// Partitions of the context's stream (clamped to 1 to 1024, default
    /// [`DEFAULT_PARTITIONS`](crate::subject::DEFAULT_PARTITIONS)): the most workers one
    /// projection can spread over. Fixed when the stream is created; connecting with another
    /// count to an existing stream is a [`ConnectError::StreamConflict`](crate::ConnectError::StreamConflict).
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
    /// is a [`ConnectError::StreamConflict`](crate::ConnectError::StreamConflict). `examples/bench.rs` measures what it costs and
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

    /// How often an [`ExpectedVersion::Any`](cqrs_core::ExpectedVersion::Any) append is retried when another writer got in first.
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

    /// Whether a command is refused (or answered with nothing to write) only on a state the
    /// stream's quorum confirms, rather than its leader's word (off by default).
    ///
    /// The repository answers a refusal only on the aggregate's current state: it asks the
    /// store's authority for the aggregate's version first. On a replicated stream the leader
    /// is not enough for a client connected to a leader cut off from its cluster: that leader
    /// answers from its old state until it notices (7–18 s measured), so the command is
    /// refused by a state the other side has moved past (unless it carries a
    /// [`seen_position`](cqrs_core::CommandMetadata::seen_position) past it, as a process
    /// manager's commands do). With this on, the store confirms the loaded state with a
    /// write — a read guard's carrier expecting the aggregate's last sequence (see
    /// `store::confirm`) — which only a quorum can commit: on the cut-off side the command
    /// fails with a retryable `Unavailable` instead. Costs one replicated publish per refusal
    /// (in place of the leader read), a stream sequence number and a message that expires after
    /// a second. A single-replica stream has no other copy to be cut off from: its leader is
    /// the authority already.
    pub fn linearizable_refusals(mut self, linearizable: bool) -> Self {
        self.linearizable_refusals = linearizable;
        self
    }

    /// The stream name of the context: `EVENTS_<CONTEXT>`.
    pub fn stream_name(&self) -> String {
        crate::layout::events_stream(&self.context)
    }

    /// The snapshot bucket of the context: `SNAPSHOTS_<CONTEXT>`.
    pub fn bucket_name(&self) -> String {
        crate::layout::snapshots_bucket(&self.context)
    }

    /// The configuration the context's stream is created with and checked against.
    pub fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.stream_name(),
            subjects: vec![
                format!("{}.events.*.*.*", self.context),
                format!("{}.guards.*", self.context),
            ],
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
            // Read guards' carriers expire on their own (`Nats-TTL`).
            allow_message_ttl: true,
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

/// What the differences between a wanted and an existing stream config are.
pub(super) fn config_differences(want: &stream::Config, have: &stream::Config) -> Vec<String> {
    let mut diffs = Vec::new();
    let check =
        |diffs: &mut Vec<String>, field: &str, ok: bool, expected: String, found: String| {
            if !ok {
                diffs.push(format!("{field}: expected {expected}, found {found}"));
            }
        };
    same(&mut diffs, "subjects", &want.subjects, &have.subjects);
    check(
        &mut diffs,
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
    same(&mut diffs, "storage", &want.storage, &have.storage);
    same(&mut diffs, "retention", &want.retention, &have.retention);
    same(
        &mut diffs,
        "num_replicas",
        &want.num_replicas,
        &have.num_replicas,
    );
    for (field, want_flag, have_flag) in [
        (
            "allow_atomic",
            want.allow_atomic_publish,
            have.allow_atomic_publish,
        ),
        ("allow_direct", want.allow_direct, have.allow_direct),
        (
            "allow_msg_ttl",
            want.allow_message_ttl,
            have.allow_message_ttl,
        ),
        ("deny_delete", want.deny_delete, have.deny_delete),
        ("deny_purge", want.deny_purge, have.deny_purge),
    ] {
        same(&mut diffs, field, &want_flag, &have_flag);
    }
    // A stream created without the field reports no compression.
    let compression =
        |c: &Option<stream::Compression>| c.clone().unwrap_or(stream::Compression::None);
    same(
        &mut diffs,
        "compression",
        &compression(&want.compression),
        &compression(&have.compression),
    );
    same(
        &mut diffs,
        "duplicate_window",
        &want.duplicate_window,
        &have.duplicate_window,
    );
    for (field, value) in [
        ("max_msgs_per_subject", have.max_messages_per_subject),
        ("max_msgs", have.max_messages),
        ("max_bytes", have.max_bytes),
    ] {
        check(
            &mut diffs,
            field,
            value <= 0,
            "unlimited".to_owned(),
            value.to_string(),
        );
    }
    check(
        &mut diffs,
        "max_age",
        have.max_age.is_zero(),
        "unlimited".to_owned(),
        format!("{:?}", have.max_age),
    );
    diffs
}

/// `have` with what later versions added to a context's stream, if it lacks any: the read
/// guards' carrier subject and per-message TTLs. Both are additive (existing messages and
/// readers are untouched; the server refuses only to switch TTLs off again), so an older stream
/// is updated in place rather than refused.
pub(super) fn with_additions(
    want: &stream::Config,
    have: &stream::Config,
) -> Option<stream::Config> {
    let mut updated = have.clone();
    for subject in &want.subjects {
        if !updated.subjects.contains(subject) {
            updated.subjects.push(subject.clone());
        }
    }
    updated.allow_message_ttl |= want.allow_message_ttl;
    (updated != *have).then_some(updated)
}

/// Records a difference when `want` and `have` differ.
fn same<T: PartialEq + std::fmt::Debug>(diffs: &mut Vec<String>, field: &str, want: &T, have: &T) {
    if want != have {
        diffs.push(format!("{field}: expected {want:?}, found {have:?}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            config_differences(&want, &have).is_empty(),
            "none is no compression"
        );
        have.compression = Some(stream::Compression::S2);
        assert!(config_differences(&want, &have)[0].starts_with("compression"));
    }
}
