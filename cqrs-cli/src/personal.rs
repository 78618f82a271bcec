//! Sealed personal fields as the CLI shows them: never opened (an operator tool does not print
//! personal data), `"[personal]"` while the data subject's key exists, `"[erased]"` once the
//! subject was forgotten.

use crate::model::{CliError, EventDoc};
use cqrs_core::personal::{KeyStore as _, sealed_fields};
use cqrs_core::{RecordedEvent, StoreError};
use cqrs_nats::JetStreamKeyStore;
use cqrs_nats::async_nats::jetstream;
use std::collections::HashMap;

/// Shown in place of a sealed value whose key exists.
pub(crate) const PERSONAL: &str = "[personal]";
/// Shown in place of a sealed value whose subject was forgotten.
pub(crate) const ERASED: &str = "[erased]";

/// The key bucket, opened at the first sealed field, so that reading a context without personal
/// data needs no access to it.
enum Keys {
    Unopened,
    /// The context has no key bucket: no subject has a key.
    Missing,
    Open(Box<JetStreamKeyStore>),
}

/// Turns events into documents with their sealed fields marked, asking the key bucket once per
/// data subject.
pub(crate) struct Redactor {
    js: jetstream::Context,
    context: String,
    keys: Keys,
    current: HashMap<String, Option<String>>,
}

impl Redactor {
    /// A redactor for `context`.
    pub(crate) fn new(js: &jetstream::Context, context: &str) -> Self {
        Self {
            js: js.clone(),
            context: context.to_owned(),
            keys: Keys::Unopened,
            current: HashMap::new(),
        }
    }

    /// `event` as a document, its sealed fields marked.
    pub(crate) async fn doc(&mut self, event: RecordedEvent) -> Result<EventDoc, CliError> {
        let mut doc = EventDoc::from(event);
        for sealed in sealed_fields(&doc.body) {
            let shown = if self.current_key(&sealed.subject).await? == Some(sealed.key_id) {
                PERSONAL
            } else {
                ERASED
            };
            doc.body[&sealed.field] = serde_json::Value::from(shown);
        }
        Ok(doc)
    }

    async fn current_key(&mut self, subject: &str) -> Result<Option<String>, CliError> {
        if let Some(id) = self.current.get(subject) {
            return Ok(id.clone());
        }
        if matches!(self.keys, Keys::Unopened) {
            self.keys = match JetStreamKeyStore::open_existing(&self.js, &self.context).await? {
                Some(keys) => Keys::Open(Box::new(keys)),
                None => Keys::Missing,
            };
        }
        let id = match &self.keys {
            Keys::Unopened | Keys::Missing => None,
            Keys::Open(keys) => keys
                .key(subject)
                .await
                .map_err(|e| StoreError::Unavailable {
                    operation: "personal data keys",
                    reason: "reading a data subject's key".to_owned(),
                    source: Some(Box::new(e)),
                })?
                .map(|key| key.id().to_owned()),
        };
        self.current.insert(subject.to_owned(), id.clone());
        Ok(id)
    }
}
