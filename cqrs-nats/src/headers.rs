//! The wire format of an event: one NATS message per event, its metadata in one JSON header,
//! the body as JSON payload.
//!
//! | Header | Value | Required to read |
//! |---|---|---|
//! | `Nats-Msg-Id` | event id (UUID); the server deduplicates on it | yes |
//! | `Cqrs-Envelope` | the envelope as one JSON object, below | yes |
//! | `traceparent` | W3C trace context of the command | no |
//! | `Nats-Expected-Last-Subject-Sequence` | stream sequence of the aggregate's last event, `0` for a new aggregate; on the first message of every append | written only |
//! | `Nats-Batch-Id`, `Nats-Batch-Sequence`, `Nats-Batch-Commit` | atomic batch of a multi-event append (ADR-50) | written only |
//!
//! `Cqrs-Envelope`, e.g.
//! `{"type":"Deposited","schema":1,"version":12,"command":"0199…","actor":"user:42","recorded_at":"2026-12-03T07:00:00.5Z"}`:
//!
//! | Field | Value | Required |
//! |---|---|---|
//! | `type` | event type name | yes |
//! | `schema` | schema version of the body | no, 1 when absent |
//! | `version` | version of the aggregate after this event, 1-based, gapless | yes |
//! | `command` | UUID of the command that wrote the event | no |
//! | `correlation` | UUID of the flow | when it differs from `command` (absent: equal to it) |
//! | `causation` | UUID of the direct cause, `null` for none | when it differs from `command` (absent: equal to it, or none without `command`) |
//! | `command_causation` | UUID of the event that triggered the command; absent for a root command | no |
//! | `actor` | who issued the command, e.g. `user:42` | no |
//! | `recorded_at` | RFC 3339 time of the append | no, the server's timestamp when absent |
//! | `extra` | object of extra metadata, string to string | no |
//!
//! Readers ignore fields they do not know. Why one header: the server scans an event's header
//! block for each header it looks up, and a client builds one map entry per header; a dozen
//! headers (the first wire format) made a bare publish of the framework's messages 0.64x as fast
//! as one with just the expected-sequence header, the same data in one header 0.86x
//! (`examples/bench.rs`). Tenant, aggregate type and id are the subject's; the content type is
//! always JSON.
//!
//! The subject (`<context>.events.<tenant>.<AggregateType>.<id>`, see [`crate::subject`]) names the
//! aggregate; the stream sequence is the event's position. `traceparent` cannot contain CR or
//! LF: an append with such a value is refused with [`StoreError::InvalidInput`] before anything
//! is sent.
//!
//! A writer in another language appends by reading the aggregate's last message
//! (`$JS.API.DIRECT.GET.<stream>` with `last_by_subj`), and publishing with
//! `Nats-Expected-Last-Subject-Sequence` set to its stream sequence (0 for a new aggregate) and
//! the envelope's `version` set to its version plus one.
//!
//! Messages in the first wire format (`Cqrs-Event-Type`, `Cqrs-Schema-Version`,
//! `Cqrs-Aggregate-Version`, `Cqrs-Correlation-Id`, ... one header per field) are still read.

use crate::subject::Subjects;
use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream::message::StreamMessage;
use cqrs_core::{EventEnvelope, Metadata, NewEvent, RecordedEvent, SerializedEvent, StoreError};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// `Nats-Msg-Id`: the event id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// `Cqrs-Envelope`: the event's envelope as one JSON object (see the module documentation).
pub const ENVELOPE: &str = "Cqrs-Envelope";
/// `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// `Nats-Expected-Last-Subject-Sequence`.
pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
/// `Nats-Expected-Last-Subject-Sequence-Subject`: the subject the expected sequence is checked
/// on, when it is not the one published to (a read guard's carrier).
pub const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";
/// `Nats-TTL`: how long the stream keeps a message (a read guard's carrier).
pub const TTL: &str = "Nats-TTL";
/// `Nats-Batch-Id`.
pub const BATCH_ID: &str = "Nats-Batch-Id";
/// `Nats-Batch-Sequence`.
pub const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
/// `Nats-Batch-Commit`.
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// The headers of the first wire format, one per envelope field: still read, no longer written.
pub mod legacy {
    /// `Cqrs-Event-Type`.
    pub const EVENT_TYPE: &str = "Cqrs-Event-Type";
    /// `Cqrs-Schema-Version`.
    pub const SCHEMA_VERSION: &str = "Cqrs-Schema-Version";
    /// `Cqrs-Aggregate-Version`.
    pub const AGGREGATE_VERSION: &str = "Cqrs-Aggregate-Version";
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
    /// `Cqrs-Recorded-At`.
    pub const RECORDED_AT: &str = "Cqrs-Recorded-At";
    /// Prefix of extra metadata headers.
    pub const EXTRA_PREFIX: &str = "Cqrs-Extra-";
}

/// Header names as async-nats values, built at compile time (no allocation, no parsing).
mod name {
    use async_nats::header::HeaderName;

    pub(super) const MSG_ID: HeaderName = HeaderName::from_static(super::MSG_ID);
    pub(super) const ENVELOPE: HeaderName = HeaderName::from_static(super::ENVELOPE);
    pub(super) const TRACEPARENT: HeaderName = HeaderName::from_static(super::TRACEPARENT);
    pub(super) const EXPECTED_LAST_SUBJECT_SEQUENCE: HeaderName =
        HeaderName::from_static(super::EXPECTED_LAST_SUBJECT_SEQUENCE);
    pub(super) const EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: HeaderName =
        HeaderName::from_static(super::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT);
    pub(super) const TTL: HeaderName = HeaderName::from_static(super::TTL);
    pub(super) const BATCH_ID: HeaderName = HeaderName::from_static(super::BATCH_ID);
    pub(super) const BATCH_SEQUENCE: HeaderName = HeaderName::from_static(super::BATCH_SEQUENCE);
    pub(super) const BATCH_COMMIT: HeaderName = HeaderName::from_static(super::BATCH_COMMIT);

    /// The first wire format's headers.
    pub(super) mod legacy {
        use super::super::legacy as text;
        use async_nats::header::HeaderName;

        pub(in super::super) const EVENT_TYPE: HeaderName =
            HeaderName::from_static(text::EVENT_TYPE);
        pub(in super::super) const SCHEMA_VERSION: HeaderName =
            HeaderName::from_static(text::SCHEMA_VERSION);
        pub(in super::super) const AGGREGATE_VERSION: HeaderName =
            HeaderName::from_static(text::AGGREGATE_VERSION);
        pub(in super::super) const CORRELATION_ID: HeaderName =
            HeaderName::from_static(text::CORRELATION_ID);
        pub(in super::super) const CAUSATION_ID: HeaderName =
            HeaderName::from_static(text::CAUSATION_ID);
        pub(in super::super) const COMMAND_ID: HeaderName =
            HeaderName::from_static(text::COMMAND_ID);
        pub(in super::super) const COMMAND_CAUSATION_ID: HeaderName =
            HeaderName::from_static(text::COMMAND_CAUSATION_ID);
        pub(in super::super) const ACTOR: HeaderName = HeaderName::from_static(text::ACTOR);
        pub(in super::super) const RECORDED_AT: HeaderName =
            HeaderName::from_static(text::RECORDED_AT);
    }
}

/// The headers a writer adds to an event's own headers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Control {
    /// `Nats-Expected-Last-Subject-Sequence`.
    ExpectedLastSubjectSequence,
    /// `Nats-Expected-Last-Subject-Sequence-Subject` (a stored subject made by the store).
    ExpectedLastSubjectSequenceSubject,
    /// `Nats-TTL`.
    Ttl,
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
            Self::ExpectedLastSubjectSequenceSubject => (
                name::EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
                EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
            ),
            Self::Ttl => (name::TTL, TTL),
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
        self.insert_trusted(name, name_text, value);
        Ok(())
    }

    /// Adds a header with a known-good name and a value made by the store (a number, a UUID,
    /// JSON, a constant), which cannot contain CR or LF.
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

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_one(schema: &u32) -> bool {
    *schema == 1
}

/// The envelope's `causation` field: left out when it is the command id, `null` for none.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Causation {
    /// Absent: the command id (none without one).
    #[default]
    SameAsCommand,
    /// `null`.
    Nothing,
    /// A UUID.
    Id(Uuid),
}

impl Causation {
    fn is_same_as_command(&self) -> bool {
        *self == Self::SameAsCommand
    }

    fn of(causation: Option<Uuid>, command: Option<Uuid>) -> Self {
        match (causation, command) {
            (causation, Some(command)) if causation == Some(command) => Self::SameAsCommand,
            (None, None) => Self::SameAsCommand,
            (None, Some(_)) => Self::Nothing,
            (Some(id), _) => Self::Id(id),
        }
    }

    fn resolve(self, command: Option<Uuid>) -> Option<Uuid> {
        match self {
            Self::SameAsCommand => command,
            Self::Nothing => None,
            Self::Id(id) => Some(id),
        }
    }
}

impl serde::Serialize for Causation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Id(id) => serializer.serialize_some(id),
            Self::SameAsCommand | Self::Nothing => serializer.serialize_none(),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Causation {
    /// Only called for a present field: `null` is [`Causation::Nothing`].
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(
            <Option<Uuid> as serde::Deserialize>::deserialize(deserializer)?
                .map_or(Self::Nothing, Self::Id),
        )
    }
}

/// `Cqrs-Envelope` as written: the defaults are left out.
#[derive(serde::Serialize)]
struct EnvelopeOut<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    #[serde(skip_serializing_if = "is_one")]
    schema: u32,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation: Option<Uuid>,
    #[serde(skip_serializing_if = "Causation::is_same_as_command")]
    causation: Causation,
    #[serde(skip_serializing_if = "Option::is_none")]
    command_causation: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<&'a str>,
    recorded_at: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    extra: &'a BTreeMap<String, String>,
}

/// `Cqrs-Envelope` as read.
#[derive(serde::Deserialize)]
struct EnvelopeIn<'a> {
    #[serde(rename = "type", borrow)]
    event_type: std::borrow::Cow<'a, str>,
    #[serde(default = "schema_one")]
    schema: u32,
    version: u64,
    #[serde(default)]
    command: Option<Uuid>,
    #[serde(default)]
    correlation: Option<Uuid>,
    #[serde(default)]
    causation: Causation,
    #[serde(default)]
    command_causation: Option<Uuid>,
    #[serde(default, borrow)]
    actor: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    recorded_at: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    extra: BTreeMap<String, String>,
}

fn schema_one() -> u32 {
    1
}

/// The headers of one event (without the expectation and batch headers). `recorded_at` is the
/// RFC 3339 time of the append, formatted once for all its events.
pub(crate) fn encode(
    event: &NewEvent,
    version: u64,
    recorded_at: &str,
) -> Result<HeaderBuilder, String> {
    let meta = &event.metadata;
    let command = meta.command_id;
    let envelope = EnvelopeOut {
        event_type: &event.payload.event_type,
        schema: event.payload.schema_version,
        version,
        command,
        correlation: (Some(meta.correlation_id) != command).then_some(meta.correlation_id),
        causation: Causation::of(meta.causation_id, command),
        command_causation: meta.command_causation_id,
        actor: meta.actor.as_deref(),
        recorded_at,
        extra: &meta.extra,
    };
    // JSON escapes every control character, so the value cannot hold CR or LF.
    let envelope = serde_json::to_string(&envelope)
        .map_err(|e| format!("the envelope cannot be written as JSON: {e}"))?;
    let mut h = HeaderBuilder::default();
    h.insert_trusted(name::MSG_ID, MSG_ID, uuid_text(&event.event_id));
    h.insert_trusted(name::ENVELOPE, ENVELOPE, envelope);
    if let Some(trace) = &meta.trace {
        h.insert_named(name::TRACEPARENT, TRACEPARENT, trace.clone())?;
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

/// A message a consumer delivered, in the form a direct get answers: its stream sequence and
/// timestamp come from the reply subject.
pub(crate) fn from_consumer(
    message: async_nats::jetstream::Message,
) -> Result<StreamMessage, String> {
    delivered(message).map(|delivered| delivered.message)
}

/// [`from_consumer`], with the number of messages the consumer still had pending after this
/// one (readers that stop at a head use it to know there is nothing more) and its number among
/// what the consumer delivered.
pub(crate) fn delivered(message: async_nats::jetstream::Message) -> Result<Delivered, String> {
    let info = message
        .info()
        .map_err(|e| format!("a consumer delivered a message without JetStream metadata: {e}"))?;
    let (sequence, pending, number, time) = (
        info.stream_sequence,
        info.pending,
        info.consumer_sequence,
        info.published,
    );
    let message = message.message;
    Ok(Delivered {
        message: StreamMessage {
            subject: message.subject,
            sequence,
            headers: message.headers.unwrap_or_default(),
            payload: message.payload,
            time,
        },
        pending,
        number,
    })
}

/// A message as a consumer delivered it.
pub(crate) struct Delivered {
    /// The stored message.
    pub(crate) message: StreamMessage,
    /// How many more the consumer held when it sent it.
    pub(crate) pending: u64,
    /// Its number among what the consumer delivered (1 for the first).
    pub(crate) number: u64,
}

/// The fields of an envelope, whichever wire format carried them.
struct Fields {
    event_type: String,
    schema_version: u32,
    version: u64,
    recorded_at: Option<OffsetDateTime>,
    metadata: Metadata,
}

/// The aggregate a stored subject names.
type Aggregate = (Option<String>, String, String);

/// Reads the event in `message`, a message of the aggregate stream subject `message.subject`.
pub(crate) fn decode(
    subjects: &Subjects,
    message: &StreamMessage,
) -> Result<RecordedEvent, StoreError> {
    Decoder::new(subjects).decode(message)
}

/// Reads the events of one aggregate's messages, parsing their subject once rather than per
/// message.
pub(crate) struct Decoder<'a> {
    subjects: &'a Subjects,
    last: Option<(async_nats::Subject, Aggregate)>,
}

impl<'a> Decoder<'a> {
    pub(crate) fn new(subjects: &'a Subjects) -> Self {
        Self {
            subjects,
            last: None,
        }
    }

    /// [`decode`], reusing the aggregate of the previous message when the subject is the same.
    pub(crate) fn decode(&mut self, message: &StreamMessage) -> Result<RecordedEvent, StoreError> {
        let aggregate = match &self.last {
            Some((subject, aggregate)) if *subject == message.subject => aggregate.clone(),
            _ => {
                let aggregate = self.subjects.parse(message.subject.as_str()).map_err(|e| {
                    StoreError::MalformedEnvelope {
                        position: message.sequence,
                        reason: e.to_string(),
                    }
                })?;
                self.last = Some((message.subject.clone(), aggregate.clone()));
                aggregate
            }
        };
        decode_of(aggregate, message, self.subjects.stream())
    }
}

/// Reads the event in `message` of aggregate `aggregate`, from the stream named `store`.
fn decode_of(
    aggregate: Aggregate,
    message: &StreamMessage,
    store: &std::sync::Arc<str>,
) -> Result<RecordedEvent, StoreError> {
    let position = message.sequence;
    let malformed = |reason: String| StoreError::MalformedEnvelope { position, reason };
    let (tenant, aggregate_type, aggregate_id) = aggregate;
    let event_id = header(message, name::MSG_ID)
        .ok_or_else(|| malformed(format!("header `{MSG_ID}` is missing")))?;
    let event_id = Uuid::parse_str(event_id).map_err(|e| {
        malformed(format!(
            "header `{MSG_ID}` is not a UUID ({event_id:?}): {e}"
        ))
    })?;
    let fields = match header(message, name::ENVELOPE) {
        Some(envelope) => envelope_fields(envelope),
        None => legacy_fields(message),
    }
    .map_err(malformed)?;
    if fields.version == 0 {
        return Err(malformed(
            "the aggregate version is 0; versions start at 1".to_owned(),
        ));
    }
    let mut metadata = fields.metadata;
    metadata.tenant = tenant;
    metadata.trace = header(message, name::TRACEPARENT).map(str::to_owned);
    Ok(EventEnvelope {
        event_id,
        aggregate_type,
        aggregate_id,
        version: fields.version,
        position,
        recorded_at: fields.recorded_at.unwrap_or(message.time),
        metadata,
        payload: SerializedEvent {
            event_type: fields.event_type,
            schema_version: fields.schema_version,
            data: message.payload.to_vec(),
        },
        erased: Vec::new(),
        store: Some(std::sync::Arc::clone(store)),
    })
}

fn parse_time(value: &str, what: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(value, &Rfc3339)
        .map_err(|e| format!("{what} is not an RFC 3339 time ({value:?}): {e}"))
}

/// The fields of a `Cqrs-Envelope` header.
fn envelope_fields(envelope: &str) -> Result<Fields, String> {
    let e: EnvelopeIn<'_> = serde_json::from_str(envelope)
        .map_err(|error| format!("header `{ENVELOPE}` is not a valid envelope: {error}"))?;
    let correlation_id = e.correlation.or(e.command).ok_or_else(|| {
        format!("header `{ENVELOPE}` names neither a correlation id nor a command id")
    })?;
    Ok(Fields {
        event_type: e.event_type.into_owned(),
        schema_version: e.schema,
        version: e.version,
        recorded_at: e
            .recorded_at
            .map(|at| parse_time(&at, "`recorded_at`"))
            .transpose()?,
        metadata: Metadata {
            correlation_id,
            causation_id: e.causation.resolve(e.command),
            command_id: e.command,
            command_causation_id: e.command_causation,
            tenant: None,
            actor: e.actor.map(std::borrow::Cow::into_owned),
            trace: None,
            extra: e.extra,
        },
    })
}

/// The fields of a message in the first wire format, one header per field.
fn legacy_fields(message: &StreamMessage) -> Result<Fields, String> {
    use name::legacy as n;
    let required = |name: HeaderName| {
        let missing = || format!("header `{name}` is missing (and there is no `{ENVELOPE}`)");
        header(message, name.clone()).ok_or_else(missing)
    };
    let uuid = |name: HeaderName, value: &str| {
        Uuid::parse_str(value)
            .map_err(|e| format!("header `{name}` is not a UUID ({value:?}): {e}"))
    };
    let optional_uuid = |name: HeaderName| {
        header(message, name.clone())
            .map(|v| uuid(name, v))
            .transpose()
    };
    let event_type = required(n::EVENT_TYPE)?.to_owned();
    let schema_version = required(n::SCHEMA_VERSION)?;
    let schema_version: u32 = schema_version.parse().map_err(|_| {
        format!(
            "header `{}` is not a version number ({schema_version:?})",
            legacy::SCHEMA_VERSION
        )
    })?;
    let version = required(n::AGGREGATE_VERSION)?;
    let version: u64 = version.parse().map_err(|_| {
        format!(
            "header `{}` is not a version number ({version:?})",
            legacy::AGGREGATE_VERSION
        )
    })?;
    let correlation_id = uuid(n::CORRELATION_ID, required(n::CORRELATION_ID)?)?;
    let recorded_at = header(message, n::RECORDED_AT)
        .map(|value| parse_time(value, &format!("header `{}`", legacy::RECORDED_AT)))
        .transpose()?;
    let mut extra = BTreeMap::new();
    for (name, values) in message.headers.iter() {
        if let Some(key) = AsRef::<str>::as_ref(name).strip_prefix(legacy::EXTRA_PREFIX)
            && let Some(value) = values.last()
        {
            extra.insert(key.to_owned(), value.as_str().to_owned());
        }
    }
    Ok(Fields {
        event_type,
        schema_version,
        version,
        recorded_at,
        metadata: Metadata {
            correlation_id,
            causation_id: optional_uuid(n::CAUSATION_ID)?,
            command_id: optional_uuid(n::COMMAND_ID)?,
            command_causation_id: optional_uuid(n::COMMAND_CAUSATION_ID)?,
            tenant: None,
            actor: header(message, n::ACTOR).map(str::to_owned),
            trace: None,
            extra,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_refused() {
        let mut h = HeaderBuilder::default();
        let trace = "00-a\r\nNats-Msg-Id: x".to_owned();
        assert!(
            h.insert_named(name::TRACEPARENT, TRACEPARENT, trace)
                .is_err()
        );
        h.control(Control::BatchCommit, "1".to_owned());
        assert_eq!(h.wire_len(), 12 + BATCH_COMMIT.len() + 1 + 4);
    }

    fn message(headers: HeaderMap) -> StreamMessage {
        StreamMessage {
            subject: "ctx.events.1._.Order.o-1".into(),
            sequence: 9,
            headers,
            payload: b"{}".to_vec().into(),
            time: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn round_trip(metadata: Metadata, schema_version: u32) -> (RecordedEvent, HeaderMap) {
        let event = NewEvent::new(
            Uuid::now_v7(),
            SerializedEvent {
                event_type: "Submitted".to_owned(),
                schema_version,
                data: b"{}".to_vec(),
            },
            metadata,
        );
        let at = rfc3339(OffsetDateTime::now_utc()).unwrap();
        let headers = encode(&event, 4, &at).unwrap().build();
        let subjects = Subjects::new("ctx").unwrap();
        let decoded = decode(&subjects, &message(headers.clone())).unwrap();
        assert_eq!(decoded.event_id, event.event_id);
        assert_eq!(decoded.version, 4);
        assert_eq!(decoded.payload, event.payload);
        assert_eq!(decoded.metadata, event.metadata);
        assert_eq!(rfc3339(decoded.recorded_at).unwrap(), at);
        (decoded, headers)
    }

    /// Every metadata shape survives the envelope, whatever it leaves out.
    #[test]
    fn envelopes_round_trip() {
        let command = cqrs_core::CommandMetadata::root().with_actor("user:1");
        let (_, headers) = round_trip(command.event_metadata(), 1);
        // A root command's event: correlation and causation are the command id, schema 1.
        let envelope = headers.get(ENVELOPE).unwrap().as_str().to_owned();
        assert!(!envelope.contains("correlation") && !envelope.contains("causation"));
        assert!(!envelope.contains("schema"), "{envelope}");
        assert_eq!(headers.iter().count(), 2, "{headers:?}");

        let trigger = Uuid::now_v7();
        let mut caused = cqrs_core::CommandMetadata::caused_by(&command.event_metadata(), trigger)
            .event_metadata();
        caused.trace = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
        caused
            .extra
            .insert("weird: key\r\n é".to_owned(), "v\n".to_owned());
        round_trip(caused, 3);

        let mut standalone = Metadata::standalone();
        standalone.command_id = Some(Uuid::now_v7());
        standalone.causation_id = None;
        round_trip(standalone.clone(), 1);
        standalone.command_id = None;
        standalone.causation_id = Some(Uuid::now_v7());
        round_trip(standalone, 1);
        round_trip(Metadata::standalone(), 1);
    }

    #[test]
    fn legacy_messages_are_read() {
        let id = "01a2191e-50b1-7606-b1ae-cbb292074ef1";
        let mut map = HeaderMap::new();
        for (name, value) in [
            (MSG_ID, id),
            (legacy::EVENT_TYPE, "Submitted"),
            (legacy::SCHEMA_VERSION, "2"),
            (legacy::AGGREGATE_VERSION, "3"),
            (legacy::CORRELATION_ID, id),
            (legacy::ACTOR, "user:1"),
            ("Cqrs-Extra-k", "v"),
        ] {
            map.insert(name, value);
        }
        let event = decode(&Subjects::new("ctx").unwrap(), &message(map)).unwrap();
        assert_eq!(
            (
                event.version,
                event.payload.schema_version,
                event.recorded_at
            ),
            (3, 2, OffsetDateTime::UNIX_EPOCH)
        );
        assert_eq!(event.metadata.actor.as_deref(), Some("user:1"));
        assert_eq!(event.metadata.extra.get("k").map(String::as_str), Some("v"));
    }

    mod hostile {
        use super::super::*;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            MSG_ID,
            ENVELOPE,
            ENVELOPE,
            legacy::EVENT_TYPE,
            legacy::SCHEMA_VERSION,
            legacy::AGGREGATE_VERSION,
            legacy::CORRELATION_ID,
            legacy::CAUSATION_ID,
            legacy::COMMAND_ID,
            legacy::COMMAND_CAUSATION_ID,
            legacy::ACTOR,
            legacy::RECORDED_AT,
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
                Just(r#"{"type":"E","version":1,"command":"01a2191e-50b1-7606-b1ae-cbb292074ef1"}"#.to_owned()),
                Just(r#"{"type":"E","version":0,"correlation":"01a2191e-50b1-7606-b1ae-cbb292074ef1"}"#.to_owned()),
                Just(r#"{"type":"E","version":2,"command":"01a2191e-50b1-7606-b1ae-cbb292074ef1","causation":null,"recorded_at":"2026-13-45T99:00:00Z"}"#.to_owned()),
                Just(r#"{"type":"E","version":-1}"#.to_owned()),
                Just(r#"{"type":7,"version":1,"extra":{"a":1}}"#.to_owned()),
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
                let mut published = format!("ctx.events.{tenant}.Order.{id}");
                for _ in 0..extra_tokens {
                    published.push_str(".x");
                }
                // As the stream stores it, with its partition token (when it is an aggregate's).
                let subject = subjects.stored(&published).unwrap_or(published);
                let mut map = HeaderMap::new();
                if valid_base {
                    // A well-formed event that the random headers then partly overwrite.
                    let id = "01a2191e-50b1-7606-b1ae-cbb292074ef1";
                    for (name, value) in [
                        (MSG_ID, id),
                        (legacy::EVENT_TYPE, "Submitted"),
                        (legacy::SCHEMA_VERSION, "1"),
                        (legacy::AGGREGATE_VERSION, "1"),
                        (legacy::CORRELATION_ID, id),
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
                        // The aggregate is the one the subject names (tokens can shift into a
                        // valid subject of another aggregate), and maps back onto it.
                        let named = subjects.parse(&subject).unwrap();
                        prop_assert_eq!(
                            (&event.metadata.tenant, &event.aggregate_type, &event.aggregate_id),
                            (&named.0, &named.1, &named.2)
                        );
                        let tenant = event.metadata.tenant.as_deref();
                        let again = subjects
                            .aggregate(tenant, &event.aggregate_type, &event.aggregate_id)
                            .and_then(|published| subjects.stored(&published))
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
