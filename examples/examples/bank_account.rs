//! Run with: `cargo run -p examples --example bank_account` (in-memory store), or
//! `cargo run -p examples --example bank_account -- --nats nats://127.0.0.1:4222` (JetStream).
//!
//! The basics: commands, a rule that rejects one, time travel to an earlier version, and the
//! event log with its correlation and causation metadata.

use cqrs_core::InMemoryEventStore;
use cqrs_nats::{JetStreamEventStore, StoreConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut out = String::new();
    match examples::nats_url_from_args()? {
        Some(url) => {
            let store = JetStreamEventStore::connect(&url, StoreConfig::new("bank")).await?;
            examples::bank_account::demo(store, &mut out).await?;
        }
        None => examples::bank_account::demo(InMemoryEventStore::new(), &mut out).await?,
    }
    print!("{out}");
    Ok(())
}
