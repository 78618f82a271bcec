//! JSON Schemas of stored event bodies, one per event type and schema version (feature
//! `json-schema`), so that a client in another language knows the shape of the body the headers
//! name — `(type, version)` — without reading Rust.
//!
//! An event enum opts in with `#[event(json_schema)]` next to `#[derive(JsonSchema,
//! DomainEvent)]` (`schemars`' derive, re-exported as [`schemars`]); every type an upcast reads
//! derives `JsonSchema` too. [`EventJsonSchemas::json_schemas`] then lists:
//! - for each variant, its current version: the schema of the variant's content, which is the
//!   body (`null` for a unit variant);
//! - for each older version, the schema of the type its upcast reads.
//!
//! Each schema is a standalone draft 2020-12 document. A field marked `#[personal]` may also be
//! stored sealed: its schema is `anyOf` the value and `#/$defs/SealedPersonalValue` (the form of
//! [`crate::personal`]). Older versions get the same for their properties of the same names.
//!
//! ```
//! # #[cfg(feature = "macros")] {
//! use cqrs_core::DomainEvent;
//! use cqrs_core::schema::{EventJsonSchemas, schemars::JsonSchema};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, DomainEvent)]
//! #[schemars(crate = "cqrs_core::schema::schemars")]
//! #[event(json_schema)]
//! enum CounterEvent {
//!     Added { amount: u64 },
//!     Reset,
//! }
//!
//! let schemas = CounterEvent::json_schemas();
//! assert_eq!((schemas[0].event_type, schemas[0].version), ("Added", 1));
//! assert_eq!(schemas[0].schema["properties"]["amount"]["type"], "integer");
//! assert_eq!(schemas[1].schema["type"], "null");
//! # }
//! ```

use crate::event::DomainEvent;
use crate::personal::{MARKER, PersonalField};
use serde::Serialize;
use serde_json::{Map, Value, json};

pub use schemars;

/// The name, under `$defs`, of the schema of a sealed personal value.
pub const SEALED_PERSONAL_VALUE: &str = "SealedPersonalValue";

/// The JSON Schema of one event type at one schema version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventJsonSchema {
    /// The stored type name (`type` in the envelope).
    pub event_type: &'static str,
    /// The schema version (`schema_version` in the envelope).
    pub version: u32,
    /// The schema of the body, a standalone draft 2020-12 document.
    pub schema: Value,
}

/// Event types with JSON Schemas for each type and version: implemented by
/// `#[derive(DomainEvent)]` with `#[event(json_schema)]`.
pub trait EventJsonSchemas: DomainEvent {
    /// Every type and version this build can read, current versions first (catalog order),
    /// then older ones.
    fn json_schemas() -> Vec<EventJsonSchema>;
}

/// The schemas of the variants of `E`'s current versions, by serde variant name, with the
/// definitions they refer to. Used by the derive.
#[doc(hidden)]
#[derive(Debug)]
pub struct Variants {
    by_name: Map<String, Value>,
    definitions: Map<String, Value>,
}

impl Variants {
    /// Reads the schema `schemars` gives the (externally tagged) enum `E`.
    pub fn of<E: schemars::JsonSchema>() -> Self {
        let root = schemars::SchemaGenerator::default()
            .into_root_schema_for::<E>()
            .to_value();
        let mut by_name = Map::new();
        let alternatives = ["oneOf", "anyOf"]
            .iter()
            .filter_map(|key| root.get(key).and_then(Value::as_array))
            .flatten();
        for alternative in alternatives {
            // A unit variant is its bare name; it is stored as the body `null`.
            let units = alternative
                .get("enum")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .chain(alternative.get("const"));
            for unit in units.filter_map(Value::as_str) {
                by_name.insert(unit.to_owned(), json!({ "type": "null" }));
            }
            if let Some(properties) = alternative.get("properties").and_then(Value::as_object)
                && properties.len() == 1
                && let Some((name, content)) = properties.iter().next()
            {
                let mut content = content.clone();
                if let (Some(description), Some(object)) =
                    (alternative.get("description"), content.as_object_mut())
                {
                    object
                        .entry("description")
                        .or_insert_with(|| description.clone());
                }
                by_name.insert(name.clone(), content);
            }
        }
        let definitions = root
            .get("$defs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Self {
            by_name,
            definitions,
        }
    }

    /// The schema of the body of the variant serde names `serde_name`.
    pub fn schema(
        &self,
        event_type: &str,
        version: u32,
        serde_name: &str,
        personal: &[PersonalField],
    ) -> Value {
        let body = self
            .by_name
            .get(serde_name)
            .cloned()
            .unwrap_or(Value::Bool(true));
        document(
            event_type,
            version,
            body,
            self.definitions.clone(),
            personal,
        )
    }
}

/// The schema of a body read as `T` (an older version's upcast type). Used by the derive.
#[doc(hidden)]
pub fn of_type<T: schemars::JsonSchema>(
    event_type: &str,
    version: u32,
    personal: &[PersonalField],
) -> Value {
    let mut root = schemars::SchemaGenerator::default()
        .into_root_schema_for::<T>()
        .to_value();
    let definitions = root
        .as_object_mut()
        .and_then(|o| o.remove("$defs"))
        .and_then(|d| d.as_object().cloned())
        .unwrap_or_default();
    if let Some(object) = root.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
    }
    document(event_type, version, root, definitions, personal)
}

/// A standalone document: `$schema`, a title naming type and version, the body's schema with
/// its personal properties allowed sealed, and the definitions.
fn document(
    event_type: &str,
    version: u32,
    body: Value,
    mut definitions: Map<String, Value>,
    personal: &[PersonalField],
) -> Value {
    let mut schema = match body {
        Value::Object(object) => object,
        other => {
            let mut wrapped = Map::new();
            wrapped.insert("allOf".to_owned(), json!([other]));
            wrapped
        }
    };
    let mut sealed_any = false;
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for field in personal {
            if let Some(property) = properties.get_mut(field.field) {
                let value = property.take();
                *property = json!({
                    "anyOf": [value, { "$ref": format!("#/$defs/{SEALED_PERSONAL_VALUE}") }]
                });
                sealed_any = true;
            }
        }
    }
    if sealed_any {
        definitions.insert(SEALED_PERSONAL_VALUE.to_owned(), sealed_personal_value());
    }
    schema.insert(
        "$schema".to_owned(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    schema.insert(
        "title".to_owned(),
        json!(format!("{event_type} v{version}")),
    );
    if !definitions.is_empty() {
        schema.insert("$defs".to_owned(), Value::Object(definitions));
    }
    Value::Object(schema)
}

/// The stored form of a sealed personal value.
fn sealed_personal_value() -> Value {
    json!({
        "description": "A personal value sealed with its data subject's key (crypto-shredding); once the subject is forgotten it reads as `erased`.",
        "type": "object",
        "properties": {
            MARKER: {
                "type": "object",
                "properties": {
                    "subject": { "type": "string" },
                    "key": { "type": "string" },
                    "sealed": { "type": "string", "contentEncoding": "base64" },
                    "erased": true
                },
                "required": ["subject", "key", "sealed", "erased"]
            }
        },
        "required": [MARKER],
        "additionalProperties": false
    })
}
