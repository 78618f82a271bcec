//! Linearizable refusals ([`StoreConfig::linearizable_refusals`](super::StoreConfig::linearizable_refusals)):
//! the state a refusal is based on, confirmed by the stream's quorum rather than its leader's
//! word.
//!
//! A stream leader cut off from the rest of its cluster keeps answering reads as leader, from
//! its old state, until it notices (7–18 s in a plain-client experiment on nats-server 2.15.1):
//! asked for an aggregate's last event it says "none newer" of an aggregate the other side has
//! since written, and a command is refused by a state that no longer holds. No read is
//! linearizable on JetStream; a write is: it commits only through a quorum of the stream's
//! replicas, and the leader checks its expectations against everything committed before it.
//! So the confirmation is a read guard's carrier ([`super::append_all`]): published to
//! `<context>.guards.<tenant>` with `Nats-Expected-Last-Subject-Sequence` set to the stream
//! sequence of the loaded state's last event (0 for none) and
//! `Nats-Expected-Last-Subject-Sequence-Subject` naming the aggregate's stored subject,
//! holding no event and expiring a second after it is stored. Stored: the aggregate was at the
//! loaded state when the quorum took the carrier. Refused as a wrong last sequence: it has
//! moved, and the caller loads it again. No acknowledgement (a leader without a quorum cannot
//! commit): `Unavailable`, retryable, never a refusal from the old state.

use super::JetStreamEventStore;
use super::append::Message;
use super::append_all::carrier;
use super::failure::Failure;
use cqrs_core::{StoreError, StreamId, StreamPosition};

/// What a confirmation is called in errors.
const OP: &str = "confirm the state a refusal is based on";

impl JetStreamEventStore {
    /// The version of `stream` (stored under `subject`) now, for a caller that loaded it at
    /// `loaded`: `loaded`'s version when the quorum confirms it, a later one when the aggregate
    /// has moved since.
    pub(super) async fn confirm(
        &self,
        stream: &StreamId,
        subject: &str,
        loaded: StreamPosition,
    ) -> Result<u64, StoreError> {
        self.guards_listened(stream)?;
        let publish_to = self.inner.subjects.guards(stream.tenant.as_deref());
        let message: Message = (
            publish_to.as_str(),
            carrier(subject, loaded.position),
            Vec::new(),
        );
        let sent = self
            .guarded_publish(&[publish_to.as_str()], self.send_batch(vec![message]))
            .await;
        match sent {
            Ok(_) => Ok(loaded.version),
            Err(Failure::Conflict) => {
                // Moved since it was loaded: at least one event later, whatever a copy that
                // answers the read below still holds.
                let now = self.inner.last(subject).await?.map_or(0, |e| e.version);
                Ok(now.max(loaded.version + 1))
            }
            Err(failure) => Err(match failure.terminal(OP, stream) {
                Ok(error) => error,
                // No acknowledgement (the carrier may or may not be stored: either way it
                // confirmed nothing), or the server asks to come back later.
                Err(Failure::OutcomeUnknown(cause) | Failure::Busy(cause)) => {
                    StoreError::Unavailable {
                        operation: OP,
                        reason: format!(
                            "{} (the stream's quorum did not confirm {stream} at version {}: a leader cut off from its cluster, or an election; retry)",
                            cause.what, loaded.version
                        ),
                        source: cause.source,
                    }
                }
                Err(_) => StoreError::Unavailable {
                    operation: OP,
                    reason: format!(
                        "unexpected answer to the carrier confirming {stream} at version {}; retry",
                        loaded.version
                    ),
                    source: None,
                },
            }),
        }
    }
}
