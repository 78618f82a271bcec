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

/// Header names as async-nats values, built at compile time (no allocation, no parsing).
mod name {
    use async_nats::header::HeaderName;

    pub(super) const MSG_ID: HeaderName = HeaderName::from_static(super::MSG_ID);
    pub(super) const EXPECTED_LAST_SUBJECT_SEQUENCE: HeaderName =
        HeaderName::from_static(super::EXPECTED_LAST_SUBJECT_SEQUENCE);
    pub(super) const BATCH_ID: HeaderName = HeaderName::from_static(super::BATCH_ID);
    pub(super) const BATCH_SEQUENCE: HeaderName = HeaderName::from_static(super::BATCH_SEQUENCE);
    pub(super) const BATCH_COMMIT: HeaderName = HeaderName::from_static(super::BATCH_COMMIT);
    pub(super) const EVENT_TYPE: HeaderName = HeaderName::from_static(super::EVENT_TYPE);
    pub(super) const SCHEMA_VERSION: HeaderName = HeaderName::from_static(super::SCHEMA_VERSION);
    pub(super) const AGGREGATE_VERSION: HeaderName =
        HeaderName::from_static(super::AGGREGATE_VERSION);
    pub(super) const AGGREGATE_TYPE: HeaderName = HeaderName::from_static(super::AGGREGATE_TYPE);
    pub(super) const CORRELATION_ID: HeaderName = HeaderName::from_static(super::CORRELATION_ID);
    pub(super) const CAUSATION_ID: HeaderName = HeaderName::from_static(super::CAUSATION_ID);
    pub(super) const COMMAND_ID: HeaderName = HeaderName::from_static(super::COMMAND_ID);
    pub(super) const COMMAND_CAUSATION_ID: HeaderName =
        HeaderName::from_static(super::COMMAND_CAUSATION_ID);
    pub(super) const ACTOR: HeaderName = HeaderName::from_static(super::ACTOR);
    pub(super) const TENANT: HeaderName = HeaderName::from_static(super::TENANT);
    pub(super) const RECORDED_AT: HeaderName = HeaderName::from_static(super::RECORDED_AT);
    pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
    pub(super) const CONTENT_TYPE: HeaderName = HeaderName::from_static(super::CONTENT_TYPE);
}

/// The headers a writer adds to an event's own headers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// `Nats-Expected-Last-Subject-Sequence`.
    ExpectedLastSubjectSequence,
    /// `Nats-Batch-Id`.
    BatchId,
    /// `Nats-Batch-Sequence`.
    BatchSequence,
    /// `Nats-Batch-Commit`.
    BatchCommit,
}

impl Control {
    fn name(self) -> (HeaderName, &'static str) {
        match self {
            Self::ExpectedLastSubjectSequence => (
                name::EXPECTED_LAST_SUBJECT_SEQUENCE,
                EXPECTED_LAST_SUBJECT_SEQUENCE,
            ),
            Self::BatchId => (name::BATCH_ID, BATCH_ID),
            Self::BatchSequence => (name::BATCH_SEQUENCE, BATCH_SEQUENCE),
            Self::BatchCommit => (name::BATCH_COMMIT, BATCH_COMMIT),
        }
    }
}

/// Builds headers one by one, refusing values that cannot travel in a NATS header.
#[derive(Debug, Default)]
pub(crate) struct HeaderBuilder {
    map: HeaderMap,
    wire_len: usize,
}

impl HeaderBuilder {
    /// Adds a header whose name and value come from the caller: both are checked.
    pub(crate) fn insert(&mut self, name: &str, value: &str) -> Result<(), String> {
        let header_name = HeaderName::from_str(name)
            .map_err(|_| format!("`{name}` cannot be a NATS header name"))?;
        self.insert_named(header_name, name, value.to_owned())
    }

    /// Adds a header with a known-good name; the value is checked for CR and LF.
    fn insert_named(
        &mut self,
        name: HeaderName,
        name_text: &str,
        value: String,
    ) -> Result<(), String> {
        if value.contains(['\r', '\n']) {
            return Err(format!(
                "the value of header `{name_text}` contains CR or LF"
            ));
        }
        self.wire_len += name_text.len() + value.len() + 4;
        self.map.insert(name, HeaderValue::from(value));
        Ok(())
    }

    /// Adds a header with a known-good name and a value made by the store (a number, a UUID, a
    /// time, a constant), which cannot contain CR or LF.
    fn insert_trusted(&mut self, name: HeaderName, name_text: &str, value: String) {
        debug_assert!(!value.contains(['\r', '\n']));
        self.wire_len += name_text.len() + value.len() + 4;
        self.map.insert(name, HeaderValue::from(value));
    }

    /// Adds one of the writer's control headers (a number or an id made by the store).
    pub(crate) fn control(&mut self, header: Control, value: String) {
        let (name, text) = header.name();
        self.insert_trusted(name, text, value);
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

/// The hyphenated lower-case text of `id`, without going through `fmt`.
fn uuid_text(id: &Uuid) -> String {
    let mut buffer = Uuid::encode_buffer();
    id.hyphenated().encode_lower(&mut buffer).to_owned()
}

/// The headers of one event (without the expectation and batch headers). `recorded_at` is the
/// RFC 3339 time of the append, formatted once for all its events.
pub(crate) fn encode(
    event: &NewEvent,
    tenant: Option<&str>,
    aggregate_type: &str,
    version: u64,
    recorded_at: &str,
) -> Result<HeaderBuilder, String> {
    let mut h = HeaderBuilder::default();
    let meta = &event.metadata;
    // Values made here (ids, numbers, the time, constants) cannot hold CR or LF; values from
    // the caller are checked.
    h.insert_trusted(name::MSG_ID, MSG_ID, uuid_text(&event.event_id));
    h.insert_named(
        name::EVENT_TYPE,
        EVENT_TYPE,
        event.payload.event_type.clone(),
    )?;
    h.insert_trusted(
        name::SCHEMA_VERSION,
        SCHEMA_VERSION,
        event.payload.schema_version.to_string(),
    );
    h.insert_trusted(
        name::AGGREGATE_VERSION,
        AGGREGATE_VERSION,
        version.to_string(),
    );
    h.insert_named(
        name::AGGREGATE_TYPE,
        AGGREGATE_TYPE,
        aggregate_type.to_owned(),
    )?;
    h.insert_trusted(
        name::CORRELATION_ID,
        CORRELATION_ID,
        uuid_text(&meta.correlation_id),
    );
    if let Some(id) = &meta.causation_id {
        h.insert_trusted(name::CAUSATION_ID, CAUSATION_ID, uuid_text(id));
    }
    if let Some(id) = &meta.command_id {
        h.insert_trusted(name::COMMAND_ID, COMMAND_ID, uuid_text(id));
    }
    if let Some(id) = &meta.command_causation_id {
        h.insert_trusted(
            name::COMMAND_CAUSATION_ID,
            COMMAND_CAUSATION_ID,
            uuid_text(id),
        );
    }
    if let Some(actor) = &meta.actor {
        h.insert_named(name::ACTOR, ACTOR, actor.clone())?;
    }
    // Informational only (the subject token is authoritative): left out when it cannot travel.
    if let Some(tenant) = tenant
        && !tenant.contains(['\r', '\n'])
    {
        h.insert_trusted(name::TENANT, TENANT, tenant.to_owned());
    }
    h.insert_trusted(name::RECORDED_AT, RECORDED_AT, recorded_at.to_owned());
    if let Some(trace) = &meta.trace {
        h.insert_named(name::TRACEPARENT, TRACEPARENT, trace.clone())?;
    }
    h.insert_trusted(name::CONTENT_TYPE, CONTENT_TYPE, JSON.to_owned());
    for (key, value) in &meta.extra {
        if key.is_empty() {
            return Err("extra metadata keys cannot be empty".to_owned());
        }
        h.insert(&format!("{EXTRA_PREFIX}{key}"), value)?;
    }
    Ok(h)
}

/// `at` in RFC 3339, in UTC. Formatted once per append, not once per event.
pub(crate) fn rfc3339(at: OffsetDateTime) -> Result<String, String> {
    at.to_offset(time::UtcOffset::UTC)
        .format(&Rfc3339)
        .map_err(|e| format!("recorded-at time cannot be formatted: {e}"))
}

/// The last value of header `name` (a [`name`] constant: looking up by `&str` would copy and
/// check the name on every lookup).
fn header(message: &StreamMessage, name: HeaderName) -> Option<&str> {
    message.headers.get_last(name).map(HeaderValue::as_str)
}

/// Reads the event in `message`, a message of the aggregate stream subject `message.subject`.
pub(crate) fn decode(
    subjects: &Subjects,
    message: &StreamMessage,
) -> Result<RecordedEvent, StoreError> {
    let position = message.sequence;
    let malformed = |reason: String| StoreError::MalformedEnvelope { position, reason };
    let required = |name: HeaderName| {
        let missing = || malformed(format!("header `{name}` is missing"));
        header(message, name.clone()).ok_or_else(missing)
    };
    let uuid = |name: HeaderName, value: &str| {
        Uuid::parse_str(value)
            .map_err(|e| malformed(format!("header `{name}` is not a UUID ({value:?}): {e}")))
    };
    let optional_uuid = |name: HeaderName| {
        header(message, name.clone())
            .map(|v| uuid(name, v))
            .transpose()
    };

    let (tenant, aggregate_type, aggregate_id) = subjects
        .parse(message.subject.as_str())
        .map_err(|e| malformed(e.to_string()))?;
    let event_id = uuid(name::MSG_ID, required(name::MSG_ID)?)?;
    let event_type = required(name::EVENT_TYPE)?.to_owned();
    let schema_version = required(name::SCHEMA_VERSION)?;
    let schema_version: u32 = schema_version.parse().map_err(|_| {
        malformed(format!(
            "header `{SCHEMA_VERSION}` is not a version number ({schema_version:?})"
        ))
    })?;
    let version = required(name::AGGREGATE_VERSION)?;
    let version: u64 = match version.parse() {
        Ok(v) if v > 0 => v,
        _ => {
            return Err(malformed(format!(
                "header `{AGGREGATE_VERSION}` is not a positive version number ({version:?})"
            )));
        }
    };
    let correlation_id = uuid(name::CORRELATION_ID, required(name::CORRELATION_ID)?)?;
    let recorded_at = match header(message, name::RECORDED_AT) {
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
            causation_id: optional_uuid(name::CAUSATION_ID)?,
            command_id: optional_uuid(name::COMMAND_ID)?,
            command_causation_id: optional_uuid(name::COMMAND_CAUSATION_ID)?,
            tenant,
            actor: header(message, name::ACTOR).map(str::to_owned),
            trace: header(message, name::TRACEPARENT).map(str::to_owned),
            extra,
        },
        payload: SerializedEvent {
            event_type,
            schema_version,
            data: message.payload.to_vec(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused() {
        let mut h = HeaderBuilder::default();
        assert!(h.insert("Cqrs-Extra-x", "a\r\nb").is_err());
        assert!(h.insert("bad:name", "v").is_err());
        h.control(Control::BatchCommit, "1".to_owned());
        assert_eq!(h.wire_len(), 12 + BATCH_COMMIT.len() + 1 + 4);
    }

    mod hostile {
        use super::super::*;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            MSG_ID,
            EVENT_TYPE,
            SCHEMA_VERSION,
            AGGREGATE_VERSION,
            CORRELATION_ID,
            CAUSATION_ID,
            COMMAND_ID,
            COMMAND_CAUSATION_ID,
            ACTOR,
            RECORDED_AT,
            TRACEPARENT,
            "Cqrs-Extra-x",
            "X-Other",
        ];

        /// Header values: valid-looking ones, near misses and garbage.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(Uuid::nil().to_string()),
                Just("01a2191e-50b1-7606-b1ae-cbb292074ef1".to_owned()),
                Just("1".to_owned()),
                Just("0".to_owned()),
                Just("18446744073709551616".to_owned()),
                Just("-1".to_owned()),
                Just("2026-11-26T19:00:00Z".to_owned()),
                Just("2026-13-45T99:00:00Z".to_owned()),
                "[ -~]{0,40}",
            ]
        }

        fn token() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("_".to_owned()),
                Just("__".to_owned()),
                Just("_ZZ".to_owned()),
                Just("_2E".to_owned()),
                "[A-Za-z0-9_-]{1,12}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            /// Whatever another client writes on an event subject, reading it gives an event or a
            /// typed error naming its position: never a panic, never a wrong aggregate.
            #[test]
            fn any_message_decodes_or_is_a_typed_error(
                headers in prop::collection::vec((0..NAMES.len(), value()), 0..14),
                tenant in token(),
                id in token(),
                extra_tokens in 0usize..2,
                payload in prop::collection::vec(any::<u8>(), 0..64),
                sequence in 1u64..1_000_000,
                valid_base in any::<bool>(),
            ) {
                let subjects = Subjects::new("ctx").unwrap();
                let mut subject = format!("ctx.events.{tenant}.Order.{id}");
                for _ in 0..extra_tokens {
                    subject.push_str(".x");
                }
                let mut map = HeaderMap::new();
                if valid_base {
                    // A well-formed event that the random headers then partly overwrite.
                    let id = "01a2191e-50b1-7606-b1ae-cbb292074ef1";
                    for (name, value) in [
                        (MSG_ID, id),
                        (EVENT_TYPE, "Submitted"),
                        (SCHEMA_VERSION, "1"),
                        (AGGREGATE_VERSION, "1"),
                        (CORRELATION_ID, id),
                    ] {
                        map.insert(name, value);
                    }
                }
                for (name, value) in &headers {
                    map.insert(NAMES[*name], value.as_str());
                }
                let message = StreamMessage {
                    subject: subject.clone().into(),
                    sequence,
                    headers: map,
                    payload: payload.clone().into(),
                    time: OffsetDateTime::UNIX_EPOCH,
                };
                match decode(&subjects, &message) {
                    Ok(event) => {
                        prop_assert_eq!(event.position, sequence);
                        prop_assert!(event.version > 0);
                        prop_assert_eq!(event.aggregate_type.as_str(), "Order");
                        // The aggregate comes from the subject, and maps back onto it.
                        let again = subjects
                            .aggregate(event.metadata.tenant.as_deref(), "Order", &event.aggregate_id)
                            .unwrap();
                        prop_assert_eq!(again, subject);
                        prop_assert_eq!(event.payload.data, payload);
                    }
                    Err(StoreError::MalformedEnvelope { position, reason }) => {
                        prop_assert_eq!(position, sequence);
                        prop_assert!(!reason.is_empty());
                    }
                    Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
                }
            }
        }
    }
}
