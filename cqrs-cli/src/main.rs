//! `cqrs`: the operator CLI of `cqrs-nats`, with no domain types registered.
//!
//! Everything lives in [`cqrs_cli`]; a domain crate builds its own operator binary there,
//! registering its aggregates and event enums for `catalog` and `diagram`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    cqrs_cli::Cli::new().run()
}
