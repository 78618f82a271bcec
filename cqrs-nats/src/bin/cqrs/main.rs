//! `cqrs`: the operator CLI of `cqrs-nats`.
//!
//! It reads a JetStream event store the way the library writes it — stream `EVENTS_<CONTEXT>`,
//! subjects `<context>.events.<tenant>.<type>.<id>`, the event envelope in headers — and shows
//! aggregates' histories, the causal tree of a flow, contexts, statistics and projections.
//! Every command prints a human-readable, aligned view by default and one JSON document with
//! `--json` (shapes documented on each command). Errors are one line on stderr, exit code 1.
#![forbid(unsafe_code)]
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod commands;
mod model;
mod output;

use clap::{Parser, Subcommand, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

/// Operator CLI for the cqrs-nats event store on NATS JetStream.
///
/// Reads the event streams `EVENTS_<CONTEXT>` the library writes (never appending or changing
/// events; reads use short-lived ordered consumers) and decodes the event envelope: versions, positions, types, schema versions, correlation/causation/command
/// ids, actor, tenant and JSON bodies. Output is human-readable by default; `--json` prints one
/// stable JSON document per invocation (the shape is documented on each command). Scans of a
/// whole stream (`trace`, `stats`) show their progress on stderr when it is a terminal.
#[derive(Debug, Parser)]
#[command(name = "cqrs", version, propagate_version = true)]
struct Cli {
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    server: String,

    /// Bounded context (the stream is `EVENTS_<CONTEXT>`); defaults to the only context on the
    /// server when there is exactly one.
    #[arg(long, global = true)]
    context: Option<String>,

    /// Print one JSON document instead of the human-readable view.
    #[arg(long, global = true)]
    json: bool,

    /// Seconds to wait for the connection and each JetStream request.
    #[arg(long, global = true, default_value_t = 5)]
    timeout: u64,

    #[command(subcommand)]
    command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
enum Command {
    /// The events of one aggregate, decoded, with their metadata.
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
    /// caused, nested. Commands are grouped by the `command_id` of their events and attached under the event
    /// named by their `command_causation_id`; commands whose cause is outside the flow (or
    /// none) are roots.
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
    /// JSON: `{"contexts": [{"context", "stream", "events", "bytes", "first_position",
    /// "last_position", "aggregates" (distinct subjects), "consumers" (all consumers of the
    /// stream, including short-lived readers)}]}`.
    Streams,

    /// Event counts of a context by event type or per time bucket (UTC).
    ///
    /// JSON: `{"context", "by" ("type" | "aggregate" | "hour" | "day"), "total", "buckets":
    /// [{"key", "count"}]}`; buckets by type or aggregate are sorted by count (descending),
    /// time buckets chronologically (keys like `2026-11-26T18:00Z` / `2026-11-26`).
    Stats {
        /// How to bucket the events.
        #[arg(long, value_enum, default_value_t = StatsBy::Type)]
        by: StatsBy,
    },

    /// The projections of a context with their lag and parked events.
    ///
    /// Projections are the durable consumers of the context's event stream; the lag is the
    /// consumer's pending count, parked events are counted on the dead-letter stream
    /// `DEADLETTER_<CONTEXT>` (subject `<context>.deadletter.<projection>`).
    ///
    /// JSON: `{"context", "stream", "head" (last position), "projections": [{"name", "pending"
    /// (events not yet delivered), "ack_pending", "redelivered", "delivered_position",
    /// "acked_position", "parked", "consumer" (false when only parked events remain)}]}`.
    Projections,
}

/// Bucketing of `stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StatsBy {
    /// By event type name.
    Type,
    /// By aggregate type.
    Aggregate,
    /// Per hour of `recorded_at` (UTC).
    Hour,
    /// Per day of `recorded_at` (UTC).
    Day,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(text) => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", model::one_line(&model::CliError::Output(e)));
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("error: {}", model::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli) -> Result<String, model::CliError> {
    let session =
        commands::Session::connect(&cli.server, Duration::from_secs(cli.timeout.max(1))).await?;
    let json = cli.json;
    match &cli.command {
        Command::History {
            aggregate_type,
            id,
            tenant,
        } => {
            let context = session.resolve_context(cli.context.as_deref()).await?;
            let history = session
                .history(&context, aggregate_type, id, tenant.as_deref())
                .await?;
            output::render(json, &history, output::history)
        }
        Command::Trace { correlation_id } => {
            let context = session.resolve_context(cli.context.as_deref()).await?;
            let trace = session.trace(&context, *correlation_id).await?;
            output::render(json, &trace, output::trace)
        }
        Command::Tail {
            context,
            event_types,
            aggregate_types,
            tenants,
            from,
            limit,
            poll_ms,
        } => {
            let context = session
                .resolve_context(context.as_deref().or(cli.context.as_deref()))
                .await?;
            let filter = cqrs_core::EventFilter {
                aggregate_types: aggregate_types.clone(),
                tenants: tenants.clone(),
                event_types: event_types.clone(),
                ..cqrs_core::EventFilter::default()
            };
            let tail = commands::Tail {
                filter,
                from: *from,
                limit: *limit,
                poll: Duration::from_millis((*poll_ms).max(10)),
            };
            session
                .tail(&context, &tail, &mut |event| output::tail_line(json, event))
                .await?;
            Ok(String::new())
        }
        Command::Streams => {
            let streams = session.streams().await?;
            output::render(json, &streams, output::streams)
        }
        Command::Stats { by } => {
            let context = session.resolve_context(cli.context.as_deref()).await?;
            let stats = session.stats(&context, *by).await?;
            output::render(json, &stats, output::stats)
        }
        Command::Projections => {
            let context = session.resolve_context(cli.context.as_deref()).await?;
            let projections = session.projections(&context).await?;
            output::render(json, &projections, output::projections)
        }
    }
}
