//! The dead-letter stream: events a projection gave up on.
//!
//! One stream per bounded context, `DEADLETTER_<CONTEXT>` on `<context>.deadletter.>` (file
//! storage, direct gets, deletes allowed so that a successfully replayed event can be removed).
//! A parked event goes to `<context>.deadletter.<projection>` as a copy of the original message:
//! the same payload, every original header (those of the server's `Nats-` namespace renamed to
//! `Cqrs-Original-Nats-...` so that the dead-letter stream does not act on them, e.g.
//! deduplicate on `Nats-Msg-Id`), plus:
//!
//! | Header | Value |
//! |---|---|
//! | `Cqrs-Parked-Projection` | the projection's name |
//! | `Cqrs-Parked-Error` | the last error (CR/LF replaced by spaces, cut to 2048 bytes) |
//! | `Cqrs-Parked-Attempts` | how many attempts were made |
//! | `Cqrs-Parked-At` | RFC 3339 time of parking |
//! | `Cqrs-Parked-Subject` | the original subject |
//! | `Cqrs-Parked-Sequence` | the original stream sequence (the event's position) |
//! | `Cqrs-Parked-Published` | RFC 3339 time the original was stored |
//!
//! A message that could not even be decoded (garbage headers from another client) is parked the
//! same way; listing shows it as a [`DeadLetter`] without an event.

use crate::headers;
use crate::store::{unavailable, unavailable_because};
use crate::subject::{Subjects, validate_name};
use async_nats::HeaderMap;
use async_nats::header::{HeaderName, HeaderValue};
use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use cqrs_core::projection::ParkedEvent;
use cqrs_core::{RecordedEvent, StoreError};
use futures::StreamExt;
use std::str::FromStr;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `Cqrs-Parked-Projection`.
pub const PARKED_PROJECTION: &str = "Cqrs-Parked-Projection";
/// `Cqrs-Parked-Error`.
pub const PARKED_ERROR: &str = "Cqrs-Parked-Error";
/// `Cqrs-Parked-Attempts`.
pub const PARKED_ATTEMPTS: &str = "Cqrs-Parked-Attempts";
/// `Cqrs-Parked-At`.
pub const PARKED_AT: &str = "Cqrs-Parked-At";
/// `Cqrs-Parked-Subject`.
pub const PARKED_SUBJECT: &str = "Cqrs-Parked-Subject";
/// `Cqrs-Parked-Sequence`.
pub const PARKED_SEQUENCE: &str = "Cqrs-Parked-Sequence";
/// `Cqrs-Parked-Published`.
pub const PARKED_PUBLISHED: &str = "Cqrs-Parked-Published";
/// Prefix under which original `Nats-` headers are kept.
pub const ORIGINAL_PREFIX: &str = "Cqrs-Original-";

const OP: &str = "dead letters";

/// One parked message, as stored in the dead-letter stream.
#[derive(Debug)]
pub struct DeadLetter {
    /// Its sequence in the dead-letter stream (what [`DeadLetters::remove`] takes).
    pub sequence: u64,
    /// The projection that parked it.
    pub projection: String,
    /// The original subject.
    pub subject: String,
    /// The original stream sequence: the event's position.
    pub position: u64,
    /// The last error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was parked.
    pub parked_at: OffsetDateTime,
    /// The event, or why the original message is not a readable event.
    pub event: Result<RecordedEvent, StoreError>,
}

impl DeadLetter {
    /// As the core's [`ParkedEvent`], if the original message is a readable event.
    pub fn parked_event(&self) -> Option<ParkedEvent> {
        let event = self.event.as_ref().ok()?;
        Some(ParkedEvent {
            projection: self.projection.clone(),
            event: event.clone(),
            error: self.error.clone(),
            attempts: self.attempts,
            parked_at: self.parked_at,
        })
    }
}

/// The dead-letter stream of one context.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    subjects: Subjects,
    stream_name: String,
}

/// Longest header value written (an error can be long; a header block has to fit a message).
const MAX_VALUE_LEN: usize = 2048;

/// `value` on one line, cut to [`MAX_VALUE_LEN`] bytes at a character boundary.
fn sanitize(value: &str) -> String {
    let mut end = value.len().min(MAX_VALUE_LEN);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    value[..end].replace(['\r', '\n'], " ")
}

impl DeadLetters {
    /// The stream name of context `context`: `DEADLETTER_<CONTEXT>`.
    pub fn stream_name_for(context: &str) -> String {
        crate::layout::deadletter_stream(context)
    }

    /// Creates the context's dead-letter stream, or verifies that the existing one listens on
    /// `<context>.deadletter.>`.
    pub async fn provision(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let name = Self::stream_name_for(subjects.context());
        let wanted = format!("{}.deadletter.>", subjects.context());
        let existing = match js.get_stream(&name).await {
            Ok(stream) => Some(stream),
            Err(e) if crate::error::is_stream_not_found(&e) => None,
            Err(e) => return Err(unavailable_because(OP, "getting the dead-letter stream", e)),
        };
        let stream = if let Some(stream) = existing {
            stream
        } else {
            {
                let created = js
                    .create_stream(stream::Config {
                        name: name.clone(),
                        subjects: vec![wanted.clone()],
                        description: Some(format!(
                            "Events parked by projections of context {}",
                            subjects.context()
                        )),
                        storage: stream::StorageType::File,
                        num_replicas: replicas.max(1),
                        allow_direct: true,
                        ..Default::default()
                    })
                    .await;
                match created {
                    Ok(stream) => stream,
                    Err(create_error) => js
                        .get_stream(&name)
                        .await
                        .map_err(|_| unavailable(OP, create_error))?,
                }
            }
        };
        let have = &stream.cached_info().config.subjects;
        if have != &vec![wanted.clone()] {
            return Err(StoreError::Backend {
                operation: OP,
                source: format!(
                    "stream `{name}` exists on subjects {have:?}, expected [{wanted:?}]; fix it by hand"
                )
                .into(),
            });
        }
        Ok(Self {
            js: js.clone(),
            subjects: subjects.clone(),
            stream_name: name,
        })
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.stream_name
    }

    /// `<context>.deadletter.<projection>`.
    pub fn subject(&self, projection: &str) -> Result<String, StoreError> {
        validate_name("projection", projection).map_err(|e| StoreError::Backend {
            operation: OP,
            source: Box::new(e),
        })?;
        Ok(format!(
            "{}.deadletter.{projection}",
            self.subjects.context()
        ))
    }

    /// Parks a copy of `original` for `projection` with the error and attempt count; returns
    /// once the dead-letter stream stored it.
    pub async fn park(
        &self,
        projection: &str,
        original: &StreamMessage,
        error: &str,
        attempts: u32,
    ) -> Result<u64, StoreError> {
        let subject = self.subject(projection)?;
        let mut map = HeaderMap::new();
        for (name, values) in original.headers.iter() {
            let name: &str = name.as_ref();
            let kept = if name.starts_with("Nats-") || name.starts_with("nats-") {
                format!("{ORIGINAL_PREFIX}{name}")
            } else {
                name.to_owned()
            };
            let Ok(kept) = HeaderName::from_str(&kept) else {
                continue;
            };
            for value in values {
                map.append(kept.clone(), value.clone());
            }
        }
        let now = OffsetDateTime::now_utc();
        let mut set = |name: &'static str, value: String| {
            if let Ok(value) = HeaderValue::from_str(&sanitize(&value)) {
                map.insert(name, value);
            }
        };
        set(PARKED_PROJECTION, projection.to_owned());
        set(PARKED_ERROR, error.to_owned());
        set(PARKED_ATTEMPTS, attempts.to_string());
        set(PARKED_AT, now.format(&Rfc3339).unwrap_or_default());
        set(PARKED_SUBJECT, original.subject.to_string());
        set(PARKED_SEQUENCE, original.sequence.to_string());
        set(
            PARKED_PUBLISHED,
            original.time.format(&Rfc3339).unwrap_or_default(),
        );
        let ack = self
            .js
            .publish_with_headers(subject, map, original.payload.clone())
            .await
            .map_err(|e| unavailable_because(OP, "parking the event", e))?
            .await
            .map_err(|e| unavailable_because(OP, "parking the event", e))?;
        Ok(ack.sequence)
    }

    /// Every message parked by `projection`, oldest first.
    pub async fn list(&self, projection: &str) -> Result<Vec<DeadLetter>, StoreError> {
        let subject = self.subject(projection)?;
        let stream = self
            .js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| unavailable_because(OP, "getting the dead-letter stream", e))?;
        let head = stream.cached_info().state.last_sequence;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: subject,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable_because(OP, "creating the consumer", e))?;
        let mut remaining = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if remaining == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable_because(OP, "reading the consumer", e))?;
        while remaining > 0 {
            let Some(message) = messages.next().await else {
                return Err(unavailable(OP, "the consumer ended early"));
            };
            let message =
                message.map_err(|e| unavailable_because(OP, "reading the consumer", e))?;
            let info = message
                .info()
                .map_err(|e| unavailable_because(OP, "reading the message metadata", e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            out.push(self.read(sequence, message.message.headers.as_ref(), &message.payload));
            remaining = pending;
            if sequence >= head {
                break;
            }
        }
        Ok(out)
    }

    fn read(&self, sequence: u64, stored: Option<&HeaderMap>, payload: &Bytes) -> DeadLetter {
        let stored = stored.cloned().unwrap_or_default();
        let get = |name: &str| {
            stored
                .get_last(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let time = |name: &str| {
            OffsetDateTime::parse(&get(name), &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let subject = get(PARKED_SUBJECT);
        let position = get(PARKED_SEQUENCE).parse().unwrap_or(0);
        let mut original = HeaderMap::new();
        for (name, values) in stored.iter() {
            let name: &str = name.as_ref();
            if name.starts_with("Cqrs-Parked-") {
                continue;
            }
            let restored = name.strip_prefix(ORIGINAL_PREFIX).unwrap_or(name);
            let Ok(restored) = HeaderName::from_str(restored) else {
                continue;
            };
            for value in values {
                original.append(restored.clone(), value.clone());
            }
        }
        let message = StreamMessage {
            subject: subject.clone().into(),
            sequence: position,
            headers: original,
            payload: payload.clone(),
            time: time(PARKED_PUBLISHED),
        };
        DeadLetter {
            sequence,
            projection: get(PARKED_PROJECTION),
            position,
            error: get(PARKED_ERROR),
            attempts: get(PARKED_ATTEMPTS).parse().unwrap_or(0),
            parked_at: time(PARKED_AT),
            event: headers::decode(&self.subjects, &message),
            subject,
        }
    }

    /// Removes the parked message at dead-letter sequence `sequence` (after a successful
    /// replay).
    pub async fn remove(&self, sequence: u64) -> Result<(), StoreError> {
        let stream = self
            .js
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| unavailable_because(OP, "getting the dead-letter stream", e))?;
        stream
            .delete_message(sequence)
            .await
            .map_err(|e| unavailable_because(OP, "deleting the dead letter", e))?;
        Ok(())
    }
}
