//! Multi-aggregate commits: the events of several aggregates in one atomic batch (ADR-50), each
//! aggregate's first message carrying its own `Nats-Expected-Last-Subject-Sequence`. The server
//! checks every expectation against the stream as it was before the batch and stores all the
//! messages or none.
//!
//! A read guard ([`AppendTo::guard`]) writes nothing to its aggregate, so its check rides on a
//! carrier message after the events: published to `<context>.guards.<tenant>` with
//! `Nats-Expected-Last-Subject-Sequence` set to the guarded aggregate's stream sequence and
//! `Nats-Expected-Last-Subject-Sequence-Subject` naming its stored subject (server 2.11+). The
//! carrier holds no event and expires a second after it is stored (`Nats-TTL: 1s`); no reader
//! sees it, since every reader filters on `<context>.events.>`.

use super::append::{Message, Outgoing, recorded};
use super::failure::Failure;
use super::heads::Last;
use super::{JetStreamEventStore, MAX_BATCH};
use crate::headers::{Control, HeaderBuilder};
use cqrs_core::store::check_parts;
use cqrs_core::{AppendTo, Committed, ExpectedVersion, NewEvent, StoreError, StreamId};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// One aggregate's part, with what the store needs to send and to look it up again.
struct Part {
    stream: StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    /// The subject it is published to.
    publish_to: String,
    /// The subject it is stored under.
    subject: String,
    ids: Vec<Uuid>,
}

impl JetStreamEventStore {
    /// [`EventStore::append_all`](cqrs_core::EventStore::append_all) on JetStream.
    pub(super) async fn append_all_inner(
        &self,
        parts: Vec<AppendTo>,
    ) -> Result<Vec<Committed>, StoreError> {
        check_parts(&parts, MAX_BATCH)?;
        let mut parts: Vec<Part> = parts
            .into_iter()
            .map(|p| {
                // A guard's subjects are checked like those of a part to write: its tenant and
                // id are valid.
                let (publish_to, subject) = self.subjects_or_invalid(&p.stream)?;
                Ok(Part {
                    publish_to: if p.is_guard() {
                        self.inner.subjects.guards(p.stream.tenant.as_deref())
                    } else {
                        publish_to
                    },
                    subject,
                    ids: p.events.iter().map(|e| e.event_id).collect(),
                    stream: p.stream,
                    expected: p.expected,
                    events: p.events,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        if parts.len() == 1 {
            let part = parts.remove(0);
            return Ok(vec![
                self.append_inner(&part.stream, part.expected, part.events)
                    .await?,
            ]);
        }
        if let Some(guard) = parts.iter().find(|p| p.events.is_empty()) {
            self.guards_listened(&guard.stream)?;
        }
        let mut attempt = 0u32;
        loop {
            let heads = self.heads_of(&parts, attempt == 0).await?;
            if let Some((index, head)) = parts
                .iter()
                .zip(&heads)
                .enumerate()
                .find(|(_, (part, head))| !part.expected.is_satisfied_by(head.version))
                .map(|(index, (_, head))| (index, *head))
            {
                return match self.originals(&parts).await? {
                    Some(originals) => Ok(originals),
                    None => Err(conflict(&parts[index], head.version)),
                };
            }
            let recorded_at = OffsetDateTime::now_utc();
            let messages = self.batch(&parts, &heads, recorded_at)?;
            let subjects: Vec<&str> = parts.iter().map(|p| p.publish_to.as_str()).collect();
            let published = self
                .guarded_publish(&subjects, self.send_batch(messages))
                .await;
            let failure = match published {
                Ok((first_seq, false)) => {
                    return Ok(self.recorded_parts(parts, &heads, first_seq, recorded_at));
                }
                // A batch whose message ids the stream has: a retry of a commit that landed.
                Ok((_, true)) => Failure::DuplicateBatch,
                Err(failure) => failure,
            };
            match failure {
                Failure::Busy(_) if attempt < self.inner.config.any_version_retries => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(10 << attempt.min(6))).await;
                }
                failure => return self.settle(&parts, failure).await,
            }
        }
    }

    /// Refuses a carrier for `stream` on a stream that does not store carriers (made before
    /// read guards and not updated since).
    pub(super) fn guards_listened(&self, stream: &StreamId) -> Result<(), StoreError> {
        if self.inner.read_guards {
            return Ok(());
        }
        Err(StoreError::InvalidInput {
            stream: stream.clone(),
            reason: format!(
                "the stream of context `{}` predates read guards (it does not listen on `{}`): open the context once with StoreConfig::create_missing(true) to update it",
                self.inner.config.context,
                self.inner.subjects.guards_all()
            ),
        })
    }

    /// The batch's messages: every part's events, each part's first carrying its expected
    /// subject sequence, then a carrier per read guard. Events come first so that they are
    /// stored one after the other from the batch's first sequence on.
    fn batch<'p>(
        &self,
        parts: &'p [Part],
        heads: &[Last],
        recorded_at: OffsetDateTime,
    ) -> Result<Vec<Message<'p>>, StoreError> {
        let mut messages = Vec::new();
        for (part, head) in parts.iter().zip(heads) {
            if part.events.is_empty() {
                continue;
            }
            let outgoing = self.prepare(&part.stream, &part.events, head.version, recorded_at)?;
            for (
                index,
                Outgoing {
                    mut headers,
                    payload,
                },
            ) in outgoing.into_iter().enumerate()
            {
                if index == 0 {
                    headers.control(
                        Control::ExpectedLastSubjectSequence,
                        head.sequence.to_string(),
                    );
                }
                messages.push((part.publish_to.as_str(), headers, payload));
            }
        }
        for (part, head) in parts.iter().zip(heads) {
            if part.events.is_empty() {
                messages.push((
                    part.publish_to.as_str(),
                    carrier(&part.subject, head.sequence),
                    Vec::new(),
                ));
            }
        }
        Ok(messages)
    }

    /// The stream sequence and version of each part's aggregate, as a single append finds them.
    async fn heads_of(&self, parts: &[Part], trust_known: bool) -> Result<Vec<Last>, StoreError> {
        let mut heads = Vec::with_capacity(parts.len());
        for part in parts {
            heads.push(
                self.inner
                    .head(&part.subject, part.expected, trust_known)
                    .await?,
            );
        }
        Ok(heads)
    }

    /// The aggregate's head as the stream leader has it now.
    async fn read_head(&self, subject: &str) -> Result<Last, StoreError> {
        self.inner.head(subject, ExpectedVersion::Any, false).await
    }

    /// The commits of a batch stored from `first_seq` on, in the parts' order.
    fn recorded_parts(
        &self,
        parts: Vec<Part>,
        heads: &[Last],
        first_seq: u64,
        recorded_at: OffsetDateTime,
    ) -> Vec<Committed> {
        let mut next = first_seq;
        parts
            .into_iter()
            .zip(heads)
            .map(|(part, head)| {
                let count = part.events.len() as u64;
                let committed = recorded(
                    self.subjects().stream(),
                    &part.stream,
                    part.events,
                    head.version,
                    next,
                    recorded_at,
                );
                next += count;
                if let Some(last) = committed.events.last() {
                    self.inner.remember(&part.subject, last);
                }
                committed
            })
            .collect()
    }

    /// Every part's original commit, if the commit was stored before (a retry); `None` if none
    /// of them was. A commit found in part only cannot come from an atomic batch. A guard's
    /// original is an empty commit: it wrote nothing.
    async fn originals(&self, parts: &[Part]) -> Result<Option<Vec<Committed>>, StoreError> {
        let mut found = Vec::with_capacity(parts.len());
        for part in parts {
            found.push(if part.events.is_empty() {
                Some(Committed {
                    events: Vec::new(),
                    duplicate: true,
                })
            } else {
                self.original(&part.subject, &part.ids).await?
            });
        }
        let written = parts.iter().filter(|p| !p.events.is_empty()).count();
        let guards = parts.len() - written;
        match found.iter().filter(|f| f.is_some()).count() - guards {
            0 => Ok(None),
            n if n == written => Ok(Some(found.into_iter().flatten().collect())),
            _ => Err(StoreError::InvalidInput {
                stream: parts[0].stream.clone(),
                reason: "some of this commit's event ids are stored on their aggregates and some are not: they were used by other appends; give every commit fresh event ids".to_owned(),
            }),
        }
    }

    /// What a failed batch means, once nothing more is to be tried.
    async fn settle(&self, parts: &[Part], failure: Failure) -> Result<Vec<Committed>, StoreError> {
        const OP: &str = "append";
        // The first part with events (there is one): what an unknown outcome is reported for.
        let first = parts
            .iter()
            .find(|p| !p.events.is_empty())
            .unwrap_or(&parts[0]);
        let first_id = first.ids.first().copied().unwrap_or_default();
        match failure {
            Failure::Conflict => {
                if let Some(originals) = self.originals(parts).await? {
                    return Ok(originals);
                }
                // Name an aggregate that moved: the server does not say which.
                for part in parts {
                    let head = self.read_head(&part.subject).await?;
                    if !part.expected.is_satisfied_by(head.version) {
                        return Err(conflict(part, head.version));
                    }
                }
                let head = self.read_head(&first.subject).await?;
                Err(conflict(first, head.version))
            }
            Failure::DuplicateBatch => match self.originals(parts).await? {
                Some(originals) => Ok(originals),
                None => Err(StoreError::InvalidInput {
                    stream: first.stream.clone(),
                    reason: "the event ids of this commit were already used by another append within the duplicate window; give every commit fresh event ids".to_owned(),
                }),
            },
            Failure::OutcomeUnknown(cause) | Failure::Busy(cause) => {
                match self.originals(parts).await {
                    Ok(Some(mut originals)) => {
                        for committed in &mut originals {
                            committed.duplicate = false;
                        }
                        Ok(originals)
                    }
                    Ok(None) => Err(cause.outcome_unknown(&first.stream, first_id, None)),
                    Err(lookup) => {
                        Err(cause.outcome_unknown(&first.stream, first_id, Some(&lookup)))
                    }
                }
            }
            terminal => Err(match terminal.terminal(OP, &first.stream) {
                Ok(error) => error,
                Err(_) => StoreError::Backend {
                    operation: OP,
                    source: "a publish failure was left unclassified".into(),
                },
            }),
        }
    }
}

/// The carrier of a read guard: checks that the aggregate stored under `subject` is still at
/// stream sequence `sequence` (its last event's; 0 for none).
pub(super) fn carrier(subject: &str, sequence: u64) -> HeaderBuilder {
    let mut headers = HeaderBuilder::default();
    headers.control(Control::ExpectedLastSubjectSequence, sequence.to_string());
    headers.control(
        Control::ExpectedLastSubjectSequenceSubject,
        subject.to_owned(),
    );
    headers.control(Control::Ttl, "1s".to_owned());
    headers
}

fn conflict(part: &Part, actual: u64) -> StoreError {
    StoreError::Conflict {
        stream: part.stream.clone(),
        expected: part.expected,
        actual: Some(actual),
    }
}
