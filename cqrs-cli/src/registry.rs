//! The types a binary registers: aggregates with their state machines and event catalogs, and
//! event enums of their own.

use cqrs_core::schema::{EventJsonSchema, EventJsonSchemas};
use cqrs_core::state_machine::StateMachine;
use cqrs_core::{Aggregate, DomainEvent, EventSchema};
use std::any::TypeId;
use std::fmt::Write as _;

/// The aggregates and event enums an operator binary knows, for `catalog`, `diagram` and the
/// default context of `history`.
///
/// Registering an aggregate registers its event enum too. A context (the bounded context whose
/// stream `EVENTS_<CONTEXT>` holds the events) is optional; registering the same type twice in
/// the same context is a no-op.
///
/// ```
/// use cqrs_cli::Registry;
/// # use cqrs_core::doc::{Counter, CounterEvent};
/// let registry = Registry::new().aggregate_in::<Counter>("counting").events::<CounterEvent>();
/// assert_eq!(registry.aggregates().len(), 1);
/// assert_eq!(registry.aggregates()[0].aggregate_type(), "Counter");
/// assert_eq!(registry.aggregates()[0].context(), Some("counting"));
/// // `Counter` is a plain aggregate: no transition table.
/// assert!(registry.aggregates()[0].state_machine().is_none());
/// // Its events come with it, so registering `CounterEvent` again (without a context) adds
/// // a standalone set.
/// assert_eq!(registry.event_sets().count(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Registry {
    aggregates: Vec<AggregateEntry>,
    standalone: Vec<EventSet>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers aggregate `A` (its type name, its transition table if it is a state machine,
    /// and its event enum) without a context.
    pub fn aggregate<A: Aggregate>(self) -> Self {
        self.add_aggregate::<A>(None)
    }

    /// Registers aggregate `A` in bounded context `context`.
    pub fn aggregate_in<A: Aggregate>(self, context: impl Into<String>) -> Self {
        self.add_aggregate::<A>(Some(context.into()))
    }

    /// Registers an event enum on its own (one no registered aggregate records, e.g. events
    /// another service writes) without a context.
    pub fn events<E: DomainEvent>(self) -> Self {
        self.add_events::<E>(None)
    }

    /// Registers an event enum on its own in bounded context `context`.
    pub fn events_in<E: DomainEvent>(self, context: impl Into<String>) -> Self {
        self.add_events::<E>(Some(context.into()))
    }

    /// Gives every registered set of event enum `E` its JSON Schemas, for `catalog
    /// --json-schema` (the enum derives them with `#[event(json_schema)]`); registers `E` on
    /// its own first when nothing registered it yet.
    pub fn json_schemas<E: EventJsonSchemas>(mut self) -> Self {
        let type_id = TypeId::of::<E>();
        if !self.event_sets().any(|set| set.type_id == type_id) {
            self = self.events::<E>();
        }
        let sets = self
            .aggregates
            .iter_mut()
            .map(|a| &mut a.events)
            .chain(&mut self.standalone);
        for set in sets.filter(|set| set.type_id == type_id) {
            set.json_schemas = Some(E::json_schemas);
        }
        self
    }

    /// The registered aggregates, in registration order.
    pub fn aggregates(&self) -> &[AggregateEntry] {
        &self.aggregates
    }

    /// Every registered event enum: those of the aggregates, then those registered on their
    /// own, in registration order.
    pub fn event_sets(&self) -> impl Iterator<Item = &EventSet> {
        self.aggregates
            .iter()
            .map(|a| &a.events)
            .chain(&self.standalone)
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.aggregates.is_empty() && self.standalone.is_empty()
    }

    fn add_aggregate<A: Aggregate>(mut self, context: Option<String>) -> Self {
        let type_id = TypeId::of::<A>();
        if self
            .aggregates
            .iter()
            .any(|a| a.type_id == type_id && a.context == context)
        {
            return self;
        }
        let events = EventSet::of::<A::Event>(context.clone(), Some(A::TYPE));
        // The aggregate's events supersede the same enum registered on its own.
        self.standalone
            .retain(|set| !(set.type_id == events.type_id && set.context == context));
        self.aggregates.push(AggregateEntry {
            type_id,
            aggregate_type: A::TYPE,
            context,
            state_machine: A::transition_table(),
            events,
        });
        self
    }

    fn add_events<E: DomainEvent>(mut self, context: Option<String>) -> Self {
        let set = EventSet::of::<E>(context, None);
        if self
            .event_sets()
            .any(|known| known.type_id == set.type_id && known.context == set.context)
        {
            return self;
        }
        self.standalone.push(set);
        self
    }

    /// The context `aggregate_type` is registered in, when exactly one is.
    pub(crate) fn context_of(&self, aggregate_type: &str) -> Option<&str> {
        let mut contexts = self
            .aggregates
            .iter()
            .filter(|a| a.aggregate_type == aggregate_type)
            .filter_map(|a| a.context.as_deref());
        let first = contexts.next()?;
        contexts.all(|c| c == first).then_some(first)
    }

    /// One line for `--help`: what is registered.
    pub(crate) fn summary(&self) -> String {
        if self.is_empty() {
            return "This binary registers no types: `catalog` and `diagram` show the event types \
                    and state machines of operator binaries built with `cqrs_cli::Cli` \
                    that register them."
                .to_owned();
        }
        let aggregates: Vec<String> = self.aggregates.iter().map(AggregateEntry::label).collect();
        let types: usize = self.event_sets().map(|set| set.catalog.len()).sum();
        let mut text = if aggregates.is_empty() {
            "Registered: no aggregates".to_owned()
        } else {
            format!("Registered aggregates: {}", aggregates.join(", "))
        };
        let _ = write!(
            text,
            "; {types} event type{}. `catalog` lists them, `diagram <AGGREGATE>` draws a state \
             machine.",
            if types == 1 { "" } else { "s" }
        );
        text
    }
}

/// A registered aggregate.
#[derive(Debug, Clone)]
pub struct AggregateEntry {
    type_id: TypeId,
    aggregate_type: &'static str,
    context: Option<String>,
    state_machine: Option<StateMachine>,
    events: EventSet,
}

impl AggregateEntry {
    /// The aggregate type name ([`Aggregate::TYPE`]).
    pub fn aggregate_type(&self) -> &'static str {
        self.aggregate_type
    }

    /// The bounded context it was registered in, if any.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// Its transition table ([`Aggregate::transition_table`]), if it is a state machine.
    pub fn state_machine(&self) -> Option<&StateMachine> {
        self.state_machine.as_ref()
    }

    /// Its event enum.
    pub fn events(&self) -> &EventSet {
        &self.events
    }

    /// `Order (sales)`, or `Order` without a context.
    pub(crate) fn label(&self) -> String {
        match &self.context {
            Some(context) => format!("{} ({context})", self.aggregate_type),
            None => self.aggregate_type.to_owned(),
        }
    }
}

/// A registered event enum and its catalog.
#[derive(Debug, Clone)]
pub struct EventSet {
    type_id: TypeId,
    rust_type: &'static str,
    context: Option<String>,
    aggregate_type: Option<&'static str>,
    catalog: &'static [EventSchema],
    json_schemas: Option<fn() -> Vec<EventJsonSchema>>,
}

impl EventSet {
    fn of<E: DomainEvent>(context: Option<String>, aggregate_type: Option<&'static str>) -> Self {
        Self {
            type_id: TypeId::of::<E>(),
            rust_type: std::any::type_name::<E>(),
            context,
            aggregate_type,
            catalog: E::catalog(),
            json_schemas: None,
        }
    }

    /// The Rust type of the enum (as `std::any::type_name` gives it).
    pub fn rust_type(&self) -> &'static str {
        self.rust_type
    }

    /// The bounded context it was registered in, if any.
    pub fn context(&self) -> Option<&str> {
        self.context.as_deref()
    }

    /// The aggregate that records these events, or `None` for an enum registered on its own.
    pub fn aggregate_type(&self) -> Option<&'static str> {
        self.aggregate_type
    }

    /// The catalog ([`DomainEvent::catalog`]): type names, current versions, readable versions.
    pub fn catalog(&self) -> &'static [EventSchema] {
        self.catalog
    }

    /// The JSON Schema of each event type and version, when registered with
    /// [`Registry::json_schemas`].
    pub fn json_schemas(&self) -> Option<Vec<EventJsonSchema>> {
        self.json_schemas.map(|schemas| schemas())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_core::doc::{Counter, CounterEvent};

    #[test]
    fn aggregates_bring_their_events_and_duplicates_are_ignored() {
        let registry = Registry::new()
            .events_in::<CounterEvent>("a")
            .aggregate_in::<Counter>("a")
            .aggregate_in::<Counter>("a")
            .events_in::<CounterEvent>("a")
            .events_in::<CounterEvent>("b");
        assert_eq!(registry.aggregates().len(), 1);
        let sets: Vec<_> = registry.event_sets().collect();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[0].aggregate_type(), Some("Counter"));
        assert_eq!(sets[0].context(), Some("a"));
        assert_eq!(sets[1].aggregate_type(), None);
        assert_eq!(sets[1].context(), Some("b"));
        assert!(sets[0].rust_type().ends_with("CounterEvent"));
        assert_eq!(sets[0].catalog()[0].name, "Added");
    }

    #[test]
    fn the_context_of_an_aggregate_is_known_when_unambiguous() {
        let one = Registry::new().aggregate_in::<Counter>("a");
        assert_eq!(one.context_of("Counter"), Some("a"));
        assert_eq!(one.context_of("Other"), None);
        let two = one.aggregate_in::<Counter>("b");
        assert_eq!(two.context_of("Counter"), None);
        assert_eq!(
            Registry::new().aggregate::<Counter>().context_of("Counter"),
            None
        );
    }

    #[test]
    fn the_summary_names_what_is_registered() {
        assert!(Registry::new().summary().contains("registers no types"));
        let summary = Registry::new().aggregate_in::<Counter>("a").summary();
        assert!(
            summary.contains("Registered aggregates: Counter (a); 1 event type."),
            "{summary}"
        );
        let summary = Registry::new().events::<CounterEvent>().summary();
        assert!(
            summary.contains("no aggregates; 1 event type."),
            "{summary}"
        );
    }
}
