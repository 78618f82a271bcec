//! Personal data: crypto-shredding of the event fields that hold it.
//!
//! An event stream is append-only (on JetStream it denies deletes and purges), so an erasure
//! request cannot remove an event. Instead, the fields marked `#[personal(subject = .., replacement
//! = ..)]` in a `#[derive(DomainEvent)]` enum are stored encrypted (AES-256-GCM) with a key of
//! their *data subject* — the person the field's `subject` names. [`KeyStore::forget`] deletes
//! that key; from then on the ciphertext is noise, and every read yields the declared replacement
//! and lists the field in [`EventEnvelope::erased`](crate::EventEnvelope::erased).
//!
//! ## How it fits
//! - [`NewEvent::encode`](crate::NewEvent::encode) notes an event's personal fields in
//!   [`NewEvent::personal`](crate::NewEvent::personal); every store refuses to write an event
//!   whose fields are still in the clear ([`ensure_sealed`]), so plaintext is never written by
//!   mistake.
//! - [`PersonalDataStore`] wraps any [`EventStore`]: it seals new events (a key is created for a
//!   subject on first use) and opens every event it reads, so the repository, unit of work and
//!   in-process projections work unchanged on top of it.
//! - A runner that reads the stream directly (the JetStream projection runner) opens events
//!   with an [`Opener`].
//!
//! ## The stored form
//! A sealed field's value is replaced by one JSON object — self-describing, so a reader needs no
//! schema to open it and a client in another language can follow it:
//!
//! ```json
//! {"$personal": {"subject": "member-7", "key": "3f2a…", "sealed": "<base64>", "erased": ""}}
//! ```
//!
//! `sealed` is the standard base64 of a 12-byte random nonce followed by the AES-256-GCM
//! ciphertext and tag of the field's JSON, authenticated with the subject as associated data;
//! `key` is the id of the subject's key it was sealed with; `erased` is the value a reader uses
//! once that key is gone (a subject forgotten and later seen again gets a new key with a new id,
//! so the old values stay erased).
//!
//! ## What it does not cover
//! Snapshots and read models hold state in the clear: an aggregate whose state keeps personal
//! values should not snapshot (or its snapshot is dropped after `forget`), and a projection that
//! copies them is rebuilt or updated on erasure. Keys are as safe as the key store: on JetStream,
//! restrict its bucket with permissions.

use crate::envelope::{NewEvent, RecordedEvent};
use crate::error::{BoxError, StoreError};
use crate::metadata::IdempotencyKey;
use crate::store::{AppendTo, Committed, EventStore, EventStream, Snapshot};
use crate::stream::{EventFilter, ExpectedVersion, StreamId, StreamPosition};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

/// The key of the object that replaces a sealed field's value in a stored body.
pub const MARKER: &str = "$personal";

/// The operation named by the errors of this module.
const OP: &str = "personal data";

/// A field of an event variant that holds personal data, as `#[personal(..)]` declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PersonalField {
    /// The field's name in the stored body.
    pub field: &'static str,
    /// The field of the same variant whose value identifies the data subject (a string or a
    /// number).
    pub subject: &'static str,
    /// The JSON a reader sees in place of the value once the subject is forgotten.
    pub replacement: &'static str,
}

/// A data subject's key: 256 bits for AES-256-GCM and an id that tells a key apart from the one
/// a subject gets after being forgotten and seen again. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey {
    id: String,
    key: [u8; 32],
}

impl SubjectKey {
    /// A new random key with a new random id.
    pub fn generate() -> Self {
        let key: [u8; 32] = Aes256Gcm::generate_key(&mut OsRng).into();
        Self {
            id: crate::metadata::new_id().simple().to_string(),
            key,
        }
    }

    /// A key as a key store keeps it.
    pub fn from_parts(id: impl Into<String>, key: [u8; 32]) -> Self {
        Self { id: id.into(), key }
    }

    /// The key's id, stored beside every value sealed with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key material, for a key store to persist.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.key
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.key.into())
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a key store could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// The key store could not be reached or did not answer; nothing was sealed or opened.
    /// Retry after a pause.
    #[error("the key store did not answer while {action} the key of data subject `{subject}`")]
    Unavailable {
        /// The data subject.
        subject: String,
        /// What was being done: "reading", "creating" or "deleting".
        action: &'static str,
        /// What the backend said.
        #[source]
        source: Option<BoxError>,
    },
    /// The stored key cannot be used (wrong length, not base64): the key store was written by
    /// something else. Restore the key from a backup or forget the subject.
    #[error("the stored key of data subject `{subject}` is malformed: {reason}")]
    Malformed {
        /// The data subject.
        subject: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A boxed future of a key store: key stores are held as `Arc<dyn KeyStore>` by stores, runners
/// and tools that do not know their type.
pub type KeyFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, KeyStoreError>> + Send + 'a>>;

/// Where data subjects' keys live: [`MemoryKeyStore`] in process; on JetStream a KV bucket per
/// context with history 1, so that a deleted key leaves no older revision behind.
pub trait KeyStore: Send + Sync + 'static {
    /// The subject's key, created if it has none (for sealing). Two writers creating a subject's
    /// key at once must end with the same key.
    fn key_for_writing<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey>;

    /// The subject's key, or `None` once it was forgotten (for opening).
    fn key<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>>;

    /// Deletes the subject's key: every value sealed with it reads as its replacement from now
    /// on. Forgetting an unknown subject succeeds.
    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, ()>;
}

impl<K: KeyStore + ?Sized> KeyStore for Arc<K> {
    fn key_for_writing<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        (**self).key_for_writing(subject)
    }

    fn key<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        (**self).key(subject)
    }

    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, ()> {
        (**self).forget(subject)
    }
}

/// Keys in process memory: for tests and single-process use with the in-memory store.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    keys: Mutex<HashMap<String, SubjectKey>>,
}

impl MemoryKeyStore {
    /// An empty key store.
    pub fn new() -> Self {
        Self::default()
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, SubjectKey>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl KeyStore for MemoryKeyStore {
    fn key_for_writing<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, SubjectKey> {
        let key = self
            .keys()
            .entry(subject.to_owned())
            .or_insert_with(SubjectKey::generate)
            .clone();
        Box::pin(async move { Ok(key) })
    }

    fn key<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, Option<SubjectKey>> {
        let key = self.keys().get(subject).cloned();
        Box::pin(async move { Ok(key) })
    }

    fn forget<'a>(&'a self, subject: &'a str) -> KeyFuture<'a, ()> {
        self.keys().remove(subject);
        Box::pin(async { Ok(()) })
    }
}

/// Refuses events whose personal fields are still in the clear: every store calls it before
/// writing, so that an event with personal data reaches the stream only through a
/// [`PersonalDataStore`].
///
/// # Errors
/// [`StoreError::InvalidInput`] naming the first such event's type and field.
pub fn ensure_sealed(stream: &StreamId, events: &[NewEvent]) -> Result<(), StoreError> {
    match events.iter().find(|e| !e.personal.is_empty()) {
        None => Ok(()),
        Some(event) => Err(StoreError::InvalidInput {
            stream: stream.clone(),
            reason: format!(
                "event `{}` holds personal data (field `{}`) and this store would write it in the clear; wrap the store in `PersonalDataStore::new(store, keys)` so that it is sealed",
                event.payload.event_type, event.personal[0].field
            ),
        }),
    }
}

/// The stored form of a sealed value.
#[derive(Serialize, Deserialize)]
struct Marker {
    subject: String,
    key: String,
    sealed: String,
    erased: serde_json::Value,
}

/// Seals `event`'s personal fields with their subjects' keys (created on first use) and clears
/// [`NewEvent::personal`]. A field whose value is `null` holds nothing and stays as it is.
///
/// # Errors
/// [`StoreError::Unavailable`] when the key store does not answer (the event is left as it was);
/// [`StoreError::InvalidInput`] when the body lacks a subject field or it is not a string or
/// number.
pub async fn seal(
    stream: &StreamId,
    event: &mut NewEvent,
    keys: &dyn KeyStore,
) -> Result<(), StoreError> {
    seal_with(stream, event, keys, &mut HashMap::new()).await
}

/// [`seal`], asking the key store only for subjects not in `subject_keys` (and remembering
/// them there), so that the events of one commit ask once per subject.
async fn seal_with(
    stream: &StreamId,
    event: &mut NewEvent,
    keys: &dyn KeyStore,
    subject_keys: &mut HashMap<String, SubjectKey>,
) -> Result<(), StoreError> {
    if event.personal.is_empty() {
        return Ok(());
    }
    let invalid = |reason: String| StoreError::InvalidInput {
        stream: stream.clone(),
        reason,
    };
    let event_type = &event.payload.event_type;
    let mut body: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&event.payload.data).map_err(|_| {
            invalid(format!(
                "event `{event_type}` declares personal fields but its body is not a JSON object"
            ))
        })?;
    for field in event.personal {
        let subject = match body.get(field.subject) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => {
                return Err(invalid(format!(
                    "event `{event_type}` names `{}` as the data subject of `{}`, but its body has no string or number there",
                    field.subject, field.field
                )));
            }
        };
        let Some(value) = body.get(field.field).filter(|v| !v.is_null()) else {
            continue;
        };
        let key = if let Some(key) = subject_keys.get(&subject) {
            key.clone()
        } else {
            let key = keys
                .key_for_writing(&subject)
                .await
                .map_err(|e| key_store_unavailable("getting a data subject's key", e))?;
            subject_keys.insert(subject.clone(), key.clone());
            key
        };
        let plaintext = serde_json::to_vec(value).map_err(|_| {
            invalid(format!(
                "field `{}` of event `{event_type}` is not serialisable",
                field.field
            ))
        })?;
        let sealed = Marker {
            sealed: encrypt(&key, &subject, &plaintext),
            subject,
            key: key.id.clone(),
            erased: serde_json::from_str(field.replacement).unwrap_or(serde_json::Value::Null),
        };
        body.insert(
            field.field.to_owned(),
            serde_json::json!({ MARKER: sealed }),
        );
    }
    event.payload.data = serde_json::to_vec(&body).map_err(|_| {
        invalid(format!(
            "event `{event_type}` could not be written back after sealing"
        ))
    })?;
    event.personal = &[];
    Ok(())
}

fn encrypt(key: &SubjectKey, subject: &str, plaintext: &[u8]) -> String {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let payload = Payload {
        msg: plaintext,
        aad: subject.as_bytes(),
    };
    // Encryption fails only for messages beyond AES-GCM's 64 GiB limit, far above any event.
    let ciphertext = key.cipher().encrypt(&nonce, payload).unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ciphertext);
    BASE64.encode(out)
}

fn decrypt(key: &SubjectKey, subject: &str, sealed: &str) -> Option<Vec<u8>> {
    let bytes = BASE64.decode(sealed).ok()?;
    if bytes.len() < 12 {
        return None;
    }
    let (nonce, ciphertext) = bytes.split_at(12);
    let payload = Payload {
        msg: ciphertext,
        aad: subject.as_bytes(),
    };
    key.cipher().decrypt(Nonce::from_slice(nonce), payload).ok()
}

fn key_store_unavailable(what: &str, error: KeyStoreError) -> StoreError {
    StoreError::Unavailable {
        operation: OP,
        reason: what.to_owned(),
        source: Some(Box::new(error)),
    }
}

/// Opens sealed fields of read events: decrypts them while their subject's key exists, puts the
/// declared replacement in their place (and names them in
/// [`EventEnvelope::erased`](crate::EventEnvelope::erased)) once it is gone.
///
/// It remembers the keys it looked up, so one opener serves one read (a load, a batch of a
/// projection) and a forgotten subject is seen by the next one.
pub struct Opener {
    keys: Arc<dyn KeyStore>,
    cache: Mutex<HashMap<String, Option<SubjectKey>>>,
}

impl fmt::Debug for Opener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opener").finish_non_exhaustive()
    }
}

impl Opener {
    /// An opener reading keys from `keys`.
    pub fn new(keys: Arc<dyn KeyStore>) -> Self {
        Self {
            keys,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Opens `event` in place; an event without sealed fields is left untouched (and costs one
    /// substring search).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the key store does not answer (retry);
    /// [`StoreError::MalformedEnvelope`] when a sealed value does not authenticate under its
    /// subject's current key (the stored bytes or the key were altered).
    pub async fn open(&self, event: &mut RecordedEvent) -> Result<(), StoreError> {
        if !is_sealed(event) {
            return Ok(());
        }
        let Ok(mut body) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
            &event.payload.data,
        ) else {
            return Ok(());
        };
        let mut changed = false;
        for (name, value) in &mut body {
            let Some(sealed) = as_sealed(value) else {
                continue;
            };
            let opened = match self.key(&sealed.subject).await? {
                Some(key) if key.id == sealed.key => {
                    let plaintext = decrypt(&key, &sealed.subject, &sealed.sealed)
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
                    plaintext.ok_or_else(|| StoreError::MalformedEnvelope {
                        position: event.position,
                        reason: format!(
                            "the sealed field `{name}` of event `{}` does not open with the key of data subject `{}`: the stored value or the key was altered",
                            event.payload.event_type, sealed.subject
                        ),
                    })?
                }
                _ => {
                    event.erased.push(name.clone());
                    sealed.erased
                }
            };
            *value = opened;
            changed = true;
        }
        if changed && let Ok(data) = serde_json::to_vec(&body) {
            event.payload.data = data;
        }
        Ok(())
    }

    /// Opens every event of `committed`.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub async fn open_committed(&self, committed: &mut Committed) -> Result<(), StoreError> {
        for event in &mut committed.events {
            self.open(event).await?;
        }
        Ok(())
    }

    async fn key(&self, subject: &str) -> Result<Option<SubjectKey>, StoreError> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(subject)
            .cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        let key = self
            .keys
            .key(subject)
            .await
            .map_err(|e| key_store_unavailable("reading a data subject's key", e))?;
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(subject.to_owned(), key.clone());
        Ok(key)
    }
}

/// [`MARKER`] with its quotes: what a body holding a sealed field contains.
const QUOTED_MARKER: &[u8] = b"\"$personal\"";

/// The sealed value `value` holds, if it is one.
fn as_sealed(value: &serde_json::Value) -> Option<Marker> {
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    serde_json::from_value(object.get(MARKER)?.clone()).ok()
}

/// A sealed field of a stored body, as tools that show events without opening them see it (the
/// CLI shows `[personal]` while its key exists, `[erased]` once it is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedField {
    /// The field's name.
    pub field: String,
    /// Its data subject.
    pub subject: String,
    /// The id of the key it was sealed with.
    pub key_id: String,
}

/// Every sealed field of a body (a JSON object; anything else has none).
pub fn sealed_fields(body: &serde_json::Value) -> Vec<SealedField> {
    let Some(body) = body.as_object() else {
        return Vec::new();
    };
    body.iter()
        .filter_map(|(name, value)| {
            let sealed = as_sealed(value)?;
            Some(SealedField {
                field: name.clone(),
                subject: sealed.subject,
                key_id: sealed.key,
            })
        })
        .collect()
}

/// An [`EventStore`] that seals the personal fields of what it writes and opens what it reads,
/// over any other store.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use cqrs_core::personal::{MemoryKeyStore, PersonalDataStore};
/// use cqrs_core::InMemoryEventStore;
/// use std::sync::Arc;
///
/// let keys = Arc::new(MemoryKeyStore::new());
/// let store = PersonalDataStore::new(InMemoryEventStore::new(), keys.clone());
/// // A repository over `store` writes `#[personal]` fields sealed; after
/// // `store.forget("member-7")` they read as their replacements.
/// store.forget("member-7").await?;
/// # Ok::<(), cqrs_core::StoreError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct PersonalDataStore<S> {
    store: S,
    keys: Arc<dyn KeyStore>,
}

impl<S: fmt::Debug> fmt::Debug for PersonalDataStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PersonalDataStore")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl<S> PersonalDataStore<S> {
    /// `store`, sealing and opening with the keys of `keys`.
    pub fn new(store: S, keys: Arc<dyn KeyStore>) -> Self {
        Self { store, keys }
    }

    /// The store underneath, which sees sealed bodies.
    pub fn inner(&self) -> &S {
        &self.store
    }

    /// The key store.
    pub fn keys(&self) -> &Arc<dyn KeyStore> {
        &self.keys
    }

    /// An opener over this store's keys, for a reader of the stream that does not go through
    /// this store.
    pub fn opener(&self) -> Opener {
        Opener::new(self.keys.clone())
    }

    /// Forgets a data subject: deletes its key, so that every personal value sealed for it
    /// reads as its replacement from now on.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the key store does not answer; nothing was forgotten.
    pub async fn forget(&self, subject: &str) -> Result<(), StoreError> {
        self.keys
            .forget(subject)
            .await
            .map_err(|e| key_store_unavailable("forgetting a data subject", e))
    }

    /// Seals `events` (each subject's key asked for once per commit, `subject_keys`); notes the
    /// bodies in the clear of those it changed in `clear`, by event id.
    async fn seal_all(
        &self,
        stream: &StreamId,
        events: &mut [NewEvent],
        subject_keys: &mut HashMap<String, SubjectKey>,
        clear: &mut HashMap<uuid::Uuid, Vec<u8>>,
    ) -> Result<(), StoreError> {
        for event in events {
            if !event.personal.is_empty() {
                let body = event.payload.data.clone();
                seal_with(stream, event, &*self.keys, subject_keys).await?;
                clear.insert(event.event_id, body);
            }
        }
        Ok(())
    }

    /// The events of a commit as the caller wrote them: the bodies it sealed are known in the
    /// clear (so a write that succeeded is never reported as failed for want of a key); others
    /// (the originals of a retried commit with other ids) are opened.
    async fn restore(
        &self,
        committed: &mut Committed,
        clear: &HashMap<uuid::Uuid, Vec<u8>>,
    ) -> Result<(), StoreError> {
        let opener = self.opener();
        for event in &mut committed.events {
            match clear.get(&event.event_id) {
                Some(body) => event.payload.data.clone_from(body),
                None => opener.open(event).await?,
            }
        }
        Ok(())
    }

    fn open_stream(&self, events: EventStream) -> EventStream {
        let opener = Arc::new(self.opener());
        Box::pin(events.and_then(move |mut event| {
            let opener = opener.clone();
            async move {
                opener.open(&mut event).await?;
                Ok(event)
            }
        }))
    }
}

impl<S: EventStore> EventStore for PersonalDataStore<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        mut events: Vec<NewEvent>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Committed, StoreError> {
        let mut clear = HashMap::new();
        self.seal_all(stream, &mut events, &mut HashMap::new(), &mut clear)
            .await?;
        let mut committed = self
            .store
            .append(stream, expected, events, idempotency)
            .await?;
        self.restore(&mut committed, &clear).await?;
        Ok(committed)
    }

    async fn append_all(
        &self,
        mut parts: Vec<AppendTo>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<Vec<Committed>, StoreError> {
        let (mut subject_keys, mut clear) = (HashMap::new(), HashMap::new());
        for part in &mut parts {
            self.seal_all(
                &part.stream,
                &mut part.events,
                &mut subject_keys,
                &mut clear,
            )
            .await?;
        }
        let mut commits = self.store.append_all(parts, idempotency).await?;
        for committed in &mut commits {
            self.restore(committed, &clear).await?;
        }
        Ok(commits)
    }

    async fn load(&self, stream: &StreamId, from_version: u64) -> Result<EventStream, StoreError> {
        Ok(self.open_stream(self.store.load(stream, from_version).await?))
    }

    async fn load_after(
        &self,
        stream: &StreamId,
        after: StreamPosition,
    ) -> Result<EventStream, StoreError> {
        Ok(self.open_stream(self.store.load_after(stream, after).await?))
    }

    async fn find_commit(
        &self,
        stream: &StreamId,
        key: &IdempotencyKey,
    ) -> Result<Option<Committed>, StoreError> {
        let mut found = self.store.find_commit(stream, key).await?;
        if let Some(committed) = &mut found {
            self.opener().open_committed(committed).await?;
        }
        Ok(found)
    }

    fn deduplication_window(&self) -> Option<std::time::Duration> {
        self.store.deduplication_window()
    }

    fn stream_position(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<StreamPosition, StoreError>> + Send {
        self.store.stream_position(stream)
    }

    fn version_past(
        &self,
        stream: &StreamId,
        seen: &crate::metadata::SeenPosition,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        self.store.version_past(stream, seen)
    }

    fn current_version(
        &self,
        stream: &StreamId,
        loaded: StreamPosition,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.store.current_version(stream, loaded)
    }

    async fn read_all(
        &self,
        filter: &EventFilter,
        from_position: u64,
    ) -> Result<EventStream, StoreError> {
        Ok(self.open_stream(self.store.read_all(filter, from_position).await?))
    }

    fn load_snapshot(
        &self,
        stream: &StreamId,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        self.store.load_snapshot(stream)
    }

    fn save_snapshot(
        &self,
        stream: &StreamId,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.store.save_snapshot(stream, snapshot)
    }
}

/// A projection (or process manager) that sees personal fields opened: for runners that read
/// the stream itself rather than through a [`PersonalDataStore`] (the JetStream runner, a
/// replay). Events without sealed fields pass through as they are.
///
/// A key store that does not answer fails the delivery like any handler error: the runner
/// retries it with its [`RetryPolicy`](crate::projection::RetryPolicy) and parks the event when
/// the retries run out; replaying parked events opens them again.
pub struct Opened<P> {
    projection: P,
    keys: Arc<dyn KeyStore>,
}

impl<P: fmt::Debug> fmt::Debug for Opened<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("projection", &self.projection)
            .finish_non_exhaustive()
    }
}

impl<P> Opened<P> {
    /// `projection`, handed events opened with the keys of `keys`.
    pub fn new(projection: P, keys: Arc<dyn KeyStore>) -> Self {
        Self { projection, keys }
    }

    /// The projection inside.
    pub fn projection(&self) -> &P {
        &self.projection
    }
}

fn is_sealed(event: &RecordedEvent) -> bool {
    memchr::memmem::find(&event.payload.data, QUOTED_MARKER).is_some()
}

impl<P: crate::Projection> crate::Projection for Opened<P> {
    crate::projection::wrapped_identity!(this => this.projection);

    async fn apply(&self, event: &RecordedEvent) -> Result<(), crate::HandlerError> {
        if !is_sealed(event) {
            return self.projection.apply(event).await;
        }
        let mut opened = event.clone();
        Opener::new(self.keys.clone()).open(&mut opened).await?;
        self.projection.apply(&opened).await
    }

    async fn apply_batch(&self, events: &[RecordedEvent]) -> Result<(), crate::HandlerError> {
        if !events.iter().any(is_sealed) {
            return self.projection.apply_batch(events).await;
        }
        let opener = Opener::new(self.keys.clone());
        let mut batch = events.to_vec();
        for event in &mut batch {
            opener.open(event).await?;
        }
        self.projection.apply_batch(&batch).await
    }
}
