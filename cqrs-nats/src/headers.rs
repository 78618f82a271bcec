//! The wire format of an event: one NATS message per event, metadata in headers, the body as
//! JSON payload.
//!
//! | Header | Value | Required to read |
//! |---|---|---|
//! | `Nats-Msg-Id` | event id (UUID); the server deduplicates on it | yes |
//! | `Nats-Expected-Last-Subject-Sequence` | stream sequence of the aggregate's last event, `0` for a new aggregate; on the first message of every append | written only |
//! | `Nats-Batch-Id`, `Nats-Batch-Sequence`, `Nats-Batch-Commit` | atomic batch of a multi-event append (ADR-50) | written only |
//! | `Cqrs-Event-Type` | event type name | yes |
//! | `Cqrs-Schema-Version` | schema version of the body (integer) | yes |
//! | `Cqrs-Aggregate-Version` | version of the aggregate after this event, 1-based, gapless | yes |
//! | `Cqrs-Correlation-Id` | UUID of the flow | yes |
//! | `Cqrs-Causation-Id` | UUID of the direct cause (the command id) | no |
//! | `Cqrs-Command-Id` | UUID of the command that wrote the event | no |
//! | `Cqrs-Command-Causation-Id` | UUID of the event that triggered that command; absent for a root command | no |
//! | `Cqrs-Actor` | who issued the command, e.g. `user:42` | no |
//! | `Cqrs-Tenant` | tenant in plain text (informational: the subject token is authoritative) | no |
//! | `Cqrs-Aggregate-Type` | aggregate type (informational: the subject is authoritative) | no |
//! | `Cqrs-Recorded-At` | RFC 3339 time of the append; the server's timestamp is used when absent | no |
//! | `traceparent` | W3C trace context | no |
//! | `Content-Type` | `application/json` | no |
//! | `Cqrs-Extra-<key>` | one per extra metadata entry | no |
//!
//! The subject (`<context>.events.<tenant>.<AggregateType>.<id>`, see [`crate::subject`]) names the
//! aggregate; the stream sequence is the event's position. Header values cannot contain CR or
//! LF, and extra metadata keys must be printable ASCII without `:`: an append whose metadata
//! breaks these rules is refused with [`StoreError::InvalidInput`] before anything is sent.
//!
//! A reader needs only the required headers; the version must continue the aggregate gaplessly
//! (the first event of an aggregate has version 1). A writer in another language appends by
//! reading the aggregate's last message (`$JS.API.DIRECT.GET.<stream>` with `last_by_subj`),
//! and publishing with `Nats-Expected-Last-Subject-Sequence` set to its stream sequence (0 for a
//! new aggregate) and `Cqrs-Aggregate-Version` set to its version plus one.

use crate::subject::Subjects;
use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream::message::StreamMessage;
use cqrs_core::{EventEnvelope, Metadata, NewEvent, RecordedEvent, SerializedEvent, StoreError};
use std::collections::BTreeMap;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// `Nats-Msg-Id`.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// `Nats-Expected-Last-Subject-Sequence`.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// `Nats-Batch-Id`.
pub const BATCH_ID: &str = "Nats-Batch-Id";
/// `Nats-Batch-Sequence`.
pub const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
/// `Nats-Batch-Commit`.
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";
/// `Cqrs-Event-Type`.
pub const EVENT_TYPE: &str = "Cqrs-Event-Type";
/// `Cqrs-Schema-Version`.
pub const SCHEMA_VERSION: &str = "Cqrs-Schema-Version";
/// `Cqrs-Aggregate-Version`.
pub const AGGREGATE_VERSION: &str = "Cqrs-Aggregate-Version";
/// `Cqrs-Aggregate-Type`.
pub const AGGREGATE_TYPE: &str = "Cqrs-Aggregate-Type";
/// `Cqrs-Correlation-Id`.
pub const CORRELATION_ID: &str = "Cqrs-Correlation-Id";
/// `Cqrs-Causation-Id`.
pub const CAUSATION_ID: &str = "Cqrs-Causation-Id";
/// `Cqrs-Command-Id`.
pub const COMMAND_ID: &str = "Cqrs-Command-Id";
/// `Cqrs-Command-Causation-Id`.
pub const COMMAND_CAUSATION_ID: &str = "Cqrs-Command-Causation-Id";
/// `Cqrs-Actor`.
pub const ACTOR: &str = "Cqrs-Actor";
/// `Cqrs-Tenant`.
pub const TENANT: &str = "Cqrs-Tenant";
/// `Cqrs-Recorded-At`.
pub const RECORDED_AT: &str = "Cqrs-Recorded-At";
/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `Content-Type`.
pub const CONTENT_TYPE: &str = "Content-Type";
/// Prefix of extra metadata headers.
pub const EXTRA_PREFIX: &str = "Cqrs-Extra-";
/// The payload's content type.
pub const JSON: &str = "application/json";

/// Builds headers one by one, refusing values that cannot travel in a NATS header.
#[derive(Debug, Default)]
pub(crate) struct HeaderBuilder {
    map: HeaderMap,
    wire_len: usize,
}

impl HeaderBuilder {
    pub(crate) fn insert(&mut self, name: &str, value: &str) -> Result<(), String> {
        let header_name = HeaderName::from_str(name)
            .map_err(|_| format!("`{name}` cannot be a NATS header name"))?;
        let header_value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header `{name}` contains CR or LF"))?;
        self.wire_len += name.len() + value.len() + 4;
        self.map.insert(header_name, header_value);
        Ok(())
    }

    /// Bytes the header block takes on the wire.
    pub(crate) fn wire_len(&self) -> usize {
        // "NATS/1.0\r\n" + entries + "\r\n"
        12 + self.wire_len
    }

    pub(crate) fn build(self) -> HeaderMap {
        self.map
    }
}

/// The headers of one event (without the expectation and batch headers).
pub(crate) fn encode(
    event: &NewEvent,
    tenant: Option<&str>,
    aggregate_type: &str,
    version: u64,
    recorded_at: OffsetDateTime,
) -> Result<HeaderBuilder, String> {
    let mut h = HeaderBuilder::default();
    let meta = &event.metadata;
    h.insert(MSG_ID, &event.event_id.to_string())?;
    h.insert(EVENT_TYPE, &event.payload.event_type)?;
    h.insert(SCHEMA_VERSION, &event.payload.schema_version.to_string())?;
    h.insert(AGGREGATE_VERSION, &version.to_string())?;
    h.insert(AGGREGATE_TYPE, aggregate_type)?;
    h.insert(CORRELATION_ID, &meta.correlation_id.to_string())?;
    if let Some(id) = meta.causation_id {
        h.insert(CAUSATION_ID, &id.to_string())?;
    }
    if let Some(id) = meta.command_id {
        h.insert(COMMAND_ID, &id.to_string())?;
    }
    if let Some(id) = meta.command_causation_id {
        h.insert(COMMAND_CAUSATION_ID, &id.to_string())?;
    }
    if let Some(actor) = &meta.actor {
        h.insert(ACTOR, actor)?;
    }
    // Informational only (the subject token is authoritative): left out when it cannot travel.
    if let Some(tenant) = tenant
        && !tenant.contains(['\r', '\n'])
    {
        h.insert(TENANT, tenant)?;
    }
    let recorded = recorded_at
        .format(&Rfc3339)
        .map_err(|e| format!("recorded-at time cannot be formatted: {e}"))?;
    h.insert(RECORDED_AT, &recorded)?;
    if let Some(trace) = &meta.trace {
        h.insert(TRACEPARENT, trace)?;
    }
    h.insert(CONTENT_TYPE, JSON)?;
    for (key, value) in &meta.extra {
        if key.is_empty() {
            return Err("extra metadata keys cannot be empty".to_owned());
        }
        h.insert(&format!("{EXTRA_PREFIX}{key}"), value)?;
    }
    Ok(h)
}

fn header<'a>(message: &'a StreamMessage, name: &str) -> Option<&'a str> {
    message.headers.get_last(name).map(HeaderValue::as_str)
}

/// Reads the event in `message`, a message of the aggregate stream subject `message.subject`.
pub(crate) fn decode(
    subjects: &Subjects,
    message: &StreamMessage,
) -> Result<RecordedEvent, StoreError> {
    let position = message.sequence;
    let malformed = |reason: String| StoreError::MalformedEnvelope { position, reason };
    let required = |name: &str| {
        header(message, name).ok_or_else(|| malformed(format!("header `{name}` is missing")))
    };
    let uuid = |name: &str, value: &str| {
        Uuid::parse_str(value)
            .map_err(|e| malformed(format!("header `{name}` is not a UUID ({value:?}): {e}")))
    };
    let optional_uuid = |name: &str| header(message, name).map(|v| uuid(name, v)).transpose();

    let (tenant, aggregate_type, aggregate_id) = subjects
        .parse(message.subject.as_str())
        .map_err(|e| malformed(e.to_string()))?;
    let event_id = uuid(MSG_ID, required(MSG_ID)?)?;
    let event_type = required(EVENT_TYPE)?.to_owned();
    let schema_version = required(SCHEMA_VERSION)?;
    let schema_version: u32 = schema_version.parse().map_err(|_| {
        malformed(format!(
            "header `{SCHEMA_VERSION}` is not a version number ({schema_version:?})"
        ))
    })?;
    let version = required(AGGREGATE_VERSION)?;
    let version: u64 = match version.parse() {
        Ok(v) if v > 0 => v,
        _ => {
            return Err(malformed(format!(
                "header `{AGGREGATE_VERSION}` is not a positive version number ({version:?})"
            )));
        }
    };
    let correlation_id = uuid(CORRELATION_ID, required(CORRELATION_ID)?)?;
    let recorded_at = match header(message, RECORDED_AT) {
        Some(value) => OffsetDateTime::parse(value, &Rfc3339).map_err(|e| {
            malformed(format!(
                "header `{RECORDED_AT}` is not an RFC 3339 time ({value:?}): {e}"
            ))
        })?,
        None => message.time,
    };
    let mut extra = BTreeMap::new();
    for (name, values) in message.headers.iter() {
        if let Some(key) = AsRef::<str>::as_ref(name).strip_prefix(EXTRA_PREFIX)
            && let Some(value) = values.last()
        {
            extra.insert(key.to_owned(), value.as_str().to_owned());
        }
    }
    Ok(EventEnvelope {
        event_id,
        aggregate_type,
        aggregate_id,
        version,
        position,
        recorded_at,
        metadata: Metadata {
            correlation_id,
            causation_id: optional_uuid(CAUSATION_ID)?,
            command_id: optional_uuid(COMMAND_ID)?,
            command_causation_id: optional_uuid(COMMAND_CAUSATION_ID)?,
            tenant,
            actor: header(message, ACTOR).map(str::to_owned),
            trace: header(message, TRACEPARENT).map(str::to_owned),
            extra,
        },
        payload: SerializedEvent {
            event_type,
            schema_version,
            data: message.payload.to_vec(),
        },
    })
}
