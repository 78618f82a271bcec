//! `cqrs-examples`: the operator CLI with the example domains registered, so that `catalog` and
//! `diagram` have something to show.
//!
//! Run with: `cargo run -p examples --bin cqrs-examples -- catalog` (or `diagram Order`,
//! `diagram BankAccount --format dot`, `--json catalog`; every `cqrs` command works too).
#![forbid(unsafe_code)]

use examples::bank_account::{BankAccount, Username};
use examples::graph_editor::Graph;
use examples::order_fulfilment::Order;
use examples::task_tracker::Task;

fn main() -> std::process::ExitCode {
    cqrs_cli::Cli::new()
        .aggregate_in::<BankAccount>("bank")
        .aggregate_in::<Username>("bank")
        .aggregate_in::<Order>("sales")
        .aggregate_in::<Task>("tasks")
        .aggregate_in::<Graph>("graphs")
        .run()
}
