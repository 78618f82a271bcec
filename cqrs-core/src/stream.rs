//! Identity of an aggregate's event stream, expected versions, positions and filters.

use crate::envelope::RecordedEvent;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// One aggregate instance's event stream: (tenant, aggregate type, aggregate id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    /// Tenant the aggregate belongs to; `None` for single-tenant systems.
    pub tenant: Option<String>,
    /// Aggregate type name, e.g. `Order`.
    pub aggregate_type: String,
    /// Aggregate id within its type (and tenant).
    pub aggregate_id: String,
}

impl StreamId {
    /// The stream of aggregate `aggregate_id` of type `aggregate_type`, without tenant.
    pub fn new(aggregate_type: impl Into<String>, aggregate_id: impl Into<String>) -> Self {
        Self {
            tenant: None,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
        }
    }

    /// The stream of aggregate `aggregate_id` of type `A` under `tenant`: what a
    /// [`Repository`](crate::Repository) of `A` reads and writes for commands with that tenant,
    /// named without a store type.
    ///
    /// ```
    /// use cqrs_core::StreamId;
    /// use cqrs_core::doc::Counter;
    ///
    /// let stream = StreamId::of::<Counter>("c-1", Some("acme"));
    /// assert_eq!(stream, StreamId::new("Counter", "c-1").with_tenant("acme"));
    /// assert_eq!(stream.to_string(), "acme/Counter/c-1");
    /// ```
    pub fn of<A: crate::Aggregate>(aggregate_id: impl Into<String>, tenant: Option<&str>) -> Self {
        Self::new(A::TYPE, aggregate_id).with_optional_tenant(tenant.map(str::to_owned))
    }

    /// The same stream under `tenant`.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The same stream under an optional tenant.
    pub fn with_optional_tenant(mut self, tenant: Option<String>) -> Self {
        self.tenant = tenant;
        self
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(tenant) = &self.tenant {
            write!(f, "{tenant}/")?;
        }
        write!(f, "{}/{}", self.aggregate_type, self.aggregate_id)
    }
}

/// What the writer believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExpectedVersion {
    /// No check: append whatever the version is. Use only for streams with a single writer.
    Any,
    /// The stream must not exist yet (no events).
    NoStream,
    /// The stream's last event must have exactly this version (`Exact(0)` equals `NoStream`).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose current version is `current` (0: no events) satisfies this.
    pub fn is_satisfied_by(self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::Exact(v) => current == v,
        }
    }

    /// The version this expectation pins, if any.
    pub fn pinned(self) -> Option<u64> {
        match self {
            Self::Any => None,
            Self::NoStream => Some(0),
            Self::Exact(v) => Some(v),
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Where a reader stands in one stream: the version of the last event seen and its store-wide
/// position. Stores use the position to resume without scanning (the stream sequence on
/// JetStream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct StreamPosition {
    /// Aggregate version of the last event seen (0: none).
    pub version: u64,
    /// Store-wide position of that event (0: none).
    pub position: u64,
}

/// Selects events when reading the whole store. Empty lists select everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFilter {
    /// Only these aggregate types.
    pub aggregate_types: Vec<String>,
    /// Only these tenants.
    pub tenants: Vec<String>,
    /// Only these event type names.
    pub event_types: Vec<String>,
    /// Only events recorded at or after this instant.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub recorded_from: Option<OffsetDateTime>,
    /// Only events recorded before this instant.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub recorded_until: Option<OffsetDateTime>,
}

impl EventFilter {
    /// Everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Adds an aggregate type.
    pub fn aggregate_type(mut self, aggregate_type: impl Into<String>) -> Self {
        self.aggregate_types.push(aggregate_type.into());
        self
    }

    /// Adds a tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenants.push(tenant.into());
        self
    }

    /// Adds an event type.
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_types.push(event_type.into());
        self
    }

    /// Keeps events recorded in `[from, until)`; either bound may be open.
    pub fn recorded_between(
        mut self,
        from: Option<OffsetDateTime>,
        until: Option<OffsetDateTime>,
    ) -> Self {
        self.recorded_from = from;
        self.recorded_until = until;
        self
    }

    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        fn admits(list: &[String], value: &str) -> bool {
            list.is_empty() || list.iter().any(|v| v == value)
        }
        admits(&self.aggregate_types, &event.aggregate_type)
            && (self.tenants.is_empty()
                || event
                    .metadata
                    .tenant
                    .as_deref()
                    .is_some_and(|t| admits(&self.tenants, t)))
            && admits(&self.event_types, &event.payload.event_type)
            && self
                .recorded_from
                .is_none_or(|from| event.recorded_at >= from)
            && self
                .recorded_until
                .is_none_or(|until| event.recorded_at < until)
    }
}
