//! [`KvReadModelStore`]: a [`ReadModelStore`] on a JetStream key-value bucket.
//!
//! Each entry is one KV key holding the JSON `{"value": <V>, "position": <u64>}`; the KV
//! revision is the entry's revision, so compare-and-set is the server's
//! `Nats-Expected-Last-Subject-Sequence` check: a write expecting no entry is a KV `create`, a
//! write expecting revision `r` is a KV `update` at `r`. A lost race is
//! [`ReadModelError::Conflict`] (server codes 10071 and 10164 alike), so
//! [`cqrs_core::read_model::apply_once`] works unchanged and fences a worker that lags behind.
//!
//! Keys are arbitrary strings: they are encoded with the subject token codec
//! ([`crate::subject::encode_token`]), which keeps `.`, `*`, `>`, whitespace and non-ASCII out of
//! the KV key, and decoded exactly by [`ReadModelStore::entries`].

use crate::subject::{MAX_SUBJECT_LEN, decode_token, encode_token, validate_name};
use async_nats::jetstream::{self, kv, stream};
use cqrs_core::read_model::{ReadModelError, ReadModelStore, Versioned, Write};
use futures::TryStreamExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;

/// A read model stored in a JetStream KV bucket, with revision compare-and-set. Cloning shares
/// the bucket.
pub struct KvReadModelStore<V> {
    bucket: String,
    kv: kv::Store,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for KvReadModelStore<V> {
    fn clone(&self) -> Self {
        Self {
            bucket: self.bucket.clone(),
            kv: self.kv.clone(),
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for KvReadModelStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvReadModelStore")
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

/// The JSON stored under each key.
#[derive(Serialize, Deserialize)]
struct Stored<V> {
    value: V,
    position: u64,
}

fn backend(
    operation: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> ReadModelError {
    ReadModelError::Backend {
        operation,
        source: Box::new(source),
    }
}

/// Whether a JetStream "wrong last sequence" code (10071, or 10164 on clustered streams) is in
/// `error`'s source chain or text.
fn is_wrong_last_sequence(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(js) = e.downcast_ref::<jetstream::Error>()
            && matches!(js.error_code().0, 10071 | 10164)
        {
            return true;
        }
        let text = e.to_string();
        if text.contains("10071") || text.contains("10164") {
            return true;
        }
        current = e.source();
    }
    false
}

impl<V> KvReadModelStore<V> {
    /// Binds the bucket `bucket` (`[A-Za-z0-9_-]`, 1 to 64 characters), creating it (file
    /// storage, history 1, `replicas` replicas) if it does not exist.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, ReadModelError> {
        validate_name("bucket", bucket).map_err(|e| ReadModelError::InvalidKey {
            key: bucket.to_owned(),
            reason: e.to_string(),
        })?;
        let kv = crate::bucket::open_or_create(
            js,
            kv::Config {
                bucket: bucket.to_owned(),
                description: "cqrs read model".to_owned(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: replicas.max(1),
                ..Default::default()
            },
        )
        .await
        .map_err(|error| backend("create bucket", error))?;
        Ok(Self {
            bucket: bucket.to_owned(),
            kv,
            _value: PhantomData,
        })
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The KV key of read-model key `key`.
    fn kv_key(&self, key: &str) -> Result<String, ReadModelError> {
        let encoded = encode_token(key);
        // `$KV.<bucket>.<key>` must stay a publishable subject.
        let len = encoded.len() + self.bucket.len() + 5;
        if len > MAX_SUBJECT_LEN {
            return Err(ReadModelError::InvalidKey {
                key: key.to_owned(),
                reason: format!(
                    "its encoded KV subject would be {len} bytes, at most {MAX_SUBJECT_LEN} are allowed"
                ),
            });
        }
        Ok(encoded)
    }
}

impl<V> KvReadModelStore<V>
where
    V: DeserializeOwned,
{
    async fn read(&self, key: &str, kv_key: &str) -> Result<Option<Versioned<V>>, ReadModelError> {
        let entry = self.kv.entry(kv_key).await.map_err(|e| backend("get", e))?;
        let Some(entry) = entry else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let stored: Stored<V> =
            serde_json::from_slice(&entry.value).map_err(|source| ReadModelError::Codec {
                key: key.to_owned(),
                source,
            })?;
        Ok(Some(Versioned {
            value: stored.value,
            position: stored.position,
            revision: entry.revision,
        }))
    }
}

impl<V> ReadModelStore<V> for KvReadModelStore<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    async fn get(&self, key: &str) -> Result<Option<Versioned<V>>, ReadModelError> {
        let kv_key = self.kv_key(key)?;
        self.read(key, &kv_key).await
    }

    async fn put(
        &self,
        key: &str,
        value: V,
        position: u64,
        expected_revision: Option<u64>,
    ) -> Result<u64, ReadModelError> {
        let kv_key = self.kv_key(key)?;
        let body = serde_json::to_vec(&Stored { value, position }).map_err(|source| {
            ReadModelError::Codec {
                key: key.to_owned(),
                source,
            }
        })?;
        let conflict = || ReadModelError::Conflict {
            key: key.to_owned(),
            expected: expected_revision,
        };
        match expected_revision {
            None => match self.kv.create(&kv_key, body.into()).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(conflict()),
                Err(e) if is_wrong_last_sequence(&e) => Err(conflict()),
                Err(e) => Err(backend("create", e)),
            },
            Some(revision) => match self.kv.update(&kv_key, body.into(), revision).await {
                Ok(revision) => Ok(revision),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(conflict()),
                Err(e) if is_wrong_last_sequence(&e) => Err(conflict()),
                Err(e) => Err(backend("update", e)),
            },
        }
    }

    /// Sends every write before awaiting any answer: one round trip for the batch.
    async fn put_batch(&self, writes: Vec<Write<V>>) -> Vec<Result<u64, ReadModelError>> {
        futures::future::join_all(writes.into_iter().map(|write| async move {
            self.put(
                &write.key,
                write.value,
                write.position,
                write.expected_revision,
            )
            .await
        }))
        .await
    }

    async fn entries(&self) -> Result<Vec<(String, Versioned<V>)>, ReadModelError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|e| backend("list", e))?,
            Err(e) => return Err(backend("list", e)),
        };
        let mut all = Vec::with_capacity(keys.len());
        for kv_key in keys {
            let key = decode_token(&kv_key).map_err(|e| ReadModelError::InvalidKey {
                key: kv_key.clone(),
                reason: format!("not written by this store: {e}"),
            })?;
            if let Some(entry) = self.read(&key, &kv_key).await? {
                all.push((key, entry));
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}
