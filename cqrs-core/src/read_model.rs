//! Read-model storage with compare-and-set, and the position check that makes applying an event
//! idempotent and monotonic.
//!
//! Projections are delivered events at least once. Each stored entry remembers the store
//! position of the last event applied to it; [`apply_once`] skips an event at or below that
//! position, so a redelivered event is never applied twice and an entry never moves backwards.
//! Because delivery is ordered per aggregate (not across aggregates when several workers share a
//! projection), feed each entry from one aggregate, or run the projection on one worker.

use crate::error::BoxError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

/// A stored read-model entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<V> {
    /// The value.
    pub value: V,
    /// Store position of the last event applied to it.
    pub position: u64,
    /// Revision of the entry, for compare-and-set.
    pub revision: u64,
}

/// Why a read-model operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadModelError {
    /// Another writer changed the entry since it was read. Read it again and retry.
    #[error(
        "read model `{key}` changed concurrently (expected revision {expected:?}); read it again and retry"
    )]
    Conflict {
        /// The entry's key.
        key: String,
        /// The revision the writer expected (`None`: the entry must not exist).
        expected: Option<u64>,
    },
    /// The stored value could not be (de)serialised.
    #[error("read model `{key}` could not be (de)serialised")]
    Codec {
        /// The entry's key.
        key: String,
        /// The codec's error.
        #[source]
        source: serde_json::Error,
    },
    /// The key cannot be stored by this backend.
    #[error("read model key `{key}` is not valid here: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The backend failed.
    #[error("read model store failed during {operation}")]
    Backend {
        /// What was attempted.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

/// Storage for read-model entries of type `V` with compare-and-set on a revision.
pub trait ReadModelStore<V>: Send + Sync + 'static {
    /// The entry under `key`, if any.
    fn get(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Versioned<V>>, ReadModelError>> + Send;

    /// Writes `value` as of event `position` if the entry's revision is still
    /// `expected_revision` (`None`: the entry must not exist). Returns the new revision.
    fn put(
        &self,
        key: &str,
        value: V,
        position: u64,
        expected_revision: Option<u64>,
    ) -> impl Future<Output = Result<u64, ReadModelError>> + Send;

    /// Every key with its entry, for inspection and tests.
    fn entries(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, Versioned<V>)>, ReadModelError>> + Send;

    /// Makes each of `writes` as [`Self::put`] would, all in one go: one outcome per write, in
    /// order. Each write stands alone — a conflict on one key neither undoes nor stops the
    /// others. The default puts them one after the other; a store overrides it to save round
    /// trips (the KV store sends them all before awaiting any answer).
    fn put_batch(
        &self,
        writes: Vec<Write<V>>,
    ) -> impl Future<Output = Vec<Result<u64, ReadModelError>>> + Send
    where
        V: Send,
    {
        async move {
            let mut outcomes = Vec::with_capacity(writes.len());
            for write in writes {
                outcomes.push(
                    self.put(
                        &write.key,
                        write.value,
                        write.position,
                        write.expected_revision,
                    )
                    .await,
                );
            }
            outcomes
        }
    }
}

/// One write of [`ReadModelStore::put_batch`]: the arguments of [`ReadModelStore::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write<V> {
    /// The entry's key.
    pub key: String,
    /// The value to store.
    pub value: V,
    /// The store position of the last event the value reflects.
    pub position: u64,
    /// The revision the entry must still have (`None`: it must not exist).
    pub expected_revision: Option<u64>,
}

/// What [`apply_once`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry was written at this revision.
    Written(u64),
    /// The event was at or below the entry's position: already applied, nothing written.
    AlreadyApplied,
}

/// Applies the event at `position` to the entry under `key` exactly once: skips it when the
/// entry already reflects that position, otherwise writes `update(old value)` with
/// compare-and-set, retrying a few times when another writer raced.
pub async fn apply_once<V, S, F>(
    store: &S,
    key: &str,
    position: u64,
    mut update: F,
) -> Result<Applied, ReadModelError>
where
    V: Send,
    S: ReadModelStore<V> + ?Sized,
    F: FnMut(Option<V>) -> V + Send,
{
    const ATTEMPTS: u32 = 8;
    let mut attempt = 0;
    loop {
        let current = store.get(key).await?;
        let (old, revision) = match current {
            Some(entry) if entry.position >= position => return Ok(Applied::AlreadyApplied),
            Some(entry) => (Some(entry.value), Some(entry.revision)),
            None => (None, None),
        };
        match store.put(key, update(old), position, revision).await {
            Ok(revision) => return Ok(Applied::Written(revision)),
            Err(ReadModelError::Conflict { .. }) if attempt + 1 < ATTEMPTS => attempt += 1,
            Err(error) => return Err(error),
        }
    }
}

/// [`apply_once`] for a batch of events, for [`Projection::apply_batch`](crate::Projection::apply_batch):
/// `items` are `(key, position, event)` in delivery order. The events of one key are folded
/// with `update` into one write (those at or below the entry's position skipped, as
/// [`apply_once`] skips them), and the writes of all keys go out together through
/// [`ReadModelStore::put_batch`]; a key another writer changed meanwhile is read and folded
/// again, a few times. Returns how many events were applied.
pub async fn apply_once_batch<V, S, T, F>(
    store: &S,
    items: impl IntoIterator<Item = (String, u64, T)>,
    mut update: F,
) -> Result<usize, ReadModelError>
where
    V: Send,
    S: ReadModelStore<V> + ?Sized,
    F: FnMut(Option<V>, &T) -> V,
{
    const ATTEMPTS: u32 = 8;
    let mut by_key: Vec<(String, Vec<(u64, T)>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (key, position, item) in items {
        let at = *index.entry(key.clone()).or_insert_with(|| {
            by_key.push((key, Vec::new()));
            by_key.len() - 1
        });
        by_key[at].1.push((position, item));
    }
    let mut pending: Vec<usize> = (0..by_key.len()).collect();
    let mut applied = 0;
    for attempt in 1..=ATTEMPTS {
        let mut writes = Vec::with_capacity(pending.len());
        let mut written = Vec::with_capacity(pending.len());
        for at in pending.drain(..) {
            let (key, events) = &by_key[at];
            let current = store.get(key).await?;
            let (mut value, floor, revision) = match current {
                Some(entry) => (Some(entry.value), entry.position, Some(entry.revision)),
                None => (None, 0, None),
            };
            let mut fresh = 0;
            let mut position = floor;
            for (at_position, event) in events {
                if *at_position > position {
                    value = Some(update(value, event));
                    position = *at_position;
                    fresh += 1;
                }
            }
            if let Some(value) = value.filter(|_| fresh > 0) {
                writes.push(Write {
                    key: key.clone(),
                    value,
                    position,
                    expected_revision: revision,
                });
                written.push((at, fresh));
            }
        }
        for ((at, fresh), outcome) in written.into_iter().zip(store.put_batch(writes).await) {
            match outcome {
                Ok(_) => applied += fresh,
                Err(ReadModelError::Conflict { .. }) if attempt < ATTEMPTS => pending.push(at),
                Err(error) => return Err(error),
            }
        }
        if pending.is_empty() {
            break;
        }
    }
    Ok(applied)
}

/// An in-memory [`ReadModelStore`]; cloning shares it.
#[derive(Debug)]
pub struct InMemoryReadModelStore<V> {
    entries: Arc<Mutex<HashMap<String, Versioned<V>>>>,
}

impl<V> Clone for InMemoryReadModelStore<V> {
    fn clone(&self) -> Self {
        Self {
            entries: Arc::clone(&self.entries),
        }
    }
}

impl<V> Default for InMemoryReadModelStore<V> {
    fn default() -> Self {
        Self {
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<V> InMemoryReadModelStore<V> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<V: Clone + Send + Sync + 'static> ReadModelStore<V> for InMemoryReadModelStore<V> {
    async fn get(&self, key: &str) -> Result<Option<Versioned<V>>, ReadModelError> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(entries.get(key).cloned())
    }

    async fn put(
        &self,
        key: &str,
        value: V,
        position: u64,
        expected_revision: Option<u64>,
    ) -> Result<u64, ReadModelError> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let current = entries.get(key).map(|e| e.revision);
        if current != expected_revision {
            return Err(ReadModelError::Conflict {
                key: key.to_owned(),
                expected: expected_revision,
            });
        }
        let revision = current.map_or(1, |r| r + 1);
        entries.insert(
            key.to_owned(),
            Versioned {
                value,
                position,
                revision,
            },
        );
        Ok(revision)
    }

    async fn put_batch(&self, writes: Vec<Write<V>>) -> Vec<Result<u64, ReadModelError>> {
        // One lock for the whole batch: no reader sees half of it.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        writes
            .into_iter()
            .map(|write| {
                let current = entries.get(&write.key).map(|e| e.revision);
                if current != write.expected_revision {
                    return Err(ReadModelError::Conflict {
                        key: write.key,
                        expected: write.expected_revision,
                    });
                }
                let revision = current.map_or(1, |r| r + 1);
                entries.insert(
                    write.key,
                    Versioned {
                        value: write.value,
                        position: write.position,
                        revision,
                    },
                );
                Ok(revision)
            })
            .collect()
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned<V>)>, ReadModelError> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = entries
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::trivially_copy_pass_by_ref)] // the shape `apply_once_batch` asks for
    fn add(old: Option<u32>, n: &u32) -> u32 {
        old.unwrap_or(0) + n
    }

    #[tokio::test]
    async fn a_batch_writes_each_key_once_and_skips_what_is_applied() {
        let store = InMemoryReadModelStore::<u32>::new();
        apply_once(&store, "a", 2, |_| 100).await.unwrap();
        let items: Vec<(String, u64, u32)> = vec![
            ("a".into(), 1, 1),
            ("b".into(), 3, 5),
            ("a".into(), 4, 10),
            ("b".into(), 5, 7),
            ("a".into(), 6, 20),
        ];
        assert_eq!(
            apply_once_batch(&store, items.clone(), add).await.unwrap(),
            4
        );
        let a = store.get("a").await.unwrap().unwrap();
        let b = store.get("b").await.unwrap().unwrap();
        // One write per key: a's revision moved from 1 to 2, b was created at 1.
        assert_eq!((a.value, a.position, a.revision), (130, 6, 2));
        assert_eq!((b.value, b.position, b.revision), (12, 5, 1));
        // Delivered again: nothing applied, nothing written.
        assert_eq!(apply_once_batch(&store, items, add).await.unwrap(), 0);
        assert_eq!(store.get("a").await.unwrap().unwrap().revision, 2);
    }

    /// Another writer puts `a` at position 3 just before the batch's writes go out.
    struct Racing {
        inner: InMemoryReadModelStore<u32>,
        raced: std::sync::atomic::AtomicBool,
    }

    impl ReadModelStore<u32> for Racing {
        async fn get(&self, key: &str) -> Result<Option<Versioned<u32>>, ReadModelError> {
            self.inner.get(key).await
        }
        async fn put(
            &self,
            key: &str,
            value: u32,
            position: u64,
            expected_revision: Option<u64>,
        ) -> Result<u64, ReadModelError> {
            self.inner
                .put(key, value, position, expected_revision)
                .await
        }
        async fn entries(&self) -> Result<Vec<(String, Versioned<u32>)>, ReadModelError> {
            self.inner.entries().await
        }
        async fn put_batch(&self, writes: Vec<Write<u32>>) -> Vec<Result<u64, ReadModelError>> {
            if !self.raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
                self.inner.put("a", 1000, 3, None).await.unwrap();
            }
            self.inner.put_batch(writes).await
        }
    }

    #[tokio::test]
    async fn a_batch_key_that_raced_is_read_and_folded_again() {
        let store = Racing {
            inner: InMemoryReadModelStore::new(),
            raced: std::sync::atomic::AtomicBool::new(false),
        };
        let items: Vec<(String, u64, u32)> = vec![("a".into(), 2, 1), ("a".into(), 5, 10)];
        // The racer's write at 3 covers the event at 2; only the one at 5 is applied on top.
        assert_eq!(apply_once_batch(&store, items, add).await.unwrap(), 1);
        let a = store.get("a").await.unwrap().unwrap();
        assert_eq!((a.value, a.position), (1010, 5));
    }

    #[tokio::test]
    async fn redelivered_and_older_events_are_skipped() {
        let store = InMemoryReadModelStore::<u32>::new();
        let add = |n: u32| move |old: Option<u32>| old.unwrap_or(0) + n;
        assert_eq!(
            apply_once(&store, "k", 5, add(1)).await.unwrap(),
            Applied::Written(1)
        );
        assert_eq!(
            apply_once(&store, "k", 5, add(1)).await.unwrap(),
            Applied::AlreadyApplied
        );
        assert_eq!(
            apply_once(&store, "k", 3, add(1)).await.unwrap(),
            Applied::AlreadyApplied
        );
        assert_eq!(
            apply_once(&store, "k", 9, add(10)).await.unwrap(),
            Applied::Written(2)
        );
        let entry = store.get("k").await.unwrap().unwrap();
        assert_eq!((entry.value, entry.position, entry.revision), (11, 9, 2));
    }

    #[tokio::test]
    async fn compare_and_set_rejects_stale_revisions() {
        let store = InMemoryReadModelStore::<u32>::new();
        store.put("k", 1, 1, None).await.unwrap();
        let err = store.put("k", 2, 2, None).await.unwrap_err();
        assert!(matches!(err, ReadModelError::Conflict { .. }), "{err}");
        let err = store.put("k", 2, 2, Some(7)).await.unwrap_err();
        assert!(matches!(err, ReadModelError::Conflict { .. }), "{err}");
        assert_eq!(store.put("k", 2, 2, Some(1)).await.unwrap(), 2);
    }
}
