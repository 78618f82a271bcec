//! A projection's checkpoints: one KV entry per partition, `<projection>.<partition>` in the
//! bucket `PROJECTION_CHECKPOINTS_<CONTEXT>` ([`checkpoints_bucket`]), holding the last position
//! handled, the worker that owns the partition, and the partition's filter subjects.
//!
//! Every write is a compare-and-set on the revision the writer read, so the revision is the
//! fencing token: a worker that takes a partition writes it (and so moves the revision), and the
//! worker it took the partition from can no longer commit anything. A reset or a rebuild writes
//! (or deletes) the entry the same way, which the running owner sees as losing the partition.

use crate::subject::Subjects;
use async_nats::jetstream::kv::{self, UpdateErrorKind};
use async_nats::jetstream::{self, stream};
use cqrs_core::StoreError;
use futures::TryStreamExt;
use std::collections::BTreeMap;

use super::unavailable_because;

/// One partition's checkpoint, as stored (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// The last stream position handled (0: none yet; the partition starts at the next one).
    pub position: u64,
    /// The worker that owns the partition now; absent once released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The filter subjects the partition is read with (what the lag counts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<String>,
}

/// A checkpoint as read: its value (none: never written, or deleted by a rebuild) and the
/// revision to compare-and-set against (0: the key has never been written).
#[derive(Debug, Clone, Default)]
pub(super) struct Read {
    pub(super) checkpoint: Option<Checkpoint>,
    pub(super) revision: u64,
}

/// The KV bucket holding the checkpoints of the context's projections:
/// `PROJECTION_CHECKPOINTS_<CONTEXT>`.
pub fn checkpoints_bucket(subjects: &Subjects) -> String {
    crate::layout::checkpoints_bucket(subjects.context())
}

/// The checkpoints of one projection.
#[derive(Clone)]
pub(super) struct Checkpoints {
    kv: kv::Store,
    projection: String,
}

impl Checkpoints {
    /// Opens (or creates, with `replicas` replicas) the context's checkpoints bucket.
    pub(super) async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        projection: &str,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let bucket = checkpoints_bucket(subjects);
        let kv = crate::bucket::open_or_create(
            js,
            kv::Config {
                bucket: bucket.clone(),
                description: format!(
                    "Checkpoints of the projections of context {}",
                    subjects.context()
                ),
                // No older revision to fall back to: a checkpoint only moves by compare-and-set.
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| unavailable_because(format!("bucket {bucket}"), e))?;
        Ok(Self {
            kv,
            projection: projection.to_owned(),
        })
    }

    /// The existing checkpoints of `projection` in `subjects`' context, or `None` when the
    /// bucket does not exist (no projection has run there). Creates nothing.
    pub(super) async fn existing(
        js: &jetstream::Context,
        subjects: &Subjects,
        projection: &str,
    ) -> Result<Option<Self>, StoreError> {
        let bucket = checkpoints_bucket(subjects);
        let kv = crate::bucket::open_existing(js, &bucket)
            .await
            .map_err(|e| unavailable_because(format!("bucket {bucket}"), e))?;
        Ok(kv.map(|kv| Self {
            kv,
            projection: projection.to_owned(),
        }))
    }

    /// The checkpoints of projection `projection` in the same bucket.
    pub(super) fn of(&self, projection: &str) -> Self {
        Self {
            kv: self.kv.clone(),
            projection: projection.to_owned(),
        }
    }

    pub(super) fn key(&self, partition: u32) -> String {
        format!("{}.{partition}", self.projection)
    }

    /// The partition a key of this projection names, if it is one.
    pub(super) fn partition_of(&self, key: &str) -> Option<u32> {
        key.strip_prefix(&self.projection)?
            .strip_prefix('.')?
            .parse()
            .ok()
    }

    /// The bucket, for watching.
    pub(super) fn kv(&self) -> &kv::Store {
        &self.kv
    }

    /// Reads `partition`'s checkpoint.
    pub(super) async fn read(&self, partition: u32) -> Result<Read, StoreError> {
        let key = self.key(partition);
        let entry = self
            .kv
            .entry(key.as_str())
            .await
            .map_err(|e| unavailable_because(format!("checkpoint {key}"), e))?;
        Ok(entry.map_or_else(Read::default, |entry| Read {
            checkpoint: decode(&entry),
            revision: entry.revision,
        }))
    }

    /// Writes `checkpoint` if the entry is still at `revision`: the new revision, or `None` when
    /// it moved (another worker took the partition, or it was reset).
    pub(super) async fn write(
        &self,
        partition: u32,
        checkpoint: &Checkpoint,
        revision: u64,
    ) -> Result<Option<u64>, StoreError> {
        let key = self.key(partition);
        let value = serde_json::to_vec(checkpoint).map_err(|e| StoreError::Backend {
            operation: super::OP,
            source: Box::new(e),
        })?;
        match self.kv.update(key.as_str(), value.into(), revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unavailable_because(format!("checkpoint {key}"), e)),
        }
    }

    /// Sets `partition`'s checkpoint to `position`, whoever owns it (a reset): the owner sees its
    /// revision move and starts again from here.
    pub(super) async fn reset(&self, partition: u32, position: u64) -> Result<(), StoreError> {
        loop {
            let read = self.read(partition).await?;
            let checkpoint = Checkpoint {
                position,
                owner: None,
                filter: read.checkpoint.map(|c| c.filter).unwrap_or_default(),
            };
            if self
                .write(partition, &checkpoint, read.revision)
                .await?
                .is_some()
            {
                return Ok(());
            }
        }
    }

    /// The checkpoints of the projection's `partitions` partitions that exist.
    pub(super) async fn read_all(
        &self,
        partitions: u32,
    ) -> Result<BTreeMap<u32, Checkpoint>, StoreError> {
        let mut all = BTreeMap::new();
        for partition in 0..partitions {
            if let Some(checkpoint) = self.read(partition).await?.checkpoint {
                all.insert(partition, checkpoint);
            }
        }
        Ok(all)
    }

    /// Deletes `partition`'s checkpoint (a rebuild starts it over). True if there was one.
    pub(super) async fn delete(&self, partition: u32) -> Result<bool, StoreError> {
        let read = self.read(partition).await?;
        if read.checkpoint.is_none() {
            return Ok(false);
        }
        let key = self.key(partition);
        self.kv
            .purge(key.as_str())
            .await
            .map_err(|e| unavailable_because(format!("checkpoint {key}"), e))?;
        Ok(true)
    }
}

/// The entry naming the live version of projection `base`: `<base>.live` in the checkpoints
/// bucket (no partition key ends in `live`).
pub(super) fn live_key(base: &str) -> String {
    format!("{base}.live")
}

/// A projection's live version, as the entry `<projection>.live` in the checkpoints bucket
/// records it (JSON): the version readers read and, while a switch-over is under way, the
/// version it switches to (the live version's runners pause while it is set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveVersion {
    /// The version readers read.
    pub version: u32,
    /// The version a switch-over under way switches to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u32>,
}

impl LiveVersion {
    /// What an entry of [`live_key`] says (version 1 for none, deleted or unreadable).
    pub(super) fn of(entry: Option<&kv::Entry>) -> Self {
        entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| serde_json::from_slice::<Self>(&e.value).ok())
            .unwrap_or(Self {
                version: 1,
                next: None,
            })
    }

    /// Whether runners of `version` must stop: a later version is live or being switched to.
    pub(super) fn retires(self, version: u32) -> bool {
        self.version > version || self.next.is_some_and(|next| next > version)
    }
}

/// The live version of projection `base` and the revision of its entry (0: none written).
pub(super) async fn read_live(
    kv: &kv::Store,
    base: &str,
) -> Result<(LiveVersion, u64), StoreError> {
    let key = live_key(base);
    let entry = kv
        .entry(key.as_str())
        .await
        .map_err(|e| unavailable_because(format!("live version {key}"), e))?;
    Ok((
        LiveVersion::of(entry.as_ref()),
        entry.map_or(0, |e| e.revision),
    ))
}

/// Writes `live` for `base` if the entry is still at `revision`: the new revision, or `None`
/// when it moved.
pub(super) async fn write_live(
    kv: &kv::Store,
    base: &str,
    live: LiveVersion,
    revision: u64,
) -> Result<Option<u64>, StoreError> {
    let key = live_key(base);
    let value = serde_json::to_vec(&live).map_err(|e| StoreError::Backend {
        operation: super::OP,
        source: Box::new(e),
    })?;
    match kv.update(key.as_str(), value.into(), revision).await {
        Ok(revision) => Ok(Some(revision)),
        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
        Err(e) => Err(unavailable_because(format!("live version {key}"), e)),
    }
}

/// The recorded live versions of the context's projections, by projection name (a projection
/// never switched over has none: its version 1 is live). Only reads; empty without a bucket.
pub async fn read_live_versions(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<BTreeMap<String, LiveVersion>, StoreError> {
    let Some((kv, keys)) = existing_keys(js, subjects).await? else {
        return Ok(BTreeMap::new());
    };
    let mut all = BTreeMap::new();
    for base in keys.iter().filter_map(|key| key.strip_suffix(".live")) {
        all.insert(base.to_owned(), read_live(&kv, base).await?.0);
    }
    Ok(all)
}

/// The context's checkpoints bucket and its keys, if the bucket exists (never creates it). A
/// listing misses keys updated while it runs: read what it finds by key.
async fn existing_keys(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<Option<(kv::Store, Vec<String>)>, StoreError> {
    let bucket = checkpoints_bucket(subjects);
    let Some(kv) = crate::bucket::open_existing(js, &bucket)
        .await
        .map_err(|e| unavailable_because(format!("bucket {bucket}"), e))?
    else {
        return Ok(None);
    };
    let keys: Vec<String> = match kv.keys().await {
        Ok(keys) => keys
            .try_collect()
            .await
            .map_err(|e| unavailable_because("listing the checkpoints", e))?,
        Err(e) => return Err(unavailable_because(format!("bucket {bucket}"), e)),
    };
    Ok(Some((kv, keys)))
}

fn decode(entry: &kv::Entry) -> Option<Checkpoint> {
    if entry.operation != kv::Operation::Put {
        return None;
    }
    match serde_json::from_slice(&entry.value) {
        Ok(checkpoint) => Some(checkpoint),
        Err(error) => {
            // Not ours to read: start the partition over rather than stall it.
            tracing::warn!(key = %entry.key, %error, "unreadable checkpoint; treating it as absent");
            None
        }
    }
}

/// Every checkpoint in the context's bucket, by projection and partition (empty when the
/// bucket does not exist). Only reads; the CLI's `projections` lists these. The projections are
/// found by listing the bucket's keys; each one's partitions are then read one by one, so that
/// a checkpoint committed while the keys were listed is not missed.
pub async fn read_checkpoints(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<BTreeMap<String, BTreeMap<u32, Checkpoint>>, StoreError> {
    let Some((kv, keys)) = existing_keys(js, subjects).await? else {
        return Ok(BTreeMap::new());
    };
    let projections: std::collections::BTreeSet<&str> = keys
        .iter()
        .filter_map(|key| key.rsplit_once('.'))
        .filter(|(_, partition)| partition.parse::<u32>().is_ok())
        .map(|(projection, _)| projection)
        .collect();
    let mut all = BTreeMap::new();
    for projection in projections {
        let checkpoints = Checkpoints {
            kv: kv.clone(),
            projection: projection.to_owned(),
        }
        .read_all(subjects.partitions())
        .await?;
        if !checkpoints.is_empty() {
            all.insert(projection.to_owned(), checkpoints);
        }
    }
    Ok(all)
}
