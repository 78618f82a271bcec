//! `catalog` and `diagram`: documents built from the registry alone, no server.

use super::model::{
    AnalysisDoc, CatalogAggregate, CatalogDoc, CatalogEvent, CliError, DiagramDoc, JsonSchemaEntry,
    JsonSchemasDoc, StateDoc, TransitionDoc,
};
use super::registry::{AggregateEntry, Registry};
use cqrs_core::state_machine::StateMachine;

/// Whether something registered in `registered` belongs to `--context` `wanted`: everything
/// does without `--context`, and what was registered without a context belongs to every one.
fn in_context(registered: Option<&str>, wanted: Option<&str>) -> bool {
    match (registered, wanted) {
        (Some(registered), Some(wanted)) => registered == wanted,
        _ => true,
    }
}

/// `catalog`.
pub(crate) fn catalog(registry: &Registry, context: Option<&str>) -> CatalogDoc {
    let aggregates = registry
        .aggregates()
        .iter()
        .filter(|a| in_context(a.context(), context))
        .map(|a| CatalogAggregate {
            aggregate_type: a.aggregate_type(),
            context: a.context().map(str::to_owned),
            state_machine: a.state_machine().is_some(),
            event_enum: a.events().rust_type(),
            event_types: a.events().catalog().iter().map(|e| e.name).collect(),
        })
        .collect();
    let events = registry
        .event_sets()
        .filter(|set| in_context(set.context(), context))
        .flat_map(|set| {
            set.catalog().iter().map(move |schema| CatalogEvent {
                context: set.context().map(str::to_owned),
                aggregate_type: set.aggregate_type(),
                event_enum: set.rust_type(),
                event_type: schema.name,
                version: schema.version,
                readable_versions: schema.readable_versions,
                upcasts_from: schema
                    .readable_versions
                    .iter()
                    .copied()
                    .filter(|v| *v != schema.version)
                    .collect(),
            })
        })
        .collect();
    CatalogDoc { aggregates, events }
}

/// `catalog --json-schema`: the schemas of the event sets in `context` that have them.
pub(crate) fn json_schemas(registry: &Registry, context: Option<&str>) -> JsonSchemasDoc {
    let mut doc = JsonSchemasDoc::default();
    for set in registry
        .event_sets()
        .filter(|set| in_context(set.context(), context))
    {
        match set.json_schemas() {
            None => doc.without_schemas.push(set.rust_type()),
            Some(schemas) => {
                doc.schemas
                    .extend(schemas.into_iter().map(|schema| JsonSchemaEntry {
                        context: set.context().map(str::to_owned),
                        event_enum: set.rust_type(),
                        event_type: schema.event_type,
                        version: schema.version,
                        schema: schema.schema,
                    }));
            }
        }
    }
    doc.without_schemas.dedup();
    doc
}

/// The registered aggregate `name` (exact, else case-insensitive when that is unambiguous) in
/// `context`.
pub(crate) fn find<'r>(
    registry: &'r Registry,
    name: &str,
    context: Option<&str>,
) -> Result<&'r AggregateEntry, CliError> {
    let candidates: Vec<&AggregateEntry> = registry
        .aggregates()
        .iter()
        .filter(|a| in_context(a.context(), context))
        .collect();
    if candidates.is_empty() {
        return Err(CliError::NothingRegistered {
            context: context.map(str::to_owned),
        });
    }
    let exact: Vec<&AggregateEntry> = candidates
        .iter()
        .copied()
        .filter(|a| a.aggregate_type() == name)
        .collect();
    let matches = if exact.is_empty() {
        candidates
            .iter()
            .copied()
            .filter(|a| a.aggregate_type().eq_ignore_ascii_case(name))
            .collect()
    } else {
        exact
    };
    match matches.as_slice() {
        [] => Err(CliError::UnknownAggregate {
            name: name.to_owned(),
            context: context.map(str::to_owned),
            registered: candidates
                .iter()
                .map(|a| a.label())
                .collect::<Vec<_>>()
                .join(", "),
        }),
        [one] => Ok(one),
        several => {
            // Registered in `--context` and without one: the registration in it wins.
            let mut exact = several.iter().filter(|a| a.context().is_some());
            if let (Some(one), None, Some(_)) = (exact.next(), exact.next(), context) {
                return Ok(one);
            }
            Err(CliError::AmbiguousAggregate {
                name: name.to_owned(),
                contexts: several
                    .iter()
                    .map(|a| a.label())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }
}

/// The state machine of `entry`, or why it has none.
pub(crate) fn machine(entry: &AggregateEntry) -> Result<&StateMachine, CliError> {
    entry
        .state_machine()
        .ok_or_else(|| CliError::NotAStateMachine(entry.aggregate_type().to_owned()))
}

/// `diagram --json`.
pub(crate) fn diagram(entry: &AggregateEntry, machine: &StateMachine) -> DiagramDoc {
    let analysis = machine.analyze();
    DiagramDoc {
        aggregate_type: entry.aggregate_type(),
        context: entry.context().map(str::to_owned),
        initial: machine.initial,
        states: machine
            .states
            .iter()
            .map(|s| StateDoc {
                name: s.name,
                terminal: s.terminal,
            })
            .collect(),
        commands: machine.commands,
        transitions: machine
            .transitions
            .iter()
            .map(|t| TransitionDoc {
                from: t.from,
                on: t.on,
                to: t.to,
                handler: t.handler,
            })
            .collect(),
        analysis: AnalysisDoc {
            clean: analysis.is_clean(),
            unreachable: analysis.unreachable,
            dead_ends: analysis.dead_ends,
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cqrs_core::doc::{Counter, CounterEvent};

    #[test]
    fn the_catalog_follows_the_registry_and_the_context() {
        let registry = Registry::new()
            .aggregate_in::<Counter>("a")
            .events_in::<CounterEvent>("b");
        let doc = catalog(&registry, None);
        assert_eq!(doc.aggregates.len(), 1);
        assert!(!doc.aggregates[0].state_machine);
        assert_eq!(doc.aggregates[0].event_types, ["Added"]);
        assert_eq!(doc.events.len(), 2);
        assert_eq!(doc.events[1].aggregate_type, None);
        assert!(doc.events[1].upcasts_from.is_empty());
        let only_b = catalog(&registry, Some("b"));
        assert!(only_b.aggregates.is_empty());
        assert_eq!(only_b.events.len(), 1);
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["events"][0]["context"], "a");
        assert_eq!(json["events"][0]["readable_versions"][0], 1);
    }

    #[test]
    fn lookups_explain_what_is_missing() {
        let empty = Registry::new();
        let err = find(&empty, "Counter", None).unwrap_err();
        assert!(
            err.to_string().contains("no aggregates are registered"),
            "{err}"
        );
        let registry = Registry::new().aggregate_in::<Counter>("a");
        assert_eq!(
            find(&registry, "counter", None).unwrap().aggregate_type(),
            "Counter"
        );
        let err = find(&registry, "Order", None).unwrap_err().to_string();
        assert_eq!(
            err,
            "aggregate `Order` is not registered; registered: Counter (a)"
        );
        let err = find(&registry, "Counter", Some("b"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("in context `b`"), "{err}");
        let entry = find(&registry, "Counter", None).unwrap();
        let err = machine(entry).unwrap_err().to_string();
        assert!(err.contains("not a state machine"), "{err}");
        let twice = registry.aggregate_in::<Counter>("b");
        let err = find(&twice, "Counter", None).unwrap_err().to_string();
        assert!(
            err.contains("several contexts (Counter (a), Counter (b))"),
            "{err}"
        );
        assert_eq!(
            find(&twice, "Counter", Some("b")).unwrap().context(),
            Some("b")
        );
    }
}
