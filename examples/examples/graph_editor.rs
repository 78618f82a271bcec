//! Run with: `cargo run -p examples --example graph_editor` (in-memory store), or
//! `cargo run -p examples --example graph_editor -- --nats nats://127.0.0.1:4222` (JetStream,
//! bounded context `graphs`; use a fresh server: a second run on the same one stops and says so).
//!
//! A graph editor: a plain (non state machine) aggregate whose rules refuse duplicate nodes,
//! dangling edges, self-loops and duplicate edges; a node removal that commits several events
//! atomically; a graph view projection (node and edge counts, adjacency lists); and time travel
//! to an earlier version and to an earlier instant.

use examples::host::{InMemoryHost, JetStreamHost};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    examples::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut out = String::new();
    match examples::nats_url_from_args()? {
        Some(url) => {
            let host = JetStreamHost::new(examples::connect_fresh(&url, "graphs").await?);
            Box::pin(examples::graph_editor::demo(&host, &mut out)).await?;
        }
        None => {
            examples::graph_editor::demo(&InMemoryHost::new(), &mut out).await?;
        }
    }
    print!("{out}");
    Ok(())
}
