//! Domains shared by the runnable examples in `examples/examples/` and by the tests that check
//! their output.
#![forbid(unsafe_code)]

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

/// The code blocks of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
