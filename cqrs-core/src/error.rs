//! The errors of the store and command-handling boundaries.

use crate::aggregate::InvalidTransition;
use crate::event::{DecodeError, EncodeError};
use crate::stream::{ExpectedVersion, StreamId};
use uuid::Uuid;

/// A boxed error from a storage backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `error` and its sources on one line, `what failed: why: why`, as the convention that the
/// errors of this framework follow (a message says what failed, its source says why) asks a
/// reporter to print them. A cause whose text the line already holds is left out, for errors of
/// other crates that repeat their source in their message.
///
/// ```
/// use cqrs_core::error::report;
/// let io = std::io::Error::new(std::io::ErrorKind::Other, "disk full");
/// let error = cqrs_core::StoreError::Backend { operation: "append", source: Box::new(io) };
/// assert_eq!(report(&error), "event store failed during append: disk full");
/// ```
pub fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !part.is_empty() && !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// Why an event store operation failed. Every store returns the same variants for the same
/// situation, so callers handle a conflict once for all stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer appended first. Reload the aggregate and decide again.
    #[error(
        "concurrency conflict on {stream}: expected {expected}, but the stream is at {}; reload and retry the command",
        actual.map_or_else(|| "another version".to_owned(), |v| format!("version {v}"))
    )]
    Conflict {
        /// The stream.
        stream: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The version found, when the store knows it.
        actual: Option<u64>,
    },
    /// The idempotency key was already used for a different stream.
    #[error(
        "idempotency key `{key}` was already used on {original}, not {stream}; use a fresh key per command"
    )]
    IdempotencyKeyReused {
        /// The key.
        key: String,
        /// Where it was used now.
        stream: StreamId,
        /// Where it was used first.
        original: StreamId,
    },
    /// An event could not be serialised; nothing was written.
    #[error("nothing was written: an event could not be encoded")]
    Encode(#[from] EncodeError),
    /// A stored event could not be decoded. The stored data is untouched.
    #[error(
        "event `{}` at version {version} (position {position}) of {stream} cannot be decoded",
        source.event_type()
    )]
    Decode {
        /// The stream.
        stream: StreamId,
        /// Aggregate version of the event.
        version: u64,
        /// Store position of the event.
        position: u64,
        /// What went wrong.
        #[source]
        source: DecodeError,
    },
    /// A stored message does not have the envelope's shape (missing or garbage headers).
    #[error("message at position {position} is not a valid event envelope: {reason}")]
    MalformedEnvelope {
        /// Store position of the message.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The request can never succeed as given (an id that cannot be stored, an oversized
    /// event, an empty append). Nothing was written.
    #[error("invalid request for {stream}: {reason}")]
    InvalidInput {
        /// The stream.
        stream: StreamId,
        /// What is wrong and what to do.
        reason: String,
    },
    /// More events in one append than the store commits atomically. Nothing was written.
    #[error(
        "{count} events for {stream} in one append, at most {max} commit atomically; split the command"
    )]
    TooManyEvents {
        /// The stream.
        stream: StreamId,
        /// Events in the append.
        count: usize,
        /// The store's limit.
        max: usize,
    },
    /// The store did not answer in time; the append may or may not have been written, and
    /// looking it up failed too. Retry the same command with the same idempotency key: it is
    /// applied at most once.
    #[error(
        "outcome unknown for the append of event {event_id} to {stream}: {reason}; retry with the same idempotency key"
    )]
    OutcomeUnknown {
        /// The stream.
        stream: StreamId,
        /// First event of the append.
        event_id: Uuid,
        /// What happened, in the store's words.
        reason: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The store cannot serve the request now (no leader, not connected). Retry after a pause.
    #[error("event store unavailable during {operation}: {reason}; retry after a pause")]
    Unavailable {
        /// What was attempted.
        operation: &'static str,
        /// What failed, in the store's words.
        reason: String,
        /// The backend's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The caller lacks permission for this stream.
    #[error("permission denied for {operation} on {stream}: {reason}")]
    PermissionDenied {
        /// What was attempted.
        operation: &'static str,
        /// The stream.
        stream: StreamId,
        /// What the backend said.
        reason: String,
    },
    /// Any other backend failure.
    #[error("event store failed during {operation}")]
    Backend {
        /// What was attempted.
        operation: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// The refusal of an append without events, the same on every store.
    pub fn empty_append(stream: &StreamId) -> Self {
        Self::InvalidInput {
            stream: stream.clone(),
            reason: "an append needs at least one event".to_owned(),
        }
    }

    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Conflict { .. })
    }

    /// Whether this is a conflict that puts the stream below the version the caller expected
    /// it at. Versions never go back (streams refuse deletes), so for an expectation the caller
    /// read from the store such an answer came from a copy of the store that lags — on
    /// JetStream even the leader, when it is cut off from its cluster — not from a writer that
    /// was first.
    pub fn is_behind_expectation(&self) -> bool {
        matches!(
            self,
            Self::Conflict {
                expected: ExpectedVersion::Exact(expected),
                actual: Some(actual),
                ..
            } if actual < expected
        )
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Conflict { .. } | Self::OutcomeUnknown { .. } | Self::Unavailable { .. }
        )
    }
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command (a business rule).
    #[error("command rejected")]
    Rejected(#[source] E),
    /// A state-machine aggregate has no transition for the command in its current state.
    #[error(transparent)]
    InvalidTransition(InvalidTransition),
    /// The store failed; see [`StoreError`] for what to do.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<E> CommandError<E> {
    /// The domain error, if the aggregate refused the command.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            Self::Rejected(e) => Some(e),
            Self::InvalidTransition(_) | Self::Store(_) => None,
        }
    }

    /// Whether the aggregate refused the command: a domain rejection, or a command its state
    /// has no transition for. Neither goes away by sending the command again; a process
    /// manager's dispatcher counts both as delivered (the flow sees no events from it).
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Rejected(_) | Self::InvalidTransition(_))
    }

    /// Whether this is a concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_conflict())
    }

    /// Whether sending the same command again later may succeed: the store failed with a
    /// retryable error ([`StoreError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}
