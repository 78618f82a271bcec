//! Domains shared by the runnable examples in `examples/examples/` and by the tests that check
//! their output.
#![forbid(unsafe_code)]

use std::process::ExitCode;

pub mod bank_account;
pub mod graph_editor;
pub mod host;
pub mod order_flow;
pub mod order_fulfilment;
pub mod task_tracker;

/// The `--nats <url>` argument of an example, if given: run on JetStream at that URL instead of
/// the in-memory store.
pub fn nats_url_from_args() -> Result<Option<String>, String> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next(), args.next()) {
        (None, ..) => Ok(None),
        (Some("--nats"), Some(url), None) => Ok(Some(url)),
        _ => Err("usage: [--nats <url>]".to_owned()),
    }
}

/// An example was pointed at a server where its context already holds events.
#[derive(Debug, thiserror::Error)]
#[error(
    "context `{context}` on {url} already holds {events} events, from an earlier run of an example; the examples create their aggregates from scratch, so give each run a fresh server: `nats-server -js -sd \"$(mktemp -d)\"`"
)]
pub struct UsedContext {
    /// The bounded context.
    pub context: String,
    /// The server.
    pub url: String,
    /// How many events its stream holds.
    pub events: u64,
}

/// Connects to the server at `url` for bounded context `context` and checks that the context
/// holds no events yet: the examples create their aggregates, and a second run on the same
/// server would otherwise fail half-way with a domain error (an order that is already shipped)
/// or tell a different story.
pub async fn connect_fresh(
    url: &str,
    context: &str,
) -> Result<cqrs_nats::JetStreamEventStore, Box<dyn std::error::Error + Send + Sync>> {
    let store =
        cqrs_nats::JetStreamEventStore::connect(url, cqrs_nats::StoreConfig::new(context)).await?;
    let events = store
        .jetstream()
        .get_stream(store.stream_name())
        .await?
        .cached_info()
        .state
        .messages;
    if events > 0 {
        return Err(UsedContext {
            context: context.to_owned(),
            url: url.to_owned(),
            events,
        }
        .into());
    }
    Ok(store)
}

/// For the example binaries' `main`: success, or the error's message (and the errors that
/// caused it) on stderr and failure, instead of the `Debug` form a `main` returning `Result`
/// prints.
pub fn exit_code(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    eprintln!("error: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        eprintln!("  caused by: {cause}");
        source = cause.source();
    }
    ExitCode::FAILURE
}

/// The code blocks of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
