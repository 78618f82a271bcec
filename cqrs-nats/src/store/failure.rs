//! How the server's answers are classified: one place for every error code the store acts on.

use async_nats::jetstream::{self, ErrorCode};
use cqrs_core::{StoreError, StreamId};
use std::fmt;

/// The JetStream API error code somewhere in `error`'s source chain.
pub(super) fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(js.error_code().0);
        }
        current = e.source();
    }
    None
}

/// What went wrong, in the store's words, and the client's error behind it when there is one
/// (kept as the source of the `StoreError` made from it, not copied into its message).
pub(super) struct Cause {
    pub(super) what: String,
    pub(super) source: Option<cqrs_core::error::BoxError>,
}

impl Cause {
    /// A cause the server stated in a reply (no client error behind it).
    pub(super) fn said(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    pub(super) fn because(what: &str, source: impl Into<cqrs_core::error::BoxError>) -> Self {
        Self {
            what: what.to_owned(),
            source: Some(source.into()),
        }
    }

    /// The `OutcomeUnknown` of an append to `stream` whose first event is `event_id`, after
    /// looking its events up found nothing or, with `lookup`, failed too.
    pub(super) fn outcome_unknown(
        self,
        stream: &StreamId,
        event_id: uuid::Uuid,
        lookup: Option<&StoreError>,
    ) -> StoreError {
        let reason = match lookup {
            None => self.what,
            Some(lookup) => format!("{}; looking the events up failed too: {lookup}", self.what),
        };
        StoreError::OutcomeUnknown {
            stream: stream.clone(),
            event_id,
            reason,
            source: self.source,
        }
    }
}

/// How a publish failed.
pub(super) enum Failure {
    /// Another writer was first (10071, 10164).
    Conflict,
    /// An atomic batch carried a message id the stream already has (10201).
    DuplicateBatch,
    /// The server asks to come back later (a duplicate in flight, too many open batches).
    Busy(Cause),
    /// Too many events, or headers too large.
    TooLarge(String),
    /// No acknowledgement came: the append may or may not have been stored.
    OutcomeUnknown(Cause),
    /// The stream cannot take writes now (no leader, no cluster, no resources).
    Unavailable(Cause),
    /// The user may not publish there.
    PermissionDenied(String),
    /// Anything else.
    Backend(cqrs_core::error::BoxError),
}

impl Failure {
    /// The error for a failure that no lookup or retry can turn into a commit: too large,
    /// unavailable, refused or anything else; `None` for the ones the caller resolves first
    /// (conflicts, duplicates, busy, unknown outcomes).
    pub(super) fn terminal(
        self,
        operation: &'static str,
        stream: &StreamId,
    ) -> Result<StoreError, Self> {
        match self {
            Self::TooLarge(reason) => Ok(StoreError::InvalidInput {
                stream: stream.clone(),
                reason,
            }),
            Self::Unavailable(cause) => Ok(StoreError::Unavailable {
                operation,
                reason: cause.what,
                source: cause.source,
            }),
            Self::PermissionDenied(reason) => Ok(StoreError::PermissionDenied {
                operation,
                stream: stream.clone(),
                reason,
            }),
            Self::Backend(source) => Ok(backend(operation, source)),
            other => Err(other),
        }
    }
}

/// Whether `code` says another writer was first: 10071 (wrong last sequence, with the actual
/// one) or 10164 (the same without it, in a cluster or inside an atomic batch).
pub(super) fn is_conflict(code: u64) -> bool {
    code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE.0
        || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT.0
}

pub(super) fn classify_code(code: u64, text: String) -> Failure {
    let code = ErrorCode(code);
    match code {
        _ if is_conflict(code.0) => Failure::Conflict,
        ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE => Failure::DuplicateBatch,
        // A retry raced its original (cluster), or too many batches in flight: back off.
        ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT
        | ErrorCode::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT => Failure::Busy(Cause::said(text)),
        ErrorCode::ATOMIC_PUBLISH_TOO_LARGE_BATCH | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM => {
            Failure::TooLarge(text)
        }
        // No cluster, no leader (an election is on), no JetStream, or the server is short of
        // resources for the moment.
        ErrorCode::CLUSTER_NOT_AVAILABLE
        | ErrorCode::CLUSTER_NOT_LEADER
        | ErrorCode::JETSTREAM_NOT_ENABLED
        | ErrorCode::INSUFFICIENT_RESOURCES => Failure::Unavailable(Cause::said(text)),
        _ => Failure::Backend(text.into()),
    }
}

pub(super) fn classify_publish(error: jetstream::context::PublishError) -> Failure {
    use jetstream::context::PublishErrorKind as K;
    let text = cqrs_core::error::report(&error);
    if text.to_lowercase().contains("permission") {
        return Failure::PermissionDenied(text);
    }
    match error.kind() {
        K::WrongLastSequence => Failure::Conflict,
        K::TimedOut => Failure::OutcomeUnknown(Cause::because(
            "no acknowledgement within the request timeout",
            error,
        )),
        K::BrokenPipe => Failure::OutcomeUnknown(Cause::because(
            "the connection broke before the acknowledgement",
            error,
        )),
        K::StreamNotFound => Failure::Unavailable(Cause::because("the stream is missing", error)),
        K::MaxAckPending => Failure::Unavailable(Cause::because(
            "too many publishes await their acknowledgement",
            error,
        )),
        K::MaxPayloadExceeded => Failure::TooLarge(text),
        _ => match jetstream_code(&error) {
            Some(code) => match classify_code(code, text) {
                // The server's code decided; its error, which the reply's text came from, is
                // the source, and the reason says what the code means.
                Failure::Busy(_) => Failure::Busy(Cause::because(
                    "the server asks to try again (a duplicate in flight, or too many batches)",
                    error,
                )),
                Failure::Unavailable(_) => Failure::Unavailable(Cause::because(
                    "the stream cannot take writes now (no leader, no cluster or short of resources)",
                    error,
                )),
                other => other,
            },
            None => Failure::Backend(Box::new(error)),
        },
    }
}

pub(super) fn classify_request(error: async_nats::RequestError) -> Failure {
    use async_nats::RequestErrorKind as K;
    let text = cqrs_core::error::report(&error);
    if text.to_lowercase().contains("permission") {
        return Failure::PermissionDenied(text);
    }
    match error.kind() {
        K::NoResponders => Failure::Unavailable(Cause::because("no responder", error)),
        K::TimedOut => Failure::Unavailable(Cause::because("no answer in time", error)),
        _ => Failure::Backend(Box::new(error)),
    }
}

/// An error reply of the JetStream API: `{"error":{"code":..,"err_code":..,"description":..}}`.
#[derive(serde::Deserialize)]
pub(super) struct ApiErrorReply {
    pub(super) error: ApiError,
}

#[derive(serde::Deserialize)]
pub(super) struct ApiError {
    #[serde(default)]
    pub(super) code: u64,
    #[serde(default)]
    pub(super) err_code: u64,
    #[serde(default)]
    pub(super) description: String,
}

/// `StoreError::Unavailable` for `operation`, with what the server or connection said.
pub(crate) fn unavailable(operation: &'static str, reason: impl fmt::Display) -> StoreError {
    StoreError::Unavailable {
        operation,
        reason: reason.to_string(),
        source: None,
    }
}

/// `StoreError::Unavailable` for `operation`: `what` failed, because of the client's `source`.
pub(crate) fn unavailable_because(
    operation: &'static str,
    what: impl Into<String>,
    source: impl Into<cqrs_core::error::BoxError>,
) -> StoreError {
    StoreError::Unavailable {
        operation,
        reason: what.into(),
        source: Some(source.into()),
    }
}

pub(super) fn backend(
    operation: &'static str,
    source: impl Into<cqrs_core::error::BoxError>,
) -> StoreError {
    StoreError::Backend {
        operation,
        source: source.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_codes_are_conflicts() {
        assert!(matches!(
            classify_code(10071, String::new()),
            Failure::Conflict
        ));
        assert!(matches!(
            classify_code(10164, String::new()),
            Failure::Conflict
        ));
        assert!(matches!(
            classify_code(10201, String::new()),
            Failure::DuplicateBatch
        ));
        assert!(matches!(
            classify_code(10158, String::new()),
            Failure::Busy(_)
        ));
        assert!(matches!(
            classify_code(10210, String::new()),
            Failure::Busy(_)
        ));
        for unavailable in [10008, 10009, 10023, 10076] {
            assert!(matches!(
                classify_code(unavailable, String::new()),
                Failure::Unavailable(_)
            ));
        }
        assert!(matches!(
            classify_code(10199, String::new()),
            Failure::TooLarge(_)
        ));
        assert!(matches!(
            classify_code(10060, String::new()),
            Failure::Backend(_)
        ));
    }
}
