//! Run with: `cargo run -p examples --example bank_account`
//!
//! The basics on the embedded in-memory store: commands, a rule that rejects one, time travel to
//! an earlier version, and the event log with its correlation and causation metadata.

use cqrs_core::InMemoryEventStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut out = String::new();
    examples::bank_account::demo(InMemoryEventStore::new(), &mut out).await?;
    print!("{out}");
    Ok(())
}
