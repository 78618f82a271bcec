//! The JSON Schemas of a context's event bodies on the server (feature `json-schema`), in the KV
//! bucket `SCHEMAS_<CONTEXT>`: a client in another language reads an event's `type` and
//! `schema_version` from its `Cqrs-Envelope` header and fetches the schema of its body under
//! the key `<type token>.<version>` (the type encoded as a subject token, see
//! [`crate::subject::encode_token`]; for the usual `[A-Za-z0-9-]` names the name itself).
//!
//! ```sh
//! nats kv get SCHEMAS_SALES Submitted.3 --raw
//! ```
//!
//! A service publishes the schemas of the event enums it writes when it starts
//! ([`publish`]); publishing again replaces a schema (the bucket keeps the last 10 revisions of
//! each, so a change stays visible).

use crate::JetStreamEventStore;
use crate::subject::encode_token;
use async_nats::jetstream::{self, kv, stream};
use cqrs_core::StoreError;
use cqrs_core::schema::EventJsonSchemas;

const OP: &str = "event schemas";

/// The key of the schema of `event_type` at `version`.
pub fn schema_key(event_type: &str, version: u32) -> String {
    format!("{}.{version}", encode_token(event_type))
}

/// Publishes the schema of every type and version of `E` into the context's schema bucket,
/// creating the bucket if needed. Returns how many schemas it wrote.
///
/// # Errors
/// [`StoreError::Unavailable`] when the bucket cannot be opened or written; some schemas may
/// be published already, and publishing again is harmless.
pub async fn publish<E: EventJsonSchemas>(
    store: &JetStreamEventStore,
) -> Result<usize, StoreError> {
    let bucket = crate::layout::schemas_bucket(store.subjects().context());
    let kv = crate::bucket::open_or_create(
        store.jetstream(),
        kv::Config {
            bucket: bucket.clone(),
            description: format!(
                "JSON Schemas of the event bodies of context {}, by <type>.<version>",
                store.subjects().context()
            ),
            history: 10,
            storage: stream::StorageType::File,
            num_replicas: store.replicas(),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| crate::store::unavailable_because(OP, format!("bucket {bucket}"), e))?;
    let schemas = E::json_schemas();
    for schema in &schemas {
        let key = schema_key(schema.event_type, schema.version);
        let value = serde_json::to_vec(&schema.schema)
            .map_err(|e| crate::store::unavailable_because(OP, format!("encoding {key}"), e))?;
        kv.put(&key, value.into())
            .await
            .map_err(|e| crate::store::unavailable_because(OP, format!("writing {key}"), e))?;
    }
    Ok(schemas.len())
}

/// The published schema of `event_type` at `version` in `context`, or `None` when it (or the
/// bucket) is not there.
///
/// # Errors
/// [`StoreError::Unavailable`] when the bucket cannot be read; [`StoreError::MalformedEnvelope`]
/// (position 0) when what is stored is not JSON.
pub async fn fetch(
    jetstream: &jetstream::Context,
    context: &str,
    event_type: &str,
    version: u32,
) -> Result<Option<serde_json::Value>, StoreError> {
    let bucket = crate::layout::schemas_bucket(context);
    let Some(kv) = crate::bucket::open_existing(jetstream, &bucket)
        .await
        .map_err(|e| crate::store::unavailable_because(OP, format!("bucket {bucket}"), e))?
    else {
        return Ok(None);
    };
    let key = schema_key(event_type, version);
    let Some(bytes) = kv
        .get(&key)
        .await
        .map_err(|e| crate::store::unavailable_because(OP, format!("reading {key}"), e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::MalformedEnvelope {
            position: 0,
            reason: format!("the schema {key} in {bucket} is not JSON: {e}"),
        })
}
