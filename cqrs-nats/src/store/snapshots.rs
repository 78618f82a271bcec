//! The snapshot bucket, read and written through the two subject-scoped JetStream operations a
//! KV bucket is made of, so that a tenant needs grants on its own keys only and no stream-level
//! API: the last message of `$KV.<bucket>.<key>` by direct get (the key in the API subject), and a
//! publish to `$KV.<bucket>.<key>` with `Nats-Expected-Last-Subject-Sequence` set to the revision
//! read (compare-and-set; 0 creates).
//!
//! The bucket's stream is made with roll-ups refused and purges denied (see
//! [`harden`]): with async-nats' defaults a publish to one's own key carrying
//! `Nats-Rollup: all` would purge every tenant's snapshots.

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DirectGetErrorKind};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;

/// One key's current entry.
pub(super) struct Entry {
    pub(super) value: Bytes,
    pub(super) revision: u64,
    /// A delete or purge marker, not a value.
    pub(super) deleted: bool,
}

/// How a compare-and-set write ended.
pub(super) enum Write {
    Written,
    /// The key changed since the revision read.
    Raced,
}

/// The context's snapshot bucket, addressed without asking the server for its configuration.
pub(super) struct SnapshotBucket {
    js: jetstream::Context,
    stream: stream::Stream<()>,
    bucket: String,
}

impl SnapshotBucket {
    pub(super) async fn new(
        js: &jetstream::Context,
        bucket: &str,
    ) -> Result<Self, jetstream::context::GetStreamError> {
        // No request: only the name is checked.
        let stream = js
            .get_stream_no_info(crate::layout::kv_stream(bucket))
            .await?;
        Ok(Self {
            js: js.clone(),
            stream,
            bucket: bucket.to_owned(),
        })
    }

    /// The subject of `key`.
    pub(super) fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }

    /// The subjects reading and writing `key` use, for the permission guard.
    pub(super) fn guarded_subjects(&self, key: &str) -> [String; 2] {
        let subject = self.subject(key);
        [
            crate::permissions::api::direct_get_last(
                &crate::layout::kv_stream(&self.bucket),
                &subject,
            ),
            subject,
        ]
    }

    /// The current entry of `key`, `None` if it has none.
    pub(super) async fn entry(&self, key: &str) -> Result<Option<Entry>, stream::DirectGetError> {
        match self
            .stream
            .direct_get_last_for_subject(self.subject(key))
            .await
        {
            Ok(message) => {
                let deleted = message
                    .headers
                    .get_last("KV-Operation")
                    .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
                Ok(Some(Entry {
                    value: message.payload,
                    revision: message.sequence,
                    deleted,
                }))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` under `key` if the key is still at `revision` (0: has no entry).
    pub(super) async fn write(
        &self,
        key: &str,
        value: Bytes,
        revision: u64,
    ) -> Result<Write, async_nats::Error> {
        let publish = PublishMessage::build()
            .payload(value)
            .expected_last_subject_sequence(revision);
        let ack = self.js.send_publish(self.subject(key), publish).await?;
        match ack.await {
            Ok(_) => Ok(Write::Written),
            Err(e)
                if super::failure::jetstream_code(&e).is_some_and(super::failure::is_conflict) =>
            {
                Ok(Write::Raced)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// What the bucket's stream must refuse: roll-ups (a `Nats-Rollup: all` on any key purges the
/// whole bucket) and purges. Returns the configuration to update to, `None` when it is fine.
pub(super) fn harden(have: &stream::Config) -> Option<stream::Config> {
    if !have.allow_rollup && have.deny_purge {
        return None;
    }
    let mut want = have.clone();
    want.allow_rollup = false;
    want.deny_purge = true;
    Some(want)
}

/// The snapshot bucket's configuration when created.
pub(super) fn bucket_config(bucket: &str, context: &str, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: bucket.to_owned(),
        description: format!("Aggregate snapshots of context {context}"),
        history: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    }
}
