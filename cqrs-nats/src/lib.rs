//! NATS JetStream as the event store of `cqrs-core`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use cqrs_nats::{JetStreamEventStore, StoreConfig};
//! let store = JetStreamEventStore::connect("nats://127.0.0.1:4222", StoreConfig::new("sales")).await?;
//! // `store` implements `cqrs_core::EventStore`: use it with `cqrs_core::Repository`.
//! # Ok(()) }
//! ```
//!
//! - [`subject`]: the subject layout and the token codec for tenants and aggregate ids.
//! - [`headers`]: the wire format of an event (headers table).
//! - [`layout`]: the names of the streams, buckets, consumers and queue groups of a context.
//! - [`store`]: the store, its provisioning and its append/load algorithms.
//! - [`command`]: commands over NATS request/reply — a service in a queue group and a typed
//!   client.
//! - [`projection`]: projections from checkpoints in KV read with ordered consumers (batches,
//!   retries, parking, fenced handovers between workers, rebuilds, time travel); [`deadletter`]:
//!   the dead-letter stream.
//! - [`read_model`]: a read-model store on a KV bucket with revision compare-and-set.
//!
//! The operator command-line tool `cqrs`, which reads what this crate writes, is the
//! `cqrs-cli` crate.
//! - [`reads`]: the tenant read service, through which tenant-scoped stores read their own
//!   tenant's events without any grant on consumers or stream-wide read APIs.
//! - [`tenancy`]: the NATS accounts, imports and permissions that confine a tenant to its own
//!   data.
//! - [`service`]: how the command and tenant read services run (queue groups, graceful stop).
//! - [`permissions`]: permission violations reported as typed errors at once, not as timeouts.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bucket;
pub mod command;
pub mod deadletter;
pub mod deadlines;
pub mod error;
mod gaps;
pub mod headers;
pub mod keys;
pub mod layout;
pub mod permissions;
pub mod projection;
pub mod read_model;
pub mod reads;
mod replies;
#[cfg(feature = "json-schema")]
#[cfg_attr(docsrs, doc(cfg(feature = "json-schema")))]
pub mod schemas;
pub mod service;
pub mod store;
pub mod subject;
pub mod tenancy;

pub use async_nats;
pub use command::{CommandClient, CommandService};
pub use deadletter::DeadLetters;
pub use deadlines::{DeadlineWorker, JetStreamDeadlines};
pub use error::ConnectError;
pub use keys::JetStreamKeyStore;
/// The former name of [`ConnectError`].
#[deprecated(
    since = "0.1.0",
    note = "renamed to `ConnectError`: it is the error of connecting and provisioning"
)]
pub type NatsStoreError = ConnectError;
pub use permissions::PermissionWatch;
pub use projection::{
    JetStreamProjectionHandle, JetStreamProjectionRunner, ProjectionConfig, ReplayFrom, StartFrom,
};
pub use read_model::KvReadModelStore;
pub use reads::TenantReadService;
pub use store::{JetStreamEventStore, MAX_BATCH, MIN_SERVER_VERSION, StoreConfig};
pub use subject::{SubjectError, Subjects};
