//! Errors of connecting to NATS and provisioning the context's stream and bucket.
//!
//! Errors of appends and reads are [`cqrs_core::StoreError`]s, so callers handle them the same
//! way on every store.

use crate::subject::SubjectError;
use cqrs_core::error::BoxError;

/// Why a [`JetStreamEventStore`](crate::JetStreamEventStore) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsStoreError {
    /// The NATS connection could not be established.
    #[error("cannot connect to NATS: {0}")]
    Connect(#[source] async_nats::ConnectError),
    /// The server is older than the store needs.
    #[error(
        "nats-server {found} is too old: the event store needs nats-server {required} or newer (atomic batch publish with message ids); upgrade the server"
    )]
    ServerTooOld {
        /// The version the server reported.
        found: String,
        /// The minimum version.
        required: &'static str,
    },
    /// The server runs without JetStream.
    #[error(
        "nats-server at {server} has JetStream disabled; start it with `-js` (or `jetstream {{}}` in its config)"
    )]
    JetStreamDisabled {
        /// The server's name or address.
        server: String,
    },
    /// The context name is not usable in subjects and stream names.
    #[error(transparent)]
    InvalidConfig(#[from] SubjectError),
    /// The context's stream exists with a configuration the store cannot work with. It is never
    /// changed automatically: fix it (or remove it) by hand.
    #[error(
        "stream `{stream}` exists with a conflicting configuration: {}; update it by hand (e.g. `nats stream edit`) or use another context",
        differences.join("; ")
    )]
    StreamConflict {
        /// The stream name.
        stream: String,
        /// What differs, as "field: expected X, found Y".
        differences: Vec<String>,
    },
    /// Creating or inspecting the stream or the snapshot bucket failed.
    #[error("cannot provision {what}: {source}")]
    Provision {
        /// What was being provisioned.
        what: String,
        /// The server's or client's error.
        #[source]
        source: BoxError,
    },
}
