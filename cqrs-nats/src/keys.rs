//! The data subjects' keys of a context, in the KV bucket `KEYS_<CONTEXT>`: the JetStream
//! [`KeyStore`] of crypto-shredding ([`cqrs_core::personal`]).
//!
//! One key per data subject, under the subject encoded as a subject token
//! ([`crate::subject::encode_token`]); the value is `{"id": "<key id>", "key": "<base64 of 32
//! bytes>"}`. The bucket keeps history 1 and [`forget`](KeyStore::forget) purges the key, so no
//! older revision of it stays on the server. Two writers creating a subject's key at once meet
//! at the KV's create-if-absent: the loser reads the winner's key.
//!
//! The key material is stored as it is: whoever may read this bucket may read the personal data.
//! Grant it to the services that write and project the context, not to tenants or tools.

use crate::subject::encode_token;
use async_nats::jetstream::kv;
use async_nats::jetstream::{self, stream};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cqrs_core::StoreError;
use cqrs_core::personal::{KeyFuture, KeyStore, KeyStoreError, SubjectKey};
use serde::{Deserialize, Serialize};

/// The data subjects' keys of a context on JetStream.
#[derive(Clone)]
pub struct JetStreamKeyStore {
    kv: kv::Store,
}

impl std::fmt::Debug for JetStreamKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamKeyStore")
            .field("bucket", &self.kv.name)
            .finish_non_exhaustive()
    }
}

/// A key as the bucket stores it.
#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    key: String,
}

impl JetStreamKeyStore {
    /// Opens the key bucket of `store`'s context, creating it (history 1, the store's replicas)
    /// if it does not exist.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the bucket can neither be opened nor created.
    pub async fn open(store: &crate::JetStreamEventStore) -> Result<Self, StoreError> {
        let bucket = crate::layout::keys_bucket(store.subjects().context());
        let kv = crate::bucket::open_or_create(
            store.jetstream(),
            kv::Config {
                bucket: bucket.clone(),
                description: format!(
                    "Data subjects' keys of context {}",
                    store.subjects().context()
                ),
                // A forgotten key must leave no older revision behind.
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: store.replicas(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            crate::store::unavailable_because("personal data keys", format!("bucket {bucket}"), e)
        })?;
        Ok(Self { kv })
    }

    /// The key bucket of the context `jetstream` reaches, which must exist: for tools that only
    /// read keys.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the bucket cannot be opened.
    pub async fn open_existing(
        jetstream: &jetstream::Context,
        context: &str,
    ) -> Result<Option<Self>, StoreError> {
        let bucket = crate::layout::keys_bucket(context);
        let kv = crate::bucket::open_existing(jetstream, &bucket)
            .await
            .map_err(|e| {
                crate::store::unavailable_because(
                    "personal data keys",
                    format!("bucket {bucket}"),
                    e,
                )
            })?;
        Ok(kv.map(|kv| Self { kv }))
    }

    async fn read(&self, subject: &str) -> Result<Option<SubjectKey>, KeyStoreError> {
        let value = self
            .kv
            .get(encode_token(subject))
            .await
            .map_err(|e| unavailable(subject, "reading", e))?;
        value.map(|bytes| parse(subject, &bytes)).transpose()
    }

    async fn create(&self, subject: &str) -> Result<SubjectKey, KeyStoreError> {
        if let Some(key) = self.read(subject).await? {
            return Ok(key);
        }
        let key = SubjectKey::generate();
        let stored = StoredKey {
            id: key.id().to_owned(),
            key: BASE64.encode(key.bytes()),
        };
        let value = serde_json::to_vec(&stored).map_err(|e| unavailable(subject, "creating", e))?;
        match self.kv.create(encode_token(subject), value.into()).await {
            Ok(_) => Ok(key),
            Err(error) if error.kind() == kv::CreateErrorKind::AlreadyExists => {
                // Another writer created it first: everyone seals with that one.
                self.read(subject).await?.ok_or_else(|| {
                    unavailable(
                        subject,
                        "reading",
                        "the key was deleted while being created",
                    )
                })
            }
            Err(error) => Err(unavailable(subject, "creating", error)),
        }
    }
}

fn unavailable(
    subject: &str,
    action: &'static str,
    source: impl Into<cqrs_core::error::BoxError>,
) -> KeyStoreError {
    KeyStoreError::Unavailable {
        subject: subject.to_owned(),
        action,
        source: Some(source.into()),
    }
}

fn parse(subject: &str, bytes: &[u8]) -> Result<SubjectKey, KeyStoreError> {
    let malformed = |reason: &str| KeyStoreError::Malformed {
        subject: subject.to_owned(),
        reason: reason.to_owned(),
    };
    let stored: StoredKey =
        serde_json::from_slice(bytes).map_err(|_| malformed("not the JSON of a key"))?;
    let key: [u8; 32] = BASE64
        .decode(stored.key)
        .map_err(|_| malformed("the key is not base64"))?
        .try_into()
        .map_err(|_| malformed("the key is not 32 bytes long"))?;
    Ok(SubjectKey::from_parts(stored.id, key))
}

impl KeyStore for JetStreamKeyStore {
    fn key_for_writing<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        Box::pin(self.create(subject))
    }

    fn key<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        Box::pin(self.read(subject))
    }

    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, ()> {
        Box::pin(async move {
            self.kv
                .purge(encode_token(subject))
                .await
                .map_err(|e| unavailable(subject, "deleting", e))
        })
    }
}
