//! The CLI's error type and the documents it prints (serialised as-is with `--json`).

use cqrs_core::{RecordedEvent, StoreError};
use cqrs_nats::ConnectError;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use time::OffsetDateTime;
use uuid::Uuid;

/// Everything that can go wrong in the CLI.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The server could not be reached.
    #[error("cannot connect to {server}")]
    Connect {
        /// The URL given.
        server: String,
        /// Why.
        #[source]
        source: cqrs_nats::async_nats::ConnectError,
    },
    /// The server has no JetStream.
    #[error("JetStream is not enabled on {0}")]
    NoJetStream(String),
    /// No `EVENTS_*` stream on the server.
    #[error("no contexts (streams named EVENTS_*) on the server")]
    NoContexts,
    /// Several contexts and no `--context`.
    #[error("several contexts exist ({0}): choose one with --context")]
    AmbiguousContext(String),
    /// `--context` names a context without a stream.
    #[error("context `{context}` not found: no stream {stream}")]
    UnknownContext {
        /// The context given.
        context: String,
        /// The stream looked for.
        stream: String,
    },
    /// The context's stream is not an events stream of this library's layout.
    #[error(
        "stream {stream} is not a partitioned events stream (it listens on {subjects}, not \
         <context>.events.*.*.* with a partition transform)"
    )]
    NotAnEventStream {
        /// The stream.
        stream: String,
        /// The subjects it listens on.
        subjects: String,
    },
    /// `replay` of a projection without checkpoints in the context.
    #[error(
        "projection `{projection}` has no checkpoints in context `{context}` (see `projections`)"
    )]
    UnknownProjection {
        /// The name given.
        projection: String,
        /// The context.
        context: String,
    },
    /// `switch-over` given the name of a version of a projection (`<base>_vN`) instead of the
    /// projection's own.
    #[error(
        "`{projection}` is version {version} of projection `{base}`: name the projection \
         (`switch-over {base} --to …`)"
    )]
    VersionName {
        /// The name given.
        projection: String,
        /// The projection it is a version of.
        base: String,
        /// Its version.
        version: u32,
    },
    /// A command that changes something, run without `--yes`: what it would do (exit code 2).
    #[error("not done without --yes: {0}")]
    NotConfirmed(String),
    /// A change refused, nothing done (`switch-over` of a version that has not caught up, or is
    /// live already). `output` is printed on stdout first (the outcome's JSON document with
    /// `--json`, else nothing).
    #[error("{message}")]
    Refused {
        /// Why, on stderr.
        message: String,
        /// What goes to stdout.
        output: String,
    },
    /// A JetStream request failed.
    #[error("{operation} failed")]
    JetStream {
        /// What was being done.
        operation: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Opening the store failed.
    #[error(transparent)]
    Store(#[from] ConnectError),
    /// Reading events failed.
    #[error(transparent)]
    Read(#[from] StoreError),
    /// Writing to stdout failed (e.g. a closed pipe).
    #[error("cannot read the input")]
    Input(#[source] std::io::Error),
    /// `import` without `--context`.
    #[error("import needs --context: the context to write the events into")]
    ImportWithoutContext,
    /// An `import` line that is not an exported event, or that the context cannot take.
    #[error("line {line} of the import: {reason}")]
    BadImport {
        /// The 1-based line number.
        line: u64,
        /// What is wrong and what to do.
        reason: String,
    },
    #[error("cannot write the output")]
    Output(#[source] std::io::Error),
    /// Encoding the JSON output failed.
    #[error("cannot encode the JSON output")]
    Json(#[from] serde_json::Error),
    /// `diagram` in a binary that registers no aggregates.
    #[error(
        "no aggregates are registered in this binary{}: `diagram` draws the state machines of \
         operator binaries that register them, e.g. \
         `cqrs_cli::Cli::new().aggregate::<Order>().run()`",
        context_clause(.context.as_deref())
    )]
    NothingRegistered {
        /// The `--context` given.
        context: Option<String>,
    },
    /// `diagram` of an aggregate that is not registered.
    #[error("aggregate `{name}` is not registered{}; registered: {registered}", context_clause(.context.as_deref()))]
    UnknownAggregate {
        /// The name given.
        name: String,
        /// The `--context` given.
        context: Option<String>,
        /// The registered aggregates, `Order (sales), BankAccount (bank)`.
        registered: String,
    },
    /// `diagram` of an aggregate registered in several contexts, without `--context`.
    #[error(
        "aggregate `{name}` is registered in several contexts ({contexts}): choose one with --context"
    )]
    AmbiguousAggregate {
        /// The name given.
        name: String,
        /// Its contexts.
        contexts: String,
    },
    /// `diagram` of an aggregate that declares no transitions.
    #[error(
        "aggregate `{0}` is not a state machine (it declares no transitions), so it has no diagram"
    )]
    NotAStateMachine(String),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

/// The words naming context `c` in an error (` in context …`), or nothing.
fn context_clause(context: Option<&str>) -> String {
    context.map_or_else(String::new, |c| format!(" in context `{c}`"))
}

impl CliError {
    /// The process exit code: 2 for a change not confirmed with `--yes` (as for invalid
    /// arguments), 1 for everything else.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::NotConfirmed(_) | Self::ImportWithoutContext => 2,
            _ => 1,
        }
    }

    /// What the error prints on stdout before its line on stderr (a refusal's document).
    pub(crate) fn output(&self) -> Option<&str> {
        match self {
            Self::Refused { output, .. } if !output.is_empty() => Some(output),
            _ => None,
        }
    }

    /// A [`CliError::JetStream`] for `operation`.
    pub(crate) fn jetstream(
        operation: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::JetStream {
            operation: operation.into(),
            source: source.into(),
        }
    }
}

/// `error` and its sources on one line, `a: b: c`, without repeating a source already contained
/// in the text before it.
pub(crate) fn one_line(error: &CliError) -> String {
    cqrs_core::error::report(error).replace(['\r', '\n'], " ")
}

/// One event with its envelope, as printed by `history` and `trace`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct EventDoc {
    pub(crate) event_id: Uuid,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) tenant: Option<String>,
    pub(crate) version: u64,
    pub(crate) position: u64,
    pub(crate) event_type: String,
    pub(crate) schema_version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) recorded_at: OffsetDateTime,
    pub(crate) correlation_id: Uuid,
    pub(crate) causation_id: Option<Uuid>,
    pub(crate) command_id: Option<Uuid>,
    pub(crate) command_causation_id: Option<Uuid>,
    pub(crate) actor: Option<String>,
    pub(crate) trace: Option<String>,
    pub(crate) extra: BTreeMap<String, String>,
    pub(crate) body: serde_json::Value,
}

impl From<RecordedEvent> for EventDoc {
    fn from(event: RecordedEvent) -> Self {
        let body = serde_json::from_slice(&event.payload.data).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&event.payload.data).into_owned())
        });
        Self {
            event_id: event.event_id,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            tenant: event.metadata.tenant,
            version: event.version,
            position: event.position,
            event_type: event.payload.event_type,
            schema_version: event.payload.schema_version,
            recorded_at: event.recorded_at,
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
            command_id: event.metadata.command_id,
            command_causation_id: event.metadata.command_causation_id,
            actor: event.metadata.actor,
            trace: event.metadata.trace,
            extra: event.metadata.extra,
            body,
        }
    }
}

/// `history`.
#[derive(Debug, Serialize)]
pub(crate) struct HistoryDoc {
    pub(crate) context: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) tenant: Option<String>,
    pub(crate) events: Vec<EventDoc>,
}

/// `trace`.
#[derive(Debug, Serialize)]
pub(crate) struct TraceDoc {
    pub(crate) context: String,
    pub(crate) correlation_id: Uuid,
    pub(crate) events: usize,
    pub(crate) roots: Vec<CommandNode>,
}

/// A command of a flow and the events it wrote.
#[derive(Debug, Serialize)]
pub(crate) struct CommandNode {
    /// `None` for events written without a command (imports, migrations).
    pub(crate) command_id: Option<Uuid>,
    /// The event that caused the command, if any.
    pub(crate) caused_by: Option<Uuid>,
    pub(crate) actor: Option<String>,
    pub(crate) events: Vec<EventNode>,
}

/// An event of a flow and the commands it caused.
#[derive(Debug, Serialize)]
pub(crate) struct EventNode {
    #[serde(flatten)]
    pub(crate) event: EventDoc,
    pub(crate) commands: Vec<CommandNode>,
}

/// Builds the causal tree of the events of one flow (given in position order).
pub(crate) fn build_trace(
    context: String,
    correlation_id: Uuid,
    events: Vec<EventDoc>,
) -> TraceDoc {
    let count = events.len();
    // Group the events by the command that wrote them, keeping first-seen order; events
    // without a command each form their own group.
    let mut groups: Vec<(Option<Uuid>, Vec<EventDoc>)> = Vec::new();
    let mut index: HashMap<Uuid, usize> = HashMap::new();
    for event in events {
        match event.command_id {
            Some(command) => {
                if let Some(&at) = index.get(&command) {
                    groups[at].1.push(event);
                } else {
                    index.insert(command, groups.len());
                    groups.push((Some(command), vec![event]));
                }
            }
            None => groups.push((None, vec![event])),
        }
    }
    let event_ids: HashSet<Uuid> = groups
        .iter()
        .flat_map(|(_, events)| events.iter().map(|e| e.event_id))
        .collect();
    let cause_of = |events: &[EventDoc]| {
        events
            .first()
            .and_then(|e| e.command_causation_id)
            .filter(|cause| event_ids.contains(cause))
    };
    let mut children: HashMap<Uuid, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (at, (_, events)) in groups.iter().enumerate() {
        match cause_of(events) {
            Some(cause) => children.entry(cause).or_default().push(at),
            None => roots.push(at),
        }
    }
    let mut slots: Vec<Option<(Option<Uuid>, Vec<EventDoc>)>> =
        groups.into_iter().map(Some).collect();
    let roots = roots
        .into_iter()
        .filter_map(|at| take_node(at, &mut slots, &children))
        .collect();
    TraceDoc {
        context,
        correlation_id,
        events: count,
        roots,
    }
}

fn take_node(
    at: usize,
    slots: &mut [Option<(Option<Uuid>, Vec<EventDoc>)>],
    children: &HashMap<Uuid, Vec<usize>>,
) -> Option<CommandNode> {
    // Taking the slot out makes a (corrupt) causal cycle terminate.
    let (command_id, events) = slots.get_mut(at)?.take()?;
    let caused_by = events.first().and_then(|e| e.command_causation_id);
    let actor = events.first().and_then(|e| e.actor.clone());
    let events = events
        .into_iter()
        .map(|event| {
            let commands = children
                .get(&event.event_id)
                .map(|kids| {
                    kids.iter()
                        .filter_map(|&kid| take_node(kid, slots, children))
                        .collect()
                })
                .unwrap_or_default();
            EventNode { event, commands }
        })
        .collect();
    Some(CommandNode {
        command_id,
        caused_by,
        actor,
        events,
    })
}

/// `streams`.
#[derive(Debug, Serialize)]
pub(crate) struct StreamsDoc {
    pub(crate) contexts: Vec<ContextDoc>,
}

/// One context of `streams`.
#[derive(Debug, Serialize)]
pub(crate) struct ContextDoc {
    pub(crate) context: String,
    pub(crate) stream: String,
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) first_position: u64,
    pub(crate) last_position: u64,
    pub(crate) aggregates: u64,
    pub(crate) consumers: usize,
}

/// `stats`.
#[derive(Debug, Serialize)]
pub(crate) struct StatsDoc {
    pub(crate) context: String,
    pub(crate) by: &'static str,
    pub(crate) total: u64,
    pub(crate) buckets: Vec<Bucket>,
}

/// One bucket of `stats`.
#[derive(Debug, Serialize)]
pub(crate) struct Bucket {
    pub(crate) key: String,
    pub(crate) count: u64,
}

/// `projections`.
#[derive(Debug, Serialize)]
pub(crate) struct ProjectionsDoc {
    pub(crate) context: String,
    pub(crate) stream: String,
    pub(crate) head: u64,
    pub(crate) projections: Vec<ProjectionDoc>,
}

/// One projection of `projections`: its checkpoints (one per partition) summed up.
#[derive(Debug, Serialize)]
pub(crate) struct ProjectionDoc {
    pub(crate) name: String,
    /// Whether this row is the live version of its projection ([`version_of`]); `None` for a
    /// row with parked events only, of a projection never switched over.
    pub(crate) live: Option<bool>,
    /// Its checkpoints.
    pub(crate) partitions: usize,
    /// Its live workers.
    pub(crate) workers: usize,
    /// Partitions a worker holds now.
    pub(crate) owned: usize,
    /// Events not yet handled ([`cqrs_nats::projection::Lag`]).
    pub(crate) lag: u64,
    /// The lowest checkpoint over its partitions.
    pub(crate) position: u64,
    /// The highest.
    pub(crate) highest_position: u64,
    pub(crate) parked: u64,
    /// False when only parked events remain.
    pub(crate) checkpoints: bool,
}

impl ProjectionDoc {
    /// A projection with no checkpoint (yet): nothing counted.
    pub(crate) fn empty(name: String) -> Self {
        Self {
            name,
            live: None,
            partitions: 0,
            workers: 0,
            owned: 0,
            lag: 0,
            position: 0,
            highest_position: 0,
            parked: 0,
            checkpoints: false,
        }
    }
}

/// The projection a row of `projections` (a checkpoints name) is a version of, and which
/// version: version `k` (≥ 2) of `base` when `name` is `versioned_name(base, k)` (`<base>_v<k>`)
/// and `is_base(base)` (it has a live version recorded, or a row of its own); otherwise version
/// 1 of `name` itself.
pub(crate) fn version_of(name: &str, is_base: impl Fn(&str) -> bool) -> (&str, u32) {
    let versioned = name.rsplit_once("_v").and_then(|(base, digits)| {
        let version: u32 = digits.parse().ok()?;
        // `_v2` only: not `_v1` (version 1 keeps its name), `_v02` or `_v+2`.
        (!base.is_empty()
            && version >= 2
            && cqrs_nats::projection::versioned_name(base, version) == name
            && is_base(base))
        .then_some((base, version))
    });
    versioned.unwrap_or((name, 1))
}

/// `switch-over`: the projection, the version asked for, and what happened.
#[derive(Debug, Serialize)]
pub(crate) struct SwitchOverDoc {
    pub(crate) projection: String,
    pub(crate) context: String,
    /// The version asked for.
    pub(crate) to: u32,
    #[serde(flatten)]
    pub(crate) outcome: SwitchOutcome,
}

/// What `switch-over` did (`"outcome"` and its fields in the JSON document).
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum SwitchOutcome {
    /// Version `to` is live now.
    Switched {
        /// The version that was live.
        from: u32,
        /// Checkpoints of `from` deleted.
        checkpoints_removed: usize,
    },
    /// Refused: version `to` has not caught up.
    NotCaughtUp {
        /// Its events behind the head.
        lag: u64,
        /// Partitions it has no checkpoint on.
        partitions_without_checkpoint: usize,
        /// The live version's runners were stopped (the wait for `to` ran out): readers still
        /// read it, and it does not move until `switch-over` runs again.
        switch_under_way: bool,
    },
    /// Refused: version `to`, or a later one, is live already.
    AlreadyLive {
        /// The live version.
        live: u32,
    },
}

/// `replay`.
#[derive(Debug, Serialize)]
pub(crate) struct ReplayDoc {
    pub(crate) projection: String,
    pub(crate) context: String,
    pub(crate) partitions_reset: usize,
    /// The projection's live workers (that process the events again now).
    pub(crate) workers: usize,
    pub(crate) from: ReplayFromDoc,
}

/// Where `replay` moves the checkpoints: `kind` is `beginning`, `position` or `time`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ReplayFromDoc {
    pub(crate) kind: &'static str,
    pub(crate) position: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) time: Option<OffsetDateTime>,
}

impl ReplayFromDoc {
    /// From `--from-position` or `--from-time` (at most one is given), else the beginning.
    pub(crate) fn new(position: Option<u64>, time: Option<OffsetDateTime>) -> Self {
        let kind = match (position, time) {
            (Some(_), _) => "position",
            (None, Some(_)) => "time",
            (None, None) => "beginning",
        };
        Self {
            kind,
            position,
            time: if position.is_some() { None } else { time },
        }
    }

    /// `the beginning`, `position 42`, `the first event at or after 2026-…Z`.
    pub(crate) fn describe(&self) -> String {
        match (self.position, self.time) {
            (Some(position), _) => format!("position {position}"),
            (None, Some(time)) => format!(
                "the first event stored at or after {}",
                time.to_offset(time::UtcOffset::UTC)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| time.to_string())
            ),
            (None, None) => "the beginning".to_owned(),
        }
    }
}

/// `health`.
#[derive(Debug, Serialize)]
pub(crate) struct HealthDoc {
    pub(crate) context: String,
    pub(crate) healthy: bool,
    pub(crate) checks: Vec<HealthCheck>,
}

/// One check of `health`.
#[derive(Debug, Serialize)]
pub(crate) struct HealthCheck {
    pub(crate) check: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

/// `catalog --json-schema`.
#[derive(Debug, Default, Serialize)]
pub(crate) struct JsonSchemasDoc {
    pub(crate) schemas: Vec<JsonSchemaEntry>,
    /// Registered event enums without schemas.
    pub(crate) without_schemas: Vec<&'static str>,
}

/// One event type and version of `catalog --json-schema`.
#[derive(Debug, Serialize)]
pub(crate) struct JsonSchemaEntry {
    pub(crate) context: Option<String>,
    pub(crate) event_enum: &'static str,
    pub(crate) event_type: &'static str,
    pub(crate) version: u32,
    pub(crate) schema: serde_json::Value,
}

/// `catalog`.
#[derive(Debug, Serialize)]
pub(crate) struct CatalogDoc {
    pub(crate) aggregates: Vec<CatalogAggregate>,
    pub(crate) events: Vec<CatalogEvent>,
}

/// One aggregate of `catalog`.
#[derive(Debug, Serialize)]
pub(crate) struct CatalogAggregate {
    pub(crate) aggregate_type: &'static str,
    pub(crate) context: Option<String>,
    pub(crate) state_machine: bool,
    pub(crate) event_enum: &'static str,
    pub(crate) event_types: Vec<&'static str>,
}

/// One event type of `catalog`.
#[derive(Debug, Serialize)]
pub(crate) struct CatalogEvent {
    pub(crate) context: Option<String>,
    pub(crate) aggregate_type: Option<&'static str>,
    pub(crate) event_enum: &'static str,
    pub(crate) event_type: &'static str,
    pub(crate) version: u32,
    pub(crate) readable_versions: &'static [u32],
    pub(crate) upcasts_from: Vec<u32>,
}

/// `diagram --json`.
#[derive(Debug, Serialize)]
pub(crate) struct DiagramDoc {
    pub(crate) aggregate_type: &'static str,
    pub(crate) context: Option<String>,
    pub(crate) initial: &'static str,
    pub(crate) states: Vec<StateDoc>,
    pub(crate) commands: &'static [&'static str],
    pub(crate) transitions: Vec<TransitionDoc>,
    pub(crate) analysis: AnalysisDoc,
}

/// One state of `diagram`.
#[derive(Debug, Serialize)]
pub(crate) struct StateDoc {
    pub(crate) name: &'static str,
    pub(crate) terminal: bool,
}

/// One transition of `diagram`.
#[derive(Debug, Serialize)]
pub(crate) struct TransitionDoc {
    pub(crate) from: &'static str,
    pub(crate) on: &'static str,
    pub(crate) to: &'static str,
    pub(crate) handler: &'static str,
}

/// What `diagram` found wrong with a machine.
#[derive(Debug, Serialize)]
pub(crate) struct AnalysisDoc {
    pub(crate) unreachable: Vec<&'static str>,
    pub(crate) dead_ends: Vec<&'static str>,
    pub(crate) clean: bool,
}

/// One line of `export`: a stored message as it is, its subject in the form writers publish
/// to.
#[derive(Debug, Serialize)]
pub(crate) struct ExportLine<'a> {
    pub(crate) position: u64,
    pub(crate) subject: String,
    pub(crate) time: String,
    pub(crate) headers: BTreeMap<&'a str, Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) body_hex: Option<String>,
}

impl<'a> ExportLine<'a> {
    /// The line of `message`, stored at `position` at `time`. A subject outside the aggregate
    /// layout is kept as stored.
    pub(crate) fn of(
        subjects: &cqrs_nats::Subjects,
        position: u64,
        time: OffsetDateTime,
        message: &'a cqrs_nats::async_nats::Message,
    ) -> Self {
        let stored = message.subject.as_str();
        let subject = subjects
            .parse(stored)
            .and_then(|(tenant, aggregate_type, id)| {
                subjects.aggregate(tenant.as_deref(), &aggregate_type, &id)
            })
            .unwrap_or_else(|_| stored.to_owned());
        let headers = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .map(|(name, values)| {
                (
                    name.as_ref(),
                    values
                        .iter()
                        .map(cqrs_nats::async_nats::HeaderValue::as_str)
                        .collect(),
                )
            })
            .collect();
        let (body, body_hex) = match std::str::from_utf8(&message.payload) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(message.payload.iter().fold(String::new(), |mut hex, b| {
                    let _ = write!(hex, "{b:02x}");
                    hex
                })),
            ),
        };
        Self {
            position,
            subject,
            time: time
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            headers,
            body,
            body_hex,
        }
    }
}

/// What `import` did.
#[derive(Debug, Serialize)]
pub(crate) struct ImportDoc {
    pub(crate) context: String,
    pub(crate) imported: u64,
    pub(crate) skipped: u64,
    pub(crate) ignored: u64,
}

/// One line of an export, as `import` reads it.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ImportLine {
    pub(crate) subject: String,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub(crate) body: Option<String>,
    #[serde(default)]
    pub(crate) body_hex: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_of_rows() {
        let bases = |base: &str| ["totals", "a_v2"].contains(&base);
        assert_eq!(version_of("totals", bases), ("totals", 1));
        assert_eq!(version_of("totals_v2", bases), ("totals", 2));
        assert_eq!(version_of("totals_v12", bases), ("totals", 12));
        // A name of that shape whose base is unknown is a projection of its own.
        assert_eq!(version_of("other_v2", bases), ("other_v2", 1));
        // Not a version name: version 1 keeps its name, no leading zeros or signs, no base.
        for name in [
            "totals_v1",
            "totals_v0",
            "totals_v02",
            "totals_v+2",
            "totals_v",
            "_v2",
        ] {
            assert_eq!(version_of(name, |_| true), (name, 1), "{name}");
        }
        assert_eq!(version_of("a_v2_v3", bases), ("a_v2", 3));
        assert_eq!(version_of("a_v2", |_| true), ("a", 2));
    }
}
