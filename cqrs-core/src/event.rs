//! Domain events: stable type names, schema versions, decoding through upcast chains, and the
//! event catalog.
//!
//! A stored event is the triple (type name, schema version, JSON body). The body is the variant's
//! content only — its type and version ride beside it (in headers on JetStream) — so that any
//! client, in any language, can read and write it.

use crate::personal::PersonalField;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// A domain event type: usually an enum with one variant per kind of fact.
///
/// Implement it with `#[derive(DomainEvent)]` (feature `macros`), or by hand with the helpers
/// [`encode_variant`] and [`decode_variant`].
pub trait DomainEvent: Debug + Clone + Send + Sync + 'static {
    /// The stable type name of this event, as stored (on JetStream, `type` in the `Cqrs-Envelope`
    /// header).
    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's variant (`Cqrs-Schema-Version`).
    fn schema_version(&self) -> u32;

    /// Serialises the event body (the variant's content, without its name) as JSON.
    fn encode(&self) -> Result<Vec<u8>, EncodeError>;

    /// Decodes a stored `(event_type, schema_version, body)` into the current shape, walking the
    /// upcast chain when `schema_version` is older than the current one.
    fn decode(event_type: &str, schema_version: u32, body: &[u8]) -> Result<Self, DecodeError>;

    /// The event catalog: every type name with its current version and the versions it can read.
    fn catalog() -> &'static [EventSchema];

    /// The fields of this event that hold personal data (`#[personal(..)]`), sealed by a
    /// [`PersonalDataStore`](crate::personal::PersonalDataStore). None by default.
    fn personal_fields(&self) -> &'static [PersonalField] {
        &[]
    }
}

/// One entry of an event catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EventSchema {
    /// Stable type name.
    pub name: &'static str,
    /// Current schema version, the one new events are written with.
    pub version: u32,
    /// Every version this build can decode, oldest first; always ends with `version`.
    pub readable_versions: &'static [u32],
    /// The fields of the current version that hold personal data.
    pub personal: &'static [PersonalField],
}

/// Why a stored event could not be decoded. The stored bytes are never touched: fix the code
/// (add the variant, the upcast or the version) and load again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// No variant has this type name.
    #[error(
        "unknown event type `{event_type}`: no variant of this event enum has that name; add it or an `#[event(name = ...)]` alias"
    )]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
    },
    /// The version is not one this build can read (a newer writer, or a gap in the upcast chain).
    #[error(
        "event `{event_type}` has schema version {version}, this build reads {readable:?}; deploy a build that knows version {version}"
    )]
    UnsupportedVersion {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        version: u32,
        /// The versions this build can read.
        readable: Vec<u32>,
    },
    /// The body is not valid JSON for the declared type and version.
    #[error("event `{event_type}` v{version} has a malformed body")]
    Malformed {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        version: u32,
        /// What the JSON decoder said.
        #[source]
        source: serde_json::Error,
    },
}

impl DecodeError {
    /// The stored type name of the event that could not be decoded.
    pub fn event_type(&self) -> &str {
        match self {
            Self::UnknownEventType { event_type }
            | Self::UnsupportedVersion { event_type, .. }
            | Self::Malformed { event_type, .. } => event_type,
        }
    }
}

/// An event could not be serialised (a `Serialize` impl failed, or a map key is not a string).
#[derive(Debug, thiserror::Error)]
#[error("event `{event_type}` could not be encoded as JSON")]
pub struct EncodeError {
    /// The type name of the event.
    pub event_type: String,
    /// What the JSON encoder said.
    #[source]
    pub source: serde_json::Error,
}

/// Encodes the content of an externally tagged enum value (serde's default enum representation)
/// without its tag: `Deposited { amount: 5 }` becomes `{"amount":5}`, a unit variant `null`.
///
/// This is the body format of stored events; the variant name travels separately.
pub fn encode_variant<T: Serialize>(event_type: &str, value: &T) -> Result<Vec<u8>, EncodeError> {
    let wrap = |source| EncodeError {
        event_type: event_type.to_owned(),
        source,
    };
    let body = match serde_json::to_value(value).map_err(wrap)? {
        serde_json::Value::Object(map) if map.len() == 1 => map
            .into_iter()
            .next()
            .map_or(serde_json::Value::Null, |(_, v)| v),
        // A unit variant serialises as its bare name.
        serde_json::Value::String(_) => serde_json::Value::Null,
        other => other,
    };
    serde_json::to_vec(&body).map_err(wrap)
}

/// Decodes a body written by [`encode_variant`] as the variant named `variant` (its Rust/serde
/// name) of the externally tagged enum `T`.
pub fn decode_variant<T: DeserializeOwned>(
    variant: &str,
    event_type: &str,
    version: u32,
    body: &[u8],
) -> Result<T, DecodeError> {
    let malformed = |source| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        version,
        source,
    };
    let content: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body).map_err(malformed)?
    };
    let tagged = if content.is_null() {
        // Unit variants are written as the bare name; try that first, then `{"V": null}` for
        // newtype variants holding an `Option`.
        match serde_json::from_value::<T>(serde_json::Value::String(variant.to_owned())) {
            Ok(value) => return Ok(value),
            Err(_) => serde_json::json!({ variant: null }),
        }
    } else {
        serde_json::json!({ variant: content })
    };
    serde_json::from_value(tagged).map_err(malformed)
}

/// Decodes a body as a plain serde type: the form old schema versions take in an upcast chain.
pub fn decode_body<T: DeserializeOwned>(
    event_type: &str,
    version: u32,
    body: &[u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        version,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Unit,
        Newtype(u32),
        Struct { a: String },
    }

    fn roundtrip(value: &Sample, variant: &str) -> Sample {
        let body = encode_variant(variant, value).unwrap();
        decode_variant(variant, variant, 1, &body).unwrap()
    }

    #[test]
    fn bodies_carry_no_tag() {
        assert_eq!(
            encode_variant("Struct", &Sample::Struct { a: "x".into() }).unwrap(),
            br#"{"a":"x"}"#
        );
        assert_eq!(encode_variant("Unit", &Sample::Unit).unwrap(), b"null");
        assert_eq!(
            encode_variant("Newtype", &Sample::Newtype(7)).unwrap(),
            b"7"
        );
    }

    #[test]
    fn every_variant_shape_roundtrips() {
        for (value, name) in [
            (Sample::Unit, "Unit"),
            (Sample::Newtype(3), "Newtype"),
            (Sample::Struct { a: "é.*>".into() }, "Struct"),
        ] {
            assert_eq!(roundtrip(&value, name), value);
        }
        // An empty body is accepted for unit variants written by other clients.
        assert_eq!(
            decode_variant::<Sample>("Unit", "Unit", 1, b"").unwrap(),
            Sample::Unit
        );
    }

    #[test]
    fn malformed_body_is_a_typed_error() {
        let err = decode_variant::<Sample>("Struct", "Struct", 1, b"{not json").unwrap_err();
        assert!(
            matches!(err, DecodeError::Malformed { version: 1, .. }),
            "{err}"
        );
        let err = decode_variant::<Sample>("Struct", "Struct", 1, br#"{"b":1}"#).unwrap_err();
        assert!(err.to_string().contains("Struct"), "{err}");
    }
}
