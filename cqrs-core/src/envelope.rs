//! Event envelopes: a payload with its identity, place in the stream and metadata.

use crate::event::{DecodeError, DomainEvent, EncodeError};
use crate::metadata::Metadata;
use crate::personal::PersonalField;
use crate::stream::{StreamId, StreamPosition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::OffsetDateTime;
use uuid::Uuid;

/// An event as stored: its identity, where it sits, when and why it was recorded, and the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<E> {
    /// Unique id of the event (UUID v7, or derived from an idempotency key).
    pub event_id: Uuid,
    /// Aggregate type name.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// 1-based version of the aggregate after this event.
    pub version: u64,
    /// Store-wide position (the stream sequence on JetStream).
    pub position: u64,
    /// When the event was recorded.
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// Correlation, causation, tenant, actor and trace context.
    pub metadata: Metadata,
    /// The event itself.
    pub payload: E,
    /// The personal-data fields of `payload` whose data subject was forgotten: they hold the
    /// replacement `#[personal(replacement = ..)]` declares, not what was written. Empty for
    /// most events; not stored — a reader fills it when it opens the event
    /// ([`personal`](crate::personal)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erased: Vec<String>,
    /// The store the event was read from (JetStream: the stream's name, `EVENTS_<CONTEXT>`), as
    /// its reader names it — positions are only comparable within one store; see
    /// [`SeenPosition`](crate::SeenPosition). Not stored; `None` when the reader does not say
    /// (the in-memory store, whose positions no other copy serves behind).
    #[serde(skip)]
    pub store: Option<Arc<str>>,
}

impl<E> EventEnvelope<E> {
    /// The stream this event belongs to.
    pub fn stream_id(&self) -> StreamId {
        StreamId::new(&self.aggregate_type, &self.aggregate_id)
            .with_optional_tenant(self.metadata.tenant.clone())
    }

    /// Where a reader stands after this event.
    pub fn stream_position(&self) -> StreamPosition {
        StreamPosition {
            version: self.version,
            position: self.position,
        }
    }

    /// Replaces the payload, keeping everything else.
    pub fn map<F, T>(self, f: F) -> EventEnvelope<T>
    where
        F: FnOnce(E) -> T,
    {
        EventEnvelope {
            event_id: self.event_id,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            version: self.version,
            position: self.position,
            recorded_at: self.recorded_at,
            metadata: self.metadata,
            payload: f(self.payload),
            erased: self.erased,
            store: self.store,
        }
    }
}

/// An event body as stored: type name, schema version and JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerializedEvent {
    /// Stable type name.
    pub event_type: String,
    /// Schema version the body was written with.
    pub schema_version: u32,
    /// JSON body.
    pub data: Vec<u8>,
}

impl SerializedEvent {
    /// Encodes a domain event.
    pub fn encode<E: DomainEvent>(event: &E) -> Result<Self, EncodeError> {
        Ok(Self {
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            data: event.encode()?,
        })
    }

    /// Decodes into the current shape of `E`, upcasting older versions.
    pub fn decode<E: DomainEvent>(&self) -> Result<E, DecodeError> {
        E::decode(&self.event_type, self.schema_version, &self.data)
    }
}

/// A stored event whose payload is not decoded yet.
pub type RecordedEvent = EventEnvelope<SerializedEvent>;

impl RecordedEvent {
    /// Decodes the payload as `E`, keeping the envelope.
    pub fn decode<E: DomainEvent>(&self) -> Result<EventEnvelope<E>, DecodeError> {
        let payload = self.payload.decode()?;
        Ok(self.clone().map(|_| payload))
    }
}

/// An event about to be appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Its id (becomes `Nats-Msg-Id` on JetStream).
    pub event_id: Uuid,
    /// The serialised body.
    pub payload: SerializedEvent,
    /// Its metadata.
    pub metadata: Metadata,
    /// The fields of the body that hold personal data and are still in the clear: a
    /// [`PersonalDataStore`](crate::personal::PersonalDataStore) seals them and empties this;
    /// every store refuses to write an event where it is not empty.
    #[serde(skip)]
    pub personal: &'static [PersonalField],
}

impl NewEvent {
    /// An event body under the given id and metadata, with no personal fields to seal.
    pub fn new(event_id: Uuid, payload: SerializedEvent, metadata: Metadata) -> Self {
        Self {
            event_id,
            payload,
            metadata,
            personal: &[],
        }
    }

    /// Encodes `event` under the given id and metadata, noting its personal fields.
    pub fn encode<E: DomainEvent>(
        event: &E,
        event_id: Uuid,
        metadata: Metadata,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            event_id,
            payload: SerializedEvent::encode(event)?,
            metadata,
            personal: event.personal_fields(),
        })
    }
}
