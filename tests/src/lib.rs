//! Shared fixtures of the cross-crate test suites.
#![forbid(unsafe_code)]

pub mod balances;
pub mod tenancy;

use cqrs_core::metadata::new_id;
use cqrs_core::{Metadata, NewEvent, SerializedEvent, StoreError};
use cqrs_nats::{JetStreamEventStore, StoreConfig};
use cqrs_test_server::NatsServer;

/// The error type of the fixtures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A JetStream store on its own, freshly started server. Keep the server alive as long as the
/// store is used: dropping it kills the server.
#[derive(Debug)]
pub struct JetStreamFixture {
    /// The server.
    pub server: NatsServer,
    /// The store, for context `test`.
    pub store: JetStreamEventStore,
    /// The tenant read service a tenant-scoped `store` reads through, run on an operator's
    /// connection.
    pub reads: Option<cqrs_nats::command::ServiceHandle>,
}

/// Starts a server and connects a store for context `test` to it.
pub async fn jetstream() -> Result<JetStreamFixture, BoxError> {
    jetstream_with(StoreConfig::new("test")).await
}

/// Starts a server and connects a store with `config` to it. For a tenant-scoped `config`, an
/// operator's store provisions the context first and runs the tenant read service.
pub async fn jetstream_with(config: StoreConfig) -> Result<JetStreamFixture, BoxError> {
    let server = NatsServer::start().await?;
    let reads = if config.is_tenant_scoped() {
        let operator =
            JetStreamEventStore::connect(server.url(), config.clone().tenant_scoped_reads(false))
                .await?;
        Some(cqrs_nats::TenantReadService::new(&operator).spawn().await?)
    } else {
        None
    };
    let store = JetStreamEventStore::connect(server.url(), config).await?;
    Ok(JetStreamFixture {
        server,
        store,
        reads,
    })
}

/// A new event of type `event_type` (schema version 1) whose JSON body is `{"n": n}`.
pub fn event(event_type: &str, n: u64) -> NewEvent {
    NewEvent::new(
        new_id(),
        SerializedEvent {
            event_type: event_type.to_owned(),
            schema_version: 1,
            data: format!("{{\"n\":{n}}}").into_bytes(),
        },
        Metadata::standalone(),
    )
}

/// Every event of `store`, read with `read_all` from the first.
///
/// # Panics
///
/// If the store cannot be read.
pub async fn all_events<S: cqrs_core::EventStore>(store: &S) -> Vec<cqrs_core::RecordedEvent> {
    use futures::TryStreamExt;
    store
        .read_all(&cqrs_core::EventFilter::all(), 0)
        .await
        .unwrap_or_else(|e| panic!("read_all: {e}"))
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("read_all: {e}"))
}

/// The variant name of `error` (`"OutcomeUnknown"`, `"Unavailable"`, ...), for the fault tests'
/// error counts.
pub fn error_kind(error: &StoreError) -> String {
    let debug = format!("{error:?}");
    debug.split([' ', '{', '(']).next().unwrap_or("").to_owned()
}
