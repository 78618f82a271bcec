//! `cqrs`, the operator command-line interface of event stores written by `cqrs-nats`, as a
//! library (this crate also builds the stock `cqrs` binary).
//!
//! The stock `cqrs` binary is `Cli::new().run()`: it reads any JetStream event store the way the
//! library writes it — stream `EVENTS_<CONTEXT>`, events stored under
//! `<context>.events.<partition>.<tenant>.<type>.<id>`, the event envelope in headers — and shows
//! aggregates' histories, the causal tree of a flow, contexts, statistics and projections (with
//! their live versions, partitions and live workers); `replay` moves a projection's checkpoints
//! back and `switch-over` makes another version of a projection the live one (both with
//! `--yes`). Every command prints a human-readable view by default and one stable JSON document
//! with `--json` (shapes documented in `--help` of each command).
//!
//! A crate that registers its types gets two more commands that need no server: `catalog` (the
//! event types with their schema versions and upcasts) and `diagram <AGGREGATE>` (a state
//! machine as Mermaid or Graphviz DOT, or its table and analysis as JSON). An operator binary
//! for a domain is a few lines:
//!
//! ```no_run
//! # use cqrs_core::doc::{Counter as Order, CounterEvent as PaymentEvent};
//! use cqrs_cli::Cli;
//!
//! fn main() -> std::process::ExitCode {
//!     Cli::new()
//!         .aggregate_in::<Order>("sales") // its transition table and event catalog come with it
//!         .events_in::<PaymentEvent>("sales") // an event enum no registered aggregate records
//!         .run()
//! }
//! ```
//!
//! Registered aggregates also give `history` its default context. Errors are one line on stderr
//! with exit code 1; invalid arguments exit with code 2 (clap's usage message), as do `replay`
//! and `switch-over` without `--yes` (saying what they would do). A switch-over refused (not
//! caught up, or live already) exits with code 1, with its outcome's document on stdout with
//! `--json`.

#![forbid(unsafe_code)]

mod args;
mod commands;
mod local;
mod model;
mod output;
mod personal;
mod progress;
mod registry;

pub use registry::{AggregateEntry, EventSet, Registry};

use args::{Args, Command, DiagramFormat};
use clap::{CommandFactory as _, FromArgMatches as _};
use cqrs_core::{Aggregate, DomainEvent};
use model::CliError;
use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

/// The operator CLI: a [`Registry`] of the types the binary knows, and the commands.
///
/// Build it, register types, then [`run`](Cli::run) it from `main`:
///
/// ```no_run
/// # use cqrs_core::doc::Counter;
/// fn main() -> std::process::ExitCode {
///     cqrs_cli::Cli::new().aggregate::<Counter>().run()
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Cli {
    registry: Registry,
}

impl Cli {
    /// The CLI with nothing registered (the stock `cqrs` binary).
    pub fn new() -> Self {
        Self::default()
    }

    /// The CLI with the types of `registry` (e.g. one a domain crate builds for several
    /// binaries).
    pub fn with_registry(registry: Registry) -> Self {
        Self { registry }
    }

    /// Registers aggregate `A` without a context: see [`Registry::aggregate`].
    pub fn aggregate<A: Aggregate>(self) -> Self {
        Self::with_registry(self.registry.aggregate::<A>())
    }

    /// Registers aggregate `A` in bounded context `context`: see [`Registry::aggregate_in`].
    pub fn aggregate_in<A: Aggregate>(self, context: impl Into<String>) -> Self {
        Self::with_registry(self.registry.aggregate_in::<A>(context))
    }

    /// Adds the JSON Schemas of event enum `E`, for `catalog --json-schema`: see
    /// [`Registry::json_schemas`].
    #[must_use]
    pub fn json_schemas<E: cqrs_core::schema::EventJsonSchemas>(self) -> Self {
        Self::with_registry(self.registry.json_schemas::<E>())
    }

    /// Registers an event enum on its own, without a context: see [`Registry::events`].
    pub fn events<E: DomainEvent>(self) -> Self {
        Self::with_registry(self.registry.events::<E>())
    }

    /// Registers an event enum on its own in bounded context `context`: see
    /// [`Registry::events_in`].
    pub fn events_in<E: DomainEvent>(self, context: impl Into<String>) -> Self {
        Self::with_registry(self.registry.events_in::<E>(context))
    }

    /// What is registered.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Parses the process's arguments and runs the command: the body of an operator binary's
    /// `main`. Blocks on its own single-threaded Tokio runtime (inside a Tokio runtime it uses a
    /// helper thread; async code may call [`run_from_async`](Cli::run_from_async) instead).
    pub fn run(&self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// Like [`run`](Cli::run) with the given arguments; the first is the program name.
    pub fn run_from<I, T>(&self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let block = move || match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(self.run_from_async(args)),
            Err(e) => fail(&CliError::Runtime(e)),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // A runtime cannot block inside another one: run on a thread of our own.
            std::thread::scope(|scope| scope.spawn(block).join().unwrap_or(ExitCode::FAILURE))
        } else {
            block()
        }
    }

    /// Like [`run_from`](Cli::run_from), on the caller's Tokio runtime.
    pub async fn run_from_async<I, T>(&self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let parsed = Args::command()
            .after_help(self.registry.summary())
            .try_get_matches_from(args)
            .and_then(|matches| Args::from_arg_matches(&matches));
        let args = match parsed {
            Ok(args) => args,
            Err(e) => {
                // `--help` and `--version` print to stdout and succeed; usage errors exit 2.
                let _ = e.print();
                return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
            }
        };
        match self.execute(&args).await {
            Ok(text) => {
                let mut out = std::io::stdout().lock();
                match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(&CliError::Output(e)),
                }
            }
            Err(e) => {
                if let Some(output) = e.output() {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(output.as_bytes()).and_then(|()| out.flush());
                }
                fail(&e)
            }
        }
    }

    /// Runs one command; returns what it prints on stdout.
    async fn execute(&self, cli: &Args) -> Result<String, CliError> {
        match &cli.command {
            Command::Catalog { json_schema } => self.catalog(cli, *json_schema),
            Command::Diagram { aggregate, format } => self.diagram(cli, aggregate, *format),
            Command::Import { input, yes } => import(cli, input.as_deref(), *yes).await,
            Command::Export { from, output } => export(cli, *from, output.as_deref()).await,
            _ => self.remote(cli).await,
        }
    }

    /// `catalog`.
    fn catalog(&self, cli: &Args, json_schema: bool) -> Result<String, CliError> {
        let context = cli.context.as_deref();
        if json_schema {
            // Schemas are JSON documents whatever the output mode.
            return output::render(true, &local::json_schemas(&self.registry, context), |_| {
                String::new()
            });
        }
        let doc = local::catalog(&self.registry, context);
        if !cli.json && doc.events.is_empty() && doc.aggregates.is_empty() {
            return Ok(output::nothing_registered(
                context.filter(|_| !self.registry.is_empty()),
            ));
        }
        output::render(cli.json, &doc, output::catalog)
    }

    /// `diagram`: the rendering on stdout, what the analysis found on stderr.
    fn diagram(
        &self,
        cli: &Args,
        aggregate: &str,
        format: DiagramFormat,
    ) -> Result<String, CliError> {
        let entry = local::find(&self.registry, aggregate, cli.context.as_deref())?;
        let machine = local::machine(entry)?;
        if cli.json {
            return output::render(true, &local::diagram(entry, machine), |_| String::new());
        }
        let analysis = machine.analyze();
        if !analysis.is_clean() {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "note: {}: {analysis}", entry.aggregate_type());
        }
        Ok(match format {
            DiagramFormat::Mermaid => machine.to_mermaid(),
            DiagramFormat::Dot => machine.to_dot(),
        })
    }

    /// The commands that read the server.
    async fn remote(&self, cli: &Args) -> Result<String, CliError> {
        let json = cli.json;
        let context = cli.context.as_deref();
        let session = connect(cli).await?;
        match &cli.command {
            Command::History {
                aggregate_type,
                id,
                tenant,
            } => {
                let context = session
                    .resolve_context(context.or_else(|| self.registry.context_of(aggregate_type)))
                    .await?;
                let history = session
                    .history(&context, aggregate_type, id, tenant.as_deref())
                    .await?;
                output::render(json, &history, output::history)
            }
            Command::Trace { correlation_id } => {
                let context = session.resolve_context(context).await?;
                let trace = session.trace(&context, *correlation_id).await?;
                output::render(json, &trace, output::trace)
            }
            Command::Tail {
                context: tail_context,
                event_types,
                aggregate_types,
                tenants,
                from,
                limit,
                poll_ms,
            } => {
                let context = session
                    .resolve_context(tail_context.as_deref().or(context))
                    .await?;
                let tail = commands::Tail {
                    filter: cqrs_core::EventFilter {
                        aggregate_types: aggregate_types.clone(),
                        tenants: tenants.clone(),
                        event_types: event_types.clone(),
                        ..cqrs_core::EventFilter::default()
                    },
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
                let context = session.resolve_context(context).await?;
                let stats = session.stats(&context, *by).await?;
                output::render(json, &stats, output::stats)
            }
            Command::Projections => {
                let context = session.resolve_context(context).await?;
                let projections = session.projections(&context).await?;
                output::render(json, &projections, output::projections)
            }
            Command::Replay {
                projection,
                from_position,
                from_time,
                yes,
            } => {
                let context = session.resolve_context(context).await?;
                let from = model::ReplayFromDoc::new(*from_position, *from_time);
                let replay = session.replay(&context, projection, from, *yes).await?;
                output::render(json, &replay, output::replay)
            }
            Command::SwitchOver {
                projection,
                to,
                patience_secs,
                yes,
            } => {
                let context = session.resolve_context(context).await?;
                let patience = Duration::from_secs(*patience_secs);
                let doc = session
                    .switch_over(&context, projection, *to, patience, *yes)
                    .await?;
                switch_over(json, &doc)
            }
            Command::Health { max_lag } => {
                let context = session.resolve_context(context).await?;
                health(json, &session.health(&context, *max_lag).await?)
            }
            // Run by `execute` without this session.
            Command::Catalog { .. }
            | Command::Diagram { .. }
            | Command::Import { .. }
            | Command::Export { .. } => Ok(String::new()),
        }
    }
}

/// What `health` prints: its document, and for an unhealthy context the failing checks as the
/// error (exit code 1).
fn health(json: bool, doc: &model::HealthDoc) -> Result<String, CliError> {
    let text = output::render(json, doc, output::health)?;
    if doc.healthy {
        return Ok(text);
    }
    let failing: Vec<String> = doc
        .checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| format!("{}: {}", c.check, c.detail))
        .collect();
    Err(CliError::Refused {
        message: format!(
            "context {} is unhealthy: {}",
            doc.context,
            failing.join("; ")
        ),
        output: text,
    })
}

/// What `switch-over` prints: its document, or the refusal (exit code 1) with the document on
/// stdout with `--json`.
fn switch_over(json: bool, doc: &model::SwitchOverDoc) -> Result<String, CliError> {
    let text = output::render(json, doc, output::switch_over)?;
    match output::switch_over_refusal(doc) {
        None => Ok(text),
        Some(message) => Err(CliError::Refused {
            message,
            output: if json { text } else { String::new() },
        }),
    }
}

/// Prints `error` as one line on stderr; exit code 1 (2 for a change not confirmed).
fn fail(error: &CliError) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "error: {}", model::one_line(error));
    ExitCode::from(error.exit_code())
}

/// `export` to `output` (stdout without one), with the count on stderr.
async fn export(
    cli: &Args,
    from: u64,
    output: Option<&std::path::Path>,
) -> Result<String, CliError> {
    let session = connect(cli).await?;
    let context = &session.resolve_context(cli.context.as_deref()).await?;
    let mut out: Box<dyn std::io::Write> = if let Some(path) = output {
        Box::new(std::fs::File::create(path).map_err(CliError::Output)?)
    } else {
        Box::new(std::io::stdout().lock())
    };
    let mut out = std::io::BufWriter::new(&mut out);
    let exported = session.export(context, from, &mut out).await?;
    out.flush().map_err(CliError::Output)?;
    let _ = writeln!(
        std::io::stderr(),
        "exported {exported} events of context `{context}`"
    );
    Ok(String::new())
}

/// A session on the server `cli` names.
async fn connect(cli: &Args) -> Result<commands::Session, CliError> {
    commands::Session::connect(
        &cli.server,
        Duration::from_secs(cli.timeout.max(1)),
        cli.progress,
    )
    .await
}

/// `import` from `input` (stdin without one) into `--context`.
async fn import(
    cli: &Args,
    input: Option<&std::path::Path>,
    yes: bool,
) -> Result<String, CliError> {
    let Some(context) = cli.context.as_deref() else {
        return Err(CliError::ImportWithoutContext);
    };
    let source = input.map_or_else(|| "stdin".to_owned(), |p| p.display().to_string());
    if !yes {
        return Err(CliError::NotConfirmed(format!(
            "would import the events of {source} into context `{context}` on {}",
            cli.server
        )));
    }
    let session = connect(cli).await?;
    let reader: Box<dyn std::io::BufRead> = if let Some(path) = input {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).map_err(CliError::Input)?,
        ))
    } else {
        Box::new(std::io::stdin().lock())
    };
    let doc = session.import(context, reader).await?;
    output::render(cli.json, &doc, output::import)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_option_is_documented() {
        let command = Args::command();
        command.clone().debug_assert();
        for sub in command.get_subcommands() {
            assert!(
                sub.get_about().is_some() && sub.get_long_about().is_some(),
                "{} has no help",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                assert!(
                    arg.get_help().is_some(),
                    "{} {} has no help",
                    sub.get_name(),
                    arg.get_id()
                );
            }
        }
        for arg in command.get_arguments() {
            assert!(arg.get_help().is_some(), "{} has no help", arg.get_id());
        }
    }
}
