//! The command line: global options and the commands, documented for `--help`.

use clap::{Parser, Subcommand, ValueEnum};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Operator CLI for the cqrs-nats event store on NATS JetStream.
///
/// Reads the event streams `EVENTS_<CONTEXT>` the library writes (never appending or changing
/// events; reads use short-lived ordered consumers) and decodes the event envelope: versions,
/// positions, types, schema versions, correlation/causation/command ids, actor, tenant and JSON
/// bodies. `replay` and `switch-over` are the commands that change something (a projection's
/// checkpoints, its live version), and only with `--yes`. `catalog` and `diagram` show the event types and state machines a
/// binary registers (see `cqrs_cli::Cli`); they need no server.
///
/// Output is human-readable by default; `--json` prints one stable JSON document per
/// invocation on stdout (the shape is documented on each command). Commands that scan a whole
/// stream (`trace`, `stats`) or a long aggregate (`history`) report their progress on stderr
/// when it is a terminal or with `--progress`, never on stdout. Errors are one line on stderr,
/// exit code 1; invalid arguments, and `replay` or `switch-over` without `--yes`, exit with
/// code 2.
#[derive(Debug, Parser)]
#[command(name = "cqrs", version, propagate_version = true)]
pub(crate) struct Args {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub(crate) server: String,

    /// Bounded context (the stream is `EVENTS_<CONTEXT>`); defaults to the context an aggregate
    /// is registered in, else to the only context on the server when there is exactly one.
    /// Restricts `catalog` and `diagram` to the types registered in that context.
    #[arg(long, global = true)]
    pub(crate) context: Option<String>,

    /// Print one JSON document instead of the human-readable view.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Report the progress of long reads on stderr even when it is not a terminal (as lines),
    /// ending with the final count.
    #[arg(long, global = true)]
    pub(crate) progress: bool,

    /// Seconds to wait for the connection and each JetStream request.
    #[arg(long, global = true, default_value_t = 5)]
    pub(crate) timeout: u64,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// The events of one aggregate, decoded, with their metadata.
    ///
    /// The context defaults to the one the aggregate type is registered in (if this binary
    /// registers it), else to the only context on the server. Loading a long history reports
    /// progress (see `--progress`).
    ///
    /// JSON: `{"context", "aggregate_type", "aggregate_id", "tenant", "events": [EVENT]}` where
    /// EVENT is `{"event_id", "aggregate_type", "aggregate_id", "tenant", "version", "position",
    /// "event_type", "schema_version", "recorded_at" (RFC 3339), "correlation_id",
    /// "causation_id", "command_id", "command_causation_id", "actor", "trace", "extra" (object),
    /// "body" (the JSON body; a string if it is not JSON)}`; absent values are `null`.
    History {
        /// Aggregate type, e.g. `Order`.
        aggregate_type: String,
        /// Aggregate id.
        id: String,
        /// Tenant of the aggregate (none for single-tenant systems).
        #[arg(long)]
        tenant: Option<String>,
    },

    /// The causal tree of one flow (a correlation id): commands, their events, follow-ups.
    ///
    /// Shows the commands of the flow, the events each wrote, and the commands those events
    /// caused, nested. Commands are grouped by the `command_id` of their events and attached
    /// under the event named by their `command_causation_id`; commands whose cause is outside
    /// the flow (or none) are roots. Scans the whole stream, reporting progress (see
    /// `--progress`).
    ///
    /// JSON: `{"context", "correlation_id", "events" (count), "roots":
    /// [COMMAND]}` where COMMAND is `{"command_id", "caused_by", "actor", "events": [EVENT +
    /// "commands": [COMMAND]]}` (EVENT as in `history`).
    Trace {
        /// The correlation id of the flow (a UUID).
        correlation_id: uuid::Uuid,
    },

    /// Follow the new events of a context live, optionally filtered by type, aggregate, tenant.
    ///
    /// Starts after the current head (or at `--from`) and prints each event as it is stored,
    /// polling the stream every `--poll-ms`: one line per event, or with `--json` one EVENT
    /// document per line (JSON Lines; EVENT as in `history`). Runs until interrupted, or until
    /// `--limit` events were printed.
    Tail {
        /// The context to follow (overrides `--context`).
        context: Option<String>,
        /// Only events of this type (repeatable).
        #[arg(long = "type", value_name = "EVENT_TYPE")]
        event_types: Vec<String>,
        /// Only events of this aggregate type (repeatable).
        #[arg(long = "aggregate", value_name = "AGGREGATE_TYPE")]
        aggregate_types: Vec<String>,
        /// Only events of this tenant (repeatable).
        #[arg(long = "tenant", value_name = "TENANT")]
        tenants: Vec<String>,
        /// Start at this store position instead of after the head (1: replay everything).
        #[arg(long)]
        from: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        limit: Option<u64>,
        /// Milliseconds between polls of the stream.
        #[arg(long, default_value_t = 250)]
        poll_ms: u64,
    },

    /// The contexts on the server (streams named `EVENTS_*`) with their event counts.
    ///
    /// Reads the streams' state only (no scan).
    ///
    /// JSON: `{"contexts": [{"context", "stream", "events", "bytes", "first_position",
    /// "last_position", "aggregates" (distinct subjects), "consumers" (all consumers of the
    /// stream, including short-lived readers)}]}`.
    Streams,

    /// Event counts of a context by event type or per time bucket (UTC).
    ///
    /// Scans the whole stream, reporting progress (see `--progress`).
    ///
    /// JSON: `{"context", "by" ("type" | "aggregate" | "hour" | "day"), "total", "buckets":
    /// [{"key", "count"}]}`; buckets by type or aggregate are sorted by count (descending),
    /// time buckets chronologically (keys like `2026-11-26T18:00Z` / `2026-11-26`).
    Stats {
        /// How to bucket the events.
        #[arg(long, value_enum, default_value_t = StatsBy::Type)]
        by: StatsBy,
    },

    /// Every event of a context as NDJSON, for archiving it or moving it elsewhere: one JSON
    /// object a line, in stream order, read in constant memory; progress on stderr.
    ///
    /// A line: `{"position" (stream sequence), "subject" (the subject writers publish the event
    /// to, `<context>.events.<tenant>.<type>.<id>`, without the partition), "time" (RFC 3339, the
    /// server's timestamp), "headers" ({name: [values]}, as stored: the envelope is in
    /// `Cqrs-Envelope`, see README's wire format), "body" (the body as text)}`, with `"body_hex"`
    /// instead of `"body"` for a body that is not UTF-8. Everything the stream holds under
    /// `<context>.events.>` from `--from` up to the head when the export starts. `--json` does not
    /// apply: the output is NDJSON.
    Export {
        /// The first position (stream sequence) to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },

    /// Writes the events of an `export` into a context (`--context`, created if missing, with 8
    /// partitions), keeping their ids, versions, envelopes and bodies: to restore an archive or
    /// move a context to another server or name.
    ///
    /// Each aggregate's events are appended in version order, each with the expectation that
    /// the aggregate is at the version before it, so an aggregate is never written out of order
    /// or twice: events the context already holds (same version, same id) are skipped, which
    /// makes a re-run after an interruption finish the import. An event whose version is already
    /// taken by another event id, or that leaves a gap, stops the import with an error naming
    /// it. Subjects move to the target context (`<source>.events.…` -> `<context>.events.…`);
    /// lines that are not aggregate events are skipped.
    ///
    /// Without `--yes` nothing is written (exit code 2). JSON: `{"context", "imported",
    /// "skipped" (already there), "ignored" (not aggregate events)}`.
    Import {
        /// Read from this file instead of stdin.
        #[arg(long, short)]
        input: Option<std::path::PathBuf>,
        /// Write: without it, `import` only says what it would do.
        #[arg(long)]
        yes: bool,
    },

    /// The projections of a context with their live versions, workers, lag and parked events.
    ///
    /// A projection has one checkpoint per partition of the context's event stream (the KV
    /// bucket `PROJECTION_CHECKPOINTS_<CONTEXT>`, keys `<projection>.<k>`), shown as one row.
    /// Live workers are read from the KV bucket `PROJECTION_WORKERS_<CONTEXT>` (a worker counts
    /// while its heartbeat is recent); the lag counts the events of each partition's filter
    /// stored after its checkpoint (as `JetStreamProjectionRunner::lag` does); parked events are
    /// counted on the dead-letter stream `DEADLETTER_<CONTEXT>` (subject
    /// `<context>.deadletter.<projection>`).
    ///
    /// Each version of a projection is a row of its own: version N of `<projection>` runs as
    /// `<projection>_vN` (version 1 as `<projection>`). LIVE says whether the row is the version
    /// readers read (see `switch-over`): a row named `<base>_vN` (N ≥ 2) is version N of `<base>`
    /// when `<base>` has a live version recorded or a row of its own, else version 1 of itself;
    /// it is live when that version is its base's live version (1 until a switch-over). A row
    /// with parked events only, of a projection never switched over, shows `-` (`null`).
    ///
    /// JSON: `{"context", "stream", "head" (last position), "projections": [{"name",
    /// "live" (bool, or null as above), "partitions" (its checkpoints), "workers" (live
    /// workers; 0 without a workers bucket), "owned" (partitions a worker holds now), "lag"
    /// (events not yet handled), "position" (the lowest checkpoint), "highest_position",
    /// "parked", "checkpoints" (false when only parked events remain)}]}`.
    Projections,

    /// Whether a context is healthy, for probes: exit code 0 when every check passes, 1 when
    /// one fails (the failing checks on stderr).
    ///
    /// Checks: the server answers with JetStream on; the events stream has a leader and every
    /// replica is current and online (`nats stream info`'s cluster view); every projection's
    /// lag is at most `--max-lag` (versions that are not live are not checked: nothing need run
    /// them); no projection has parked events. An unreachable server is an error (exit code
    /// 1) before any check.
    ///
    /// JSON: `{"context", "healthy" (bool), "checks": [{"check" ("server" | "stream" |
    /// "projection <name>"), "ok" (bool), "detail"}]}` — printed whether healthy or not.
    Health {
        /// The most events a live projection may have left to handle.
        #[arg(long, default_value_t = 1000)]
        max_lag: u64,
    },

    /// Move a projection's checkpoints back so that its running workers process events again.
    ///
    /// Sets each of the projection's checkpoints (one per partition) to a new start — the
    /// first event (default), `--from-position` or `--from-time`. Its running workers see their
    /// checkpoints move and process the events from there again (as will workers started
    /// later). A read model fenced by `apply_once` skips the positions it already holds, so
    /// clear it first to rebuild. Creates nothing: an unknown context, or a projection with no
    /// checkpoints in the context, is an error (exit code 1).
    ///
    /// Without `--yes` nothing is changed: it says on stderr what it would do (partitions, live
    /// workers, start) and exits with code 2.
    ///
    /// JSON: `{"projection", "context", "partitions_reset", "workers" (live workers of the
    /// projection, which process the events again), "from": {"kind" ("beginning" | "position" |
    /// "time"), "position", "time" (RFC 3339)}}`; absent values are `null`.
    Replay {
        /// The projection's name, as `projections` lists it.
        projection: String,
        /// Start at this store position (inclusive; 0 and 1 are the beginning).
        #[arg(long, value_name = "POSITION", conflicts_with = "from_time")]
        from_position: Option<u64>,
        /// Start at the first event stored at or after this time (RFC 3339, e.g.
        /// `2026-11-26T18:00:00Z`).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        from_time: Option<OffsetDateTime>,
        /// Do it: without, `replay` only says what it would do.
        #[arg(long)]
        yes: bool,
    },

    /// Make another version of a projection the live one (blue/green), once it has caught up.
    ///
    /// A projection's version N (`Projection::version`) runs as `<projection>_vN` (version 1
    /// as `<projection>`) with checkpoints of its own; the live version is the one readers read,
    /// recorded as `<projection>.live` in the KV bucket `PROJECTION_CHECKPOINTS_<CONTEXT>` (1
    /// until a switch-over). Switching to version `--to` (as
    /// `JetStreamProjectionRunner::switch_over` does) is refused, changing nothing, while that
    /// version lacks a checkpoint on some partition or is further behind the head than the live
    /// version (by more than an event per partition); otherwise the live version's runners stop, version `--to` catches up with where
    /// they stopped (waiting at most `--patience-secs`), becomes live, and the old version's
    /// checkpoints are deleted (its read model is the application's to drop). Run out of
    /// patience, the switch stays under way — the old version stopped, readers still reading it
    /// — until `switch-over` is run again. Creates nothing: an unknown context, or a projection
    /// with neither checkpoints nor a live version in the context, is an error (exit code 1).
    ///
    /// Without `--yes` nothing is changed: it says on stderr what it would do (the live version,
    /// the target and how far behind the head both are) and exits with code 2. A refused switch
    /// (not caught up, or the version is live already) exits with code 1, saying why on stderr;
    /// with `--json` its document is printed on stdout as well.
    ///
    /// JSON: `{"projection", "context", "to" (the version asked for), "outcome"}` and, by
    /// outcome: `"switched"`: `"from"` (the version that was live), `"checkpoints_removed"` (of
    /// `from`); `"not_caught_up"`: `"lag"` (events of version `to` behind the head),
    /// `"partitions_without_checkpoint"`, `"switch_under_way"` (true when the live version's
    /// runners were stopped and the wait for version `to` ran out: run `switch-over` again);
    /// `"already_live"`: `"live"` (the live version, `to` or later).
    SwitchOver {
        /// The projection's name (its version 1 name, as its code names it).
        projection: String,
        /// The version to make live (version 1 is live until a switch-over).
        #[arg(long, value_name = "VERSION", value_parser = clap::value_parser!(u32).range(1..))]
        to: u32,
        /// Seconds to wait for the new version to catch up with where the live version's runners
        /// stopped.
        #[arg(long, value_name = "SECONDS", default_value_t = 30)]
        patience_secs: u64,
        /// Do it: without, `switch-over` only says what it would do.
        #[arg(long)]
        yes: bool,
    },

    /// The event types this binary registers, with schema versions and upcasts.
    ///
    /// Per aggregate (or event enum registered on its own) and context: each event type's
    /// current schema version and the older versions it upcasts from. Needs no server. The stock `cqrs` binary registers nothing; an operator binary built with
    /// `cqrs_cli::Cli` (`Cli::new().aggregate::<Order>().run()`) lists its types.
    /// `--context` keeps the types registered in that context (and those registered without
    /// one).
    ///
    /// JSON: `{"aggregates": [{"aggregate_type", "context", "state_machine" (bool),
    /// "event_enum" (Rust type), "event_types": [name]}], "events": [{"context",
    /// "aggregate_type" (null for an event enum registered on its own), "event_enum",
    /// "event_type", "version" (current schema version), "readable_versions", "upcasts_from"
    /// (the older versions it decodes)}]}`; `context` is `null` when registered without one.
    ///
    /// With `--json-schema`: the JSON Schema of every event type and schema version whose enum
    /// the binary registers with `Cli::json_schemas` (always JSON): `{"schemas": [{"context",
    /// "event_enum", "event_type", "version", "schema"}], "without_schemas": [event_enum]}`.
    Catalog {
        /// Print the JSON Schemas of the event bodies instead of the catalog.
        #[arg(long)]
        json_schema: bool,
    },

    /// The state machine of a registered aggregate, as Mermaid (default) or Graphviz DOT.
    ///
    /// Needs no server. Prints the diagram only, so that it can be redirected into a file;
    /// states that cannot be reached and non-terminal states with no way out are reported on
    /// stderr. The aggregate must be registered by this binary (see `catalog`) and declare its
    /// transitions.
    ///
    /// JSON (ignores `--format`): `{"aggregate_type", "context", "initial", "states": [{"name",
    /// "terminal"}], "commands": [name], "transitions": [{"from", "on", "to", "handler"}],
    /// "analysis": {"unreachable": [state], "dead_ends": [state], "clean" (bool)}}`.
    Diagram {
        /// The aggregate type, e.g. `Order` (case-insensitive when unambiguous).
        aggregate: String,
        /// The diagram language.
        #[arg(long, value_enum, default_value_t = DiagramFormat::Mermaid)]
        format: DiagramFormat,
    },
}

/// Bucketing of `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StatsBy {
    /// By event type name.
    Type,
    /// By aggregate type.
    Aggregate,
    /// Per hour of `recorded_at` (UTC).
    Hour,
    /// Per day of `recorded_at` (UTC).
    Day,
}

/// The language of `diagram`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DiagramFormat {
    /// A Mermaid `stateDiagram-v2`.
    Mermaid,
    /// A Graphviz DOT digraph.
    Dot,
}

/// Parses an RFC 3339 time for `--from-time`.
fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-26T18:00:00Z: {e}"))
}
