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
    #[error("read model `{key}` could not be (de)serialised: {source}")]
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
    #[error("read model store failed during {operation}: {source}")]
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
