//! Appends: prepare the messages, publish them (one message or an atomic batch), and resolve
//! every failure to a commit, a typed error or a retry.

use super::failure::{
    ApiErrorReply, Cause, Failure, backend, classify_code, classify_publish, classify_request,
    unavailable_because,
};
use super::{JetStreamEventStore, MAX_BATCH};
use crate::headers::{self, Control, HeaderBuilder};
use crate::permissions::api;
use async_nats::jetstream;
use cqrs_core::{Committed, ExpectedVersion, NewEvent, RecordedEvent, StoreError, StreamId};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// One event ready to go out.
pub(super) struct Outgoing {
    pub(super) headers: HeaderBuilder,
    pub(super) payload: Vec<u8>,
}

/// A message of a batch: the subject it is published to, its headers and its body.
pub(super) type Message<'s> = (&'s str, HeaderBuilder, Vec<u8>);

impl JetStreamEventStore {
    fn check_size(&self, stream: &StreamId, outgoing: &Outgoing) -> Result<(), StoreError> {
        let max = self.inner.client.max_payload();
        // Room for the expectation and batch headers added later.
        let size = outgoing.headers.wire_len() + 200 + outgoing.payload.len();
        if max > 0 && size > max {
            return Err(StoreError::InvalidInput {
                stream: stream.clone(),
                reason: format!(
                    "an event of {size} bytes (headers and body) exceeds the server's max_payload of {max} bytes; store large data elsewhere and reference it"
                ),
            });
        }
        if outgoing.headers.wire_len() + 200 > usize::from(u16::MAX) {
            return Err(StoreError::InvalidInput {
                stream: stream.clone(),
                reason: "the event's headers exceed 65535 bytes; carry less metadata".to_owned(),
            });
        }
        Ok(())
    }

    pub(super) fn prepare(
        &self,
        stream: &StreamId,
        events: &[NewEvent],
        after_version: u64,
        recorded_at: OffsetDateTime,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let invalid = |reason| StoreError::InvalidInput {
            stream: stream.clone(),
            reason,
        };
        cqrs_core::personal::ensure_sealed(stream, events)?;
        let recorded_at = headers::rfc3339(recorded_at).map_err(invalid)?;
        (after_version + 1..)
            .zip(events)
            .map(|(version, event)| {
                let headers = headers::encode(event, version, &recorded_at).map_err(invalid)?;
                let outgoing = Outgoing {
                    headers,
                    payload: event.payload.data.clone(),
                };
                self.check_size(stream, &outgoing)?;
                Ok(outgoing)
            })
            .collect()
    }

    /// Sends `outgoing` with the expectation `expected_seq`; returns the sequence of the first
    /// stored message and whether the server reported a duplicate.
    async fn publish(
        &self,
        subject: &str,
        outgoing: Vec<Outgoing>,
        expected_seq: u64,
    ) -> Result<(u64, bool), Failure> {
        let mut messages: Vec<Message> = outgoing
            .into_iter()
            .map(|o| (subject, o.headers, o.payload))
            .collect();
        if let Some((_, first, _)) = messages.first_mut() {
            first.control(
                Control::ExpectedLastSubjectSequence,
                expected_seq.to_string(),
            );
        }
        self.send_batch(messages).await
    }

    /// Runs `publish` to `subjects` under the connection's permission watch: a refused publish is
    /// [`Failure::PermissionDenied`] at once, as any other failure of the publish is.
    pub(super) async fn guarded_publish<T>(
        &self,
        subjects: &[&str],
        publish: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        self.inner
            .guard
            .run(subjects, publish)
            .await
            .unwrap_or_else(|v| Err(Failure::PermissionDenied(v.to_string())))
    }

    /// Sends `messages` (subject, headers with any expectation, payload): one message alone, or
    /// several as one atomic batch, whose messages may go to different subjects of the stream.
    /// Returns the sequence of the first stored message and whether the server reported a
    /// duplicate.
    pub(super) async fn send_batch(
        &self,
        messages: Vec<Message<'_>>,
    ) -> Result<(u64, bool), Failure> {
        let count = messages.len() as u64;
        let mut messages = messages.into_iter();
        if count == 1 {
            let Some((subject, headers, payload)) = messages.next() else {
                return Err(Failure::Backend("empty append".into()));
            };
            return self.send_commit(subject, headers, payload, count).await;
        }
        let batch_id = Uuid::now_v7().simple().to_string();
        let mut last = None;
        for (index, (subject, mut h, payload)) in messages.enumerate() {
            h.control(Control::BatchId, batch_id.clone());
            h.control(Control::BatchSequence, (index + 1).to_string());
            if index as u64 + 1 == count {
                h.control(Control::BatchCommit, "1".to_owned());
                last = Some((subject, h, payload));
            } else if index == 0 {
                // Asked, so that a batch refused at its first message fails at once.
                let request = async_nats::Request::new()
                    .headers(h.build())
                    .payload(payload.into())
                    .timeout(Some(self.inner.config.request_timeout));
                let reply = self
                    .inner
                    .client
                    .send_request(subject.to_owned(), request)
                    .await
                    .map_err(classify_request)?;
                if !reply.payload.is_empty() {
                    let reply: ApiErrorReply = serde_json::from_slice(&reply.payload)
                        .map_err(|e| Failure::Backend(e.into()))?;
                    let text = format!(
                        "{} (code {}, error code {})",
                        reply.error.description, reply.error.code, reply.error.err_code
                    );
                    return Err(classify_code(reply.error.err_code, text));
                }
            } else {
                self.inner
                    .client
                    .publish_with_headers(subject.to_owned(), h.build(), payload.into())
                    .await
                    .map_err(|e| {
                        Failure::Unavailable(Cause::because(
                            "a message of the batch could not be sent",
                            e,
                        ))
                    })?;
            }
        }
        let Some((subject, h, payload)) = last else {
            return Err(Failure::Backend("batch without a commit message".into()));
        };
        self.send_commit(subject, h, payload, count).await
    }

    async fn send_commit(
        &self,
        subject: &str,
        headers: HeaderBuilder,
        payload: Vec<u8>,
        count: u64,
    ) -> Result<(u64, bool), Failure> {
        let message = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers.build());
        let ack = self
            .inner
            .js
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(classify_publish)?
            .await
            .map_err(classify_publish)?;
        if ack.duplicate {
            return Ok((ack.sequence, true));
        }
        if count > 1 && ack.batch_size != Some(count) {
            tracing::warn!(
                expected = count,
                acknowledged = ?ack.batch_size,
                "atomic batch acknowledged with an unexpected size"
            );
        }
        Ok((ack.sequence + 1 - count, false))
    }

    /// The original commit of the event ids `ids` on `subject`, if it exists.
    pub(super) async fn original(
        &self,
        subject: &str,
        ids: &[Uuid],
    ) -> Result<Option<Committed>, StoreError> {
        Ok(self
            .inner
            .find_ids(subject, ids)
            .await?
            .map(|events| Committed {
                events,
                duplicate: true,
            }))
    }

    /// Resolves a duplicate ack that points at `sequence`.
    async fn resolve_duplicate(
        &self,
        stream: &StreamId,
        subject: &str,
        sequence: u64,
        ids: &[Uuid],
    ) -> Result<Committed, StoreError> {
        let scoped = self.inner.config.scoped_reads;
        if scoped && let Some(committed) = self.original(subject, ids).await? {
            return Ok(committed);
        }
        let api = api::msg_get(self.inner.stream_name());
        let read = self.inner.stream.get_raw_message(sequence);
        let message = match self.inner.guard.run(&[&api], read).await {
            Ok(read) => read.map_err(|e| {
                unavailable_because("append", "reading the message the duplicate points at", e)
            }),
            Err(violation) => Err(self.inner.denied("append", subject, &violation)),
        };
        let message = match message {
            Ok(message) => message,
            // The message is not on this aggregate's subject, and a tenant may not read by
            // sequence (it may be another tenant's): the key was used elsewhere. Where it may,
            // the answer names the aggregate that has the key.
            Err(_) if scoped => {
                return Err(StoreError::IdempotencyKeyReused {
                    key: ids.first().map(Uuid::to_string).unwrap_or_default(),
                    stream: stream.clone(),
                    original: StreamId::new("?", format!("stream sequence {sequence}")),
                });
            }
            Err(e) => return Err(e),
        };
        if message.subject.as_str() != subject {
            let original = match self.inner.subjects.parse(message.subject.as_str()) {
                Ok((tenant, aggregate_type, aggregate_id)) => {
                    StreamId::new(aggregate_type, aggregate_id).with_optional_tenant(tenant)
                }
                Err(_) => StreamId::new("?", message.subject.to_string()),
            };
            return Err(StoreError::IdempotencyKeyReused {
                key: ids.first().map(Uuid::to_string).unwrap_or_default(),
                stream: stream.clone(),
                original,
            });
        }
        match self.original(subject, ids).await? {
            Some(committed) => Ok(committed),
            None => Ok(Committed {
                events: vec![headers::decode(&self.inner.subjects, &message)?],
                duplicate: true,
            }),
        }
    }

    pub(super) async fn append_inner(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Committed, StoreError> {
        if events.is_empty() {
            return Err(StoreError::empty_append(stream));
        }
        if events.len() > MAX_BATCH {
            return Err(StoreError::TooManyEvents {
                stream: stream.clone(),
                count: events.len(),
                max: MAX_BATCH,
            });
        }
        // Published to the aggregate's subject, stored (and read back) under its partitioned form.
        let (publish_to, subject) = self.subjects_or_invalid(stream)?;
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let mut attempt = 0u32;
        loop {
            let last = self.inner.head(&subject, expected, attempt == 0).await?;
            if !expected.is_satisfied_by(last.version) {
                if let Some(original) = self.original(&subject, &ids).await? {
                    return Ok(original);
                }
                return Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    actual: Some(last.version),
                });
            }
            let recorded_at = OffsetDateTime::now_utc();
            let outgoing = self.prepare(stream, &events, last.version, recorded_at)?;
            let publish = self.publish(&publish_to, outgoing, last.sequence);
            match self.guarded_publish(&[&publish_to], publish).await {
                Ok((sequence, true)) => {
                    return self
                        .resolve_duplicate(stream, &subject, sequence, &ids)
                        .await;
                }
                Ok((first_seq, false)) => {
                    let committed = recorded(
                        self.subjects().stream(),
                        stream,
                        events,
                        last.version,
                        first_seq,
                        recorded_at,
                    );
                    if let Some(head) = committed.events.last() {
                        self.inner.remember(&subject, head);
                    }
                    return Ok(committed);
                }
                Err(failure) => {
                    if let Some(outcome) = self
                        .on_failure(stream, &subject, expected, &ids, failure, &mut attempt)
                        .await
                    {
                        return outcome;
                    }
                }
            }
        }
    }

    /// What a failed publish means: the final outcome, or `None` to try again.
    async fn on_failure(
        &self,
        stream: &StreamId,
        subject: &str,
        expected: ExpectedVersion,
        ids: &[Uuid],
        failure: Failure,
        attempt: &mut u32,
    ) -> Option<Result<Committed, StoreError>> {
        const OP: &str = "append";
        let first_id = ids.first().copied().unwrap_or_default();
        let retries = self.inner.config.any_version_retries;
        Some(match failure {
            // `Any` went out with a stale head: try again with a fresh one. A retry of an append
            // that already landed is then answered by the server's deduplication.
            Failure::Conflict if expected == ExpectedVersion::Any && *attempt < retries => {
                *attempt += 1;
                return None;
            }
            Failure::Conflict => match self.original(subject, ids).await {
                Ok(Some(original)) => Ok(original),
                Ok(None) => Err(StoreError::Conflict {
                    stream: stream.clone(),
                    expected,
                    // Best effort: the version the aggregate is at now.
                    actual: self
                        .inner
                        .last(subject)
                        .await
                        .ok()
                        .map(|last| last.map_or(0, |e| e.version)),
                }),
                Err(e) => Err(e),
            },
            Failure::DuplicateBatch => match self.original(subject, ids).await {
                Ok(Some(original)) => Ok(original),
                Ok(None) => Err(StoreError::InvalidInput {
                    stream: stream.clone(),
                    reason: "the event ids of this append were already used by another append within the duplicate window (an idempotency key reused on another aggregate?)".to_owned(),
                }),
                Err(e) => Err(e),
            },
            Failure::Busy(_) if *attempt < retries => {
                *attempt += 1;
                tokio::time::sleep(Duration::from_millis(10 << (*attempt).min(6))).await;
                return None;
            }
            Failure::Busy(cause) => Err(cause.outcome_unknown(stream, first_id, None)),
            Failure::OutcomeUnknown(cause) => match self.original(subject, ids).await {
                Ok(Some(mut original)) => {
                    original.duplicate = false;
                    Ok(original)
                }
                Ok(None) => Err(cause.outcome_unknown(stream, first_id, None)),
                Err(lookup) => Err(cause.outcome_unknown(stream, first_id, Some(&lookup))),
            },
            terminal => Err(match terminal.terminal(OP, stream) {
                Ok(error) => error,
                Err(_) => backend(OP, "a publish failure was left unclassified"),
            }),
        })
    }
}

/// The recorded form of `events`, stored in the stream named `store` from stream sequence
/// `first_seq` on after version `after_version`.
pub(super) fn recorded(
    store: &std::sync::Arc<str>,
    stream: &StreamId,
    events: Vec<NewEvent>,
    after_version: u64,
    first_seq: u64,
    recorded_at: OffsetDateTime,
) -> Committed {
    let events = events
        .into_iter()
        .zip(0u64..)
        .map(|(event, offset)| {
            let mut metadata = event.metadata;
            metadata.tenant.clone_from(&stream.tenant);
            RecordedEvent {
                event_id: event.event_id,
                aggregate_type: stream.aggregate_type.clone(),
                aggregate_id: stream.aggregate_id.clone(),
                version: after_version + 1 + offset,
                position: first_seq + offset,
                recorded_at,
                metadata,
                payload: event.payload,
                erased: Vec::new(),
                store: Some(std::sync::Arc::clone(store)),
            }
        })
        .collect();
    Committed {
        events,
        duplicate: false,
    }
}
