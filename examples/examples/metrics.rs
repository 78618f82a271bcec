//! Run with: `cargo run -p examples --example metrics`.
//!
//! The framework records its metrics through the `metrics` facade; the application picks the
//! exporter. Here `metrics-exporter-prometheus` records the order flow's commands, conflicts,
//! events per append and projection handling, and prints them in the Prometheus text format —
//! what a scrape of `/metrics` would return (a service would serve them with the exporter's HTTP
//! listener, or its own web framework).

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    examples::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    examples::order_flow::demo(&mut String::new()).await?;
    examples::bank_account::demo(cqrs_core::InMemoryEventStore::new(), &mut String::new()).await?;
    print!("{}", prometheus.render());
    Ok(())
}
