//! Who asked for what, and why: correlation, causation, tenant, actor and trace context, with the
//! propagation rules of the design.
//!
//! - A root command's correlation id is its own command id; it has no causation.
//! - The events of a command get `causation_id = command_id` and the command's correlation id.
//! - A command issued in reaction to an event gets `causation_id = event_id` and the event's
//!   correlation id.
//!
//! Ids given by a caller are never regenerated.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Namespace of the deterministic (v5) ids the framework derives from other ids.
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b8e_43a7_4d0b_9a55_0c2e_8d1f_7a31);

/// A new time-ordered (v7) id: for events and commands that are not derived from another id.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// A deterministic id derived from `parts`: the same parts always give the same id, so that a
/// retried or redelivered message produces the same id and idempotency can recognise it.
pub fn derived_id(parts: &[&[u8]]) -> Uuid {
    let mut name = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for part in parts {
        // Length-prefix every part so that ("ab","c") and ("a","bc") never collide.
        name.extend_from_slice(&(part.len() as u64).to_be_bytes());
        name.extend_from_slice(part);
    }
    Uuid::new_v5(&DERIVED_ID_NAMESPACE, &name)
}

/// Metadata of a command: identity, causal context and who asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMetadata {
    /// Id of this command; also the default idempotency key.
    pub command_id: Uuid,
    /// The flow this command belongs to.
    pub correlation_id: Uuid,
    /// The event that triggered this command; `None` for a root command.
    pub causation_id: Option<Uuid>,
    /// Tenant the command acts for; part of the aggregate's stream identity.
    pub tenant: Option<String>,
    /// Who issued the command, e.g. `user:42`, `agent:pricing`, `system`.
    pub actor: Option<String>,
    /// W3C `traceparent` of the caller.
    pub trace: Option<String>,
    /// The aggregate version the caller based the command on; `None` lets the repository use the
    /// version it loaded (and retry on conflict when allowed).
    pub expected_version: Option<u64>,
    /// The newest event the caller has seen, as a position in the store it was read from — for
    /// a process manager's command, its triggering event. A refusal, or a decision to write
    /// nothing, is answered only on a state read from a store that holds every event up to it
    /// ([`EventStore::version_past`](crate::EventStore::version_past)): a copy of the store that
    /// lags — even a JetStream leader cut off from its cluster, which answers from its old state
    /// until it steps down — can serve the aggregate without the very event the caller reacts
    /// to. `None`: no such floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_position: Option<SeenPosition>,
    /// Key under which a retried command is recognised and answered with its original outcome.
    /// `None` means the command id is used.
    pub idempotency_key: Option<String>,
    /// Anything else to carry onto the events.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl CommandMetadata {
    /// A root command: a fresh command id that is also its correlation id.
    pub fn root() -> Self {
        Self::root_with_id(new_id())
    }

    /// A root command with a caller-chosen id (e.g. from an HTTP idempotency header).
    pub fn root_with_id(command_id: Uuid) -> Self {
        Self {
            command_id,
            correlation_id: command_id,
            causation_id: None,
            tenant: None,
            actor: None,
            trace: None,
            expected_version: None,
            seen_position: None,
            idempotency_key: None,
            extra: BTreeMap::new(),
        }
    }

    /// A command issued in reaction to an event: it joins the event's flow, names the event as
    /// its cause and keeps its tenant and trace. The command id is fresh.
    pub fn caused_by(event: &Metadata, event_id: Uuid) -> Self {
        Self::caused_by_with_id(event, event_id, new_id())
    }

    /// Like [`caused_by`](Self::caused_by), with the deterministic command id that a process
    /// manager derives from (its name, the triggering event id, the index of the command), so a
    /// redelivered event re-issues the same command and idempotency makes it happen once.
    pub fn reaction(process: &str, event: &Metadata, event_id: Uuid, index: u32) -> Self {
        let command_id = derived_id(&[
            b"reaction",
            process.as_bytes(),
            event_id.as_bytes(),
            &index.to_be_bytes(),
        ]);
        Self::caused_by_with_id(event, event_id, command_id)
    }

    fn caused_by_with_id(event: &Metadata, event_id: Uuid, command_id: Uuid) -> Self {
        Self {
            command_id,
            correlation_id: event.correlation_id,
            causation_id: Some(event_id),
            tenant: event.tenant.clone(),
            actor: event.actor.clone(),
            trace: event.trace.clone(),
            expected_version: None,
            seen_position: None,
            idempotency_key: None,
            extra: BTreeMap::new(),
        }
    }

    /// Sets the tenant.
    pub fn with_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sets the actor.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the W3C `traceparent`.
    pub fn with_trace(mut self, traceparent: impl Into<String>) -> Self {
        self.trace = Some(traceparent.into());
        self
    }

    /// Requires the aggregate to be at exactly this version (0: not yet created): the version
    /// the caller based the command on. The repository checks it before deciding, so a command
    /// based on another version is [`StoreError::Conflict`](crate::StoreError::Conflict) —
    /// never a refusal by a state the caller has not seen — unless it is a retry of this very
    /// command, which gets its original events.
    pub fn with_expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Sets [`seen_position`](Self::seen_position): the caller has seen `store`'s events up to
    /// `position` (an event it read, e.g. [`SeenPosition::of`]), so the command is not refused
    /// on a state older than that.
    pub fn with_seen_position(mut self, seen: SeenPosition) -> Self {
        self.seen_position = Some(seen);
        self
    }

    /// Sets an explicit idempotency key.
    pub fn with_idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Adds an extra key/value carried onto the events.
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// The idempotency key of this command: the explicit one, or the command id.
    pub fn idempotency_key(&self) -> IdempotencyKey {
        match &self.idempotency_key {
            Some(key) => IdempotencyKey::new(key.clone()),
            None => IdempotencyKey::new(self.command_id.to_string()),
        }
    }

    /// The metadata every event of this command carries.
    pub fn event_metadata(&self) -> Metadata {
        Metadata {
            correlation_id: self.correlation_id,
            causation_id: Some(self.command_id),
            command_id: Some(self.command_id),
            command_causation_id: self.causation_id,
            tenant: self.tenant.clone(),
            actor: self.actor.clone(),
            trace: self.trace.clone(),
            extra: self.extra.clone(),
        }
    }
}

/// A position in one store's history that a caller has seen: positions of different stores
/// (JetStream: of different bounded contexts' streams) say nothing about each other, so the
/// store is named with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeenPosition {
    /// The store, as [`EventEnvelope::store`](crate::EventEnvelope::store) names it
    /// (JetStream: the stream's name, `EVENTS_<CONTEXT>`).
    pub store: String,
    /// The store-wide position of the event.
    pub position: u64,
}

impl SeenPosition {
    /// Where `event` stands in the store it was read from; `None` when its reader does not name
    /// the store.
    pub fn of<E>(event: &crate::EventEnvelope<E>) -> Option<Self> {
        event.store.as_deref().map(|store| Self {
            store: store.to_owned(),
            position: event.position,
        })
    }
}

impl std::fmt::Display for SeenPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.store, self.position)
    }
}

impl Default for CommandMetadata {
    fn default() -> Self {
        Self::root()
    }
}

/// Metadata of a stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The flow this event belongs to.
    pub correlation_id: Uuid,
    /// What directly caused the event: the command id for events written by a command.
    pub causation_id: Option<Uuid>,
    /// The command that wrote this event.
    pub command_id: Option<Uuid>,
    /// What triggered that command (an event id); `None` for a root command. With it the causal
    /// tree event -> command -> event can be rebuilt from the stream alone.
    pub command_causation_id: Option<Uuid>,
    /// Tenant of the aggregate.
    pub tenant: Option<String>,
    /// Who issued the command.
    pub actor: Option<String>,
    /// W3C `traceparent`.
    pub trace: Option<String>,
    /// Anything else.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, String>,
}

impl Metadata {
    /// Metadata of an event with no command behind it (imports, migrations): a fresh
    /// correlation id and nothing else.
    pub fn standalone() -> Self {
        Self {
            correlation_id: new_id(),
            causation_id: None,
            command_id: None,
            command_causation_id: None,
            tenant: None,
            actor: None,
            trace: None,
            extra: BTreeMap::new(),
        }
    }
}

/// The key under which a store recognises a retried append and answers with the original commit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the `index`-th event appended under this key: deterministic, so that a retry
    /// writes the same event ids (`Nats-Msg-Id` on JetStream) and is deduplicated.
    pub fn event_id(&self, index: usize) -> Uuid {
        derived_id(&[b"event", self.0.as_bytes(), &(index as u64).to_be_bytes()])
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_command_correlates_to_itself() {
        let cmd = CommandMetadata::root();
        assert_eq!(cmd.correlation_id, cmd.command_id);
        assert_eq!(cmd.causation_id, None);
    }

    #[test]
    fn events_of_a_command_are_caused_by_it() {
        let cmd = CommandMetadata::root()
            .with_tenant("acme")
            .with_actor("user:42")
            .with_trace("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        let meta = cmd.event_metadata();
        assert_eq!(meta.correlation_id, cmd.correlation_id);
        assert_eq!(meta.causation_id, Some(cmd.command_id));
        assert_eq!(meta.command_id, Some(cmd.command_id));
        assert_eq!(meta.command_causation_id, None);
        assert_eq!(meta.tenant.as_deref(), Some("acme"));
        assert_eq!(meta.actor.as_deref(), Some("user:42"));
        assert_eq!(meta.trace, cmd.trace);
    }

    #[test]
    fn follow_up_command_is_caused_by_the_event_and_keeps_the_flow() {
        let root = CommandMetadata::root().with_tenant("acme");
        let event_meta = root.event_metadata();
        let event_id = new_id();
        let follow = CommandMetadata::caused_by(&event_meta, event_id);
        assert_eq!(follow.correlation_id, root.correlation_id);
        assert_eq!(follow.causation_id, Some(event_id));
        assert_ne!(follow.command_id, root.command_id);
        assert_eq!(follow.tenant.as_deref(), Some("acme"));
        // Its events record what triggered the command.
        assert_eq!(follow.event_metadata().command_causation_id, Some(event_id));
    }

    #[test]
    fn reactions_have_deterministic_ids() {
        let meta = CommandMetadata::root().event_metadata();
        let event_id = new_id();
        let a = CommandMetadata::reaction("shipping", &meta, event_id, 0);
        let b = CommandMetadata::reaction("shipping", &meta, event_id, 0);
        let c = CommandMetadata::reaction("shipping", &meta, event_id, 1);
        let d = CommandMetadata::reaction("billing", &meta, event_id, 0);
        assert_eq!(a.command_id, b.command_id);
        assert_ne!(a.command_id, c.command_id);
        assert_ne!(a.command_id, d.command_id);
    }

    #[test]
    fn derived_ids_do_not_collide_on_concatenation() {
        assert_ne!(derived_id(&[b"ab", b"c"]), derived_id(&[b"a", b"bc"]));
        let key = IdempotencyKey::new("k");
        assert_eq!(key.event_id(0), IdempotencyKey::new("k").event_id(0));
        assert_ne!(key.event_id(0), key.event_id(1));
    }
}
