//! Errors of connecting to NATS and provisioning the context's stream and bucket.
//!
//! Errors of appends and reads are [`cqrs_core::StoreError`]s, so callers handle them the same
//! way on every store.

use crate::subject::SubjectError;
use cqrs_core::error::BoxError;

/// Why a [`JetStreamEventStore`](crate::JetStreamEventStore) could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The NATS connection could not be established.
    #[error("cannot connect to NATS")]
    Connect(#[source] async_nats::ConnectError),
    /// The server refused the credentials (wrong user or password, token, nkey or credentials
    /// file). Nothing was retried: the same credentials would be refused again.
    #[error(
        "nats-server refused the credentials; check the user and password (or token, nkey, credentials file) in the ConnectOptions against the server's `authorization`/`accounts` configuration"
    )]
    Unauthorized(#[source] async_nats::ConnectError),
    /// The TLS handshake failed, or TLS was required on one side only.
    #[error(
        "TLS with nats-server failed; check that the client trusts the server certificate's CA (ConnectOptions::add_root_certificates), that the certificate names the host or IP address in the server URL, and that both sides agree on TLS (ConnectOptions::require_tls)"
    )]
    Tls(#[source] async_nats::ConnectError),
    /// The connection's NATS user may not do what provisioning needs.
    #[error("permission denied while provisioning {what}: {reason}")]
    PermissionDenied {
        /// What was being provisioned.
        what: String,
        /// What the server refused and what to check.
        reason: String,
    },
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
    /// The context's stream does not exist, and the store was told not to create it
    /// ([`StoreConfig::create_missing`](crate::StoreConfig::create_missing)`(false)`).
    #[error(
        "context `{context}` has no stream `{stream}` on this server and this store does not create it (create_missing is false); check the context name and the server, or provision the context once by opening it with create_missing(true) as a user that may create streams"
    )]
    ContextNotFound {
        /// The context.
        context: String,
        /// The stream it would live in.
        stream: String,
    },
    /// Creating or inspecting the stream or the snapshot bucket failed.
    #[error("cannot provision {what}")]
    Provision {
        /// What was being provisioned.
        what: String,
        /// The server's or client's error.
        #[source]
        source: BoxError,
    },
}

impl ConnectError {
    /// The error for a failed connect: credentials and TLS problems get their own variants.
    pub fn from_connect(error: async_nats::ConnectError) -> Self {
        use async_nats::ConnectErrorKind as K;
        match error.kind() {
            K::AuthorizationViolation | K::Authentication => Self::Unauthorized(error),
            K::Tls => Self::Tls(error),
            // A failed handshake arrives as an I/O error whose source is the TLS library's.
            K::Io if tls_in_chain(&error) => Self::Tls(error),
            _ => Self::Connect(error),
        }
    }

    pub(crate) fn denied(what: String, violation: &crate::permissions::Violation) -> Self {
        let mut reason = violation.to_string();
        if violation.subject.contains(".CREATE.") {
            reason.push_str(
                "; creating needs a user that may create streams: provision the context once as such a user, after which this one needs only `$JS.API.STREAM.INFO.<stream>`",
            );
        } else if violation.subject.contains(".STREAM.INFO.") {
            reason.push_str(
                "; a tenant user, whose permissions cover only its own subjects, connects with StoreConfig::tenant_scoped_reads(true), which asks for no stream-wide information",
            );
        }
        Self::PermissionDenied { what, reason }
    }
}

/// Whether getting a stream failed because it does not exist (rather than for a timeout, a
/// permission or another server error).
pub fn is_stream_not_found(error: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
    matches!(error.kind(), GetStreamErrorKind::JetStream(js)
        if js.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Whether a TLS error (rustls's, which async-nats reports inside an I/O error) is among
/// `error`'s sources.
fn tls_in_chain(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = error.source();
    while let Some(e) = current {
        // `io::Error::source` skips the error it wraps: look inside it.
        let wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if e.is::<rustls::Error>() || matches!(wrapped, Some(inner) if inner.is::<rustls::Error>())
        {
            return true;
        }
        current = e.source();
    }
    false
}
