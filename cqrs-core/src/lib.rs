//! The domain kernel of a NATS JetStream-native CQRS and event-sourcing framework.
//!
//! - [`Aggregate`]: a Mealy machine — `decide` (state + command -> events) and `evolve`
//!   (state + event -> next state).
//! - [`DomainEvent`]: stable type names, schema versions, decoding through upcast chains.
//! - [`EventEnvelope`] and [`Metadata`]: identity, position, correlation and causation.
//! - [`EventStore`]: optimistic concurrency, atomic multi-event appends, idempotency, lazy reads;
//!   [`InMemoryEventStore`] is the embedded implementation with the same semantics as JetStream.
//! - [`Repository`]: load, decide, append, retry on conflict, snapshots, time travel.
//! - [`testing`]: given-when-then fixtures.
//! - [`state_machine`]: the transition table of a state-machine aggregate as data, rendered as
//!   Mermaid or Graphviz and checked for unreachable states and dead ends.
//! - With the `macros` feature (on by default): `#[derive(Aggregate)]` with `#[transitions]`,
//!   and `#[derive(DomainEvent)]`, so that a domain is three annotated enums.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aggregate;
pub mod command;
pub mod deadline;
pub mod envelope;
pub mod error;
pub mod event;
pub mod memory;
pub mod metadata;
pub mod metrics;
pub mod personal;
pub mod process;
pub mod projection;
pub mod read_model;
pub mod repository;
#[cfg(feature = "json-schema")]
#[cfg_attr(docsrs, doc(cfg(feature = "json-schema")))]
pub mod schema;
pub mod state_machine;
pub mod store;
pub mod stream;
pub mod testing;
pub mod trace;
pub mod unit_of_work;

#[doc(hidden)]
pub mod doc;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use aggregate::{Aggregate, InvalidTransition};
pub use command::{Command, CommandField, CommandFields, CommandVariant};
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use cqrs_macros::{Aggregate, Command, DomainEvent, transitions};
pub use envelope::{EventEnvelope, NewEvent, RecordedEvent, SerializedEvent};
pub use error::{CommandError, StoreError};
pub use event::{DecodeError, DomainEvent, EncodeError, EventSchema};
pub use memory::InMemoryEventStore;
pub use metadata::{CommandMetadata, IdempotencyKey, Metadata, SeenPosition};
pub use process::{CommandDispatcher, ProcessManager, ProcessManagerProjection, Targeted};
pub use projection::{HandlerError, Projection, Reactor, RetryPolicy, WithReactor};
pub use read_model::{ReadModelStore, Versioned};
pub use repository::{Loaded, Repository};
pub use state_machine::StateMachine;
pub use store::{AppendTo, Committed, EventStore, EventStream, Snapshot};
pub use stream::{EventFilter, ExpectedVersion, StreamId, StreamPosition};
pub use unit_of_work::UnitOfWork;
