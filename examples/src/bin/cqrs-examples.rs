//! `cqrs-examples`: the operator CLI with the example domains registered, so that `catalog` and
//! `diagram` have something to show.
//!
//! Run with: `cargo run -p examples --bin cqrs-examples -- catalog` (or `diagram Order`,
//! `diagram BankAccount --format dot`, `--json catalog`, `catalog --json-schema`; every `cqrs`
//! command works too).
#![forbid(unsafe_code)]

use examples::bank_account::{AccountEvent, BankAccount, Username, UsernameEvent};
use examples::graph_editor::{Graph, GraphEvent};
use examples::order_fulfilment::{Order, OrderEvent};
use examples::task_tracker::{Task, TaskEvent};

fn main() -> std::process::ExitCode {
    cqrs_cli::Cli::new()
        .aggregate_in::<BankAccount>("bank")
        .aggregate_in::<Username>("bank")
        .aggregate_in::<Order>("sales")
        .aggregate_in::<Task>("tasks")
        .aggregate_in::<Graph>("graphs")
        .json_schemas::<AccountEvent>()
        .json_schemas::<UsernameEvent>()
        .json_schemas::<OrderEvent>()
        .json_schemas::<TaskEvent>()
        .json_schemas::<GraphEvent>()
        .run()
}
