//! Run with: `cargo run -p examples --example bank_account` (in-memory store), or
//! `cargo run -p examples --example bank_account -- --nats nats://127.0.0.1:4222` (JetStream).
//!
//! The basics: commands, a rule that rejects one, a transfer between two accounts committed
//! atomically, time travel to an earlier version, and the event log with its correlation and
//! causation metadata.

use cqrs_core::InMemoryEventStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    examples::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut out = String::new();
    match examples::nats_url_from_args()? {
        Some(url) => {
            let store = examples::connect_fresh(&url, "bank").await?;
            examples::bank_account::demo(store, &mut out).await?;
        }
        None => examples::bank_account::demo(InMemoryEventStore::new(), &mut out).await?,
    }
    print!("{out}");
    Ok(())
}
