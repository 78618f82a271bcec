//! Run with: `cargo run -p examples --example order_fulfilment` (in-memory store), or
//! `cargo run -p examples --example order_fulfilment -- --nats nats://127.0.0.1:4222` (JetStream:
//! the web side is a command client, the worker side a command service).
//!
//! The order state machine declared with `#[derive(Aggregate)]` and `#[transitions]`, in a whole
//! flow on the in-memory store: the web side submits and pays, the shipping saga reacts to
//! `PaymentValidated` by commanding shipment, the order summary projection follows, an invalid
//! transition is refused, and the correlation/causation chain of the flow is printed; a second
//! order is never paid, and its payment deadline cancels it. Then the machine as data: its
//! Mermaid diagram and its analysis.

use examples::order_fulfilment::Order;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    examples::exit_code(run().await)
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut out = String::new();
    match examples::nats_url_from_args()? {
        Some(url) => Box::pin(examples::order_flow::demo_nats(&url, &mut out)).await?,
        None => examples::order_flow::demo(&mut out).await?,
    }
    print!("{out}");

    let machine = Order::state_machine();
    println!("\n{}", machine.to_mermaid());
    println!("analysis: {}", machine.analyze());
    Ok(())
}
