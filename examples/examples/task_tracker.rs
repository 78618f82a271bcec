//! Run with: `cargo run -p examples --example task_tracker` (in-memory store), or
//! `cargo run -p examples --example task_tracker -- --nats nats://127.0.0.1:4222` (JetStream,
//! bounded context `tasks`; use a fresh server: a second run on the same one stops and says so).
//!
//! A multi-tenant task tracker: a task state machine (`Active`, `Completed`, `Deleted`, with
//! restore) shared by two tenants; a version 1 event stored raw and read back upcast to
//! version 2; one board projection per tenant, filtered by tenant; and a change of the board's
//! read-model schema, rebuilt from the whole history and then kept live. Then the task machine
//! as data: its Mermaid diagram and its analysis.

use examples::host::{InMemoryHost, JetStreamHost};
use examples::task_tracker::Task;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    examples::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut out = String::new();
    match examples::nats_url_from_args()? {
        Some(url) => {
            let host = JetStreamHost::new(examples::connect_fresh(&url, "tasks").await?);
            Box::pin(examples::task_tracker::demo(&host, &mut out)).await?;
        }
        None => {
            examples::task_tracker::demo(&InMemoryHost::new(), &mut out).await?;
        }
    }
    print!("{out}");
    let machine = Task::state_machine();
    println!("\n{}", machine.to_mermaid());
    println!("analysis: {}", machine.analyze());
    Ok(())
}
