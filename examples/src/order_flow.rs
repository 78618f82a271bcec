//! The order fulfilment flow around the [`Order`] state machine: a web side that sends commands,
//! a worker side that runs them, an order summary projection, and a shipping saga that reacts to
//! `PaymentValidated` by commanding shipment — with the correlation/causation chain of one flow.

use crate::order_fulfilment::{Channel, Item, Order, OrderCommand, OrderEvent};
use cqrs_core::projection::{InMemoryProjectionRunner, ProjectionHandle};
use cqrs_core::read_model::{InMemoryReadModelStore, apply_once};
use cqrs_core::{
    CommandDispatcher, CommandError, CommandMetadata, EventEnvelope, EventFilter, EventStore,
    HandlerError, InMemoryEventStore, ProcessManager, ProcessManagerProjection, Projection,
    ReadModelStore, RecordedEvent, Repository, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::time::Duration;

/// A command addressed to one order.
pub type OrderRequest = (String, OrderCommand);

/// One line of the order summary read model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// `Submitted`, `PaymentValidated`, `Shipped` or `Cancelled`.
    pub status: String,
    /// Number of items ordered.
    pub items: u32,
    /// Parcel tracking code, once shipped.
    pub tracking: Option<String>,
}

/// Projects orders into [`OrderSummary`] lines, one per order id.
#[derive(Debug, Clone)]
pub struct OrderSummaries<S> {
    /// Where the lines are kept.
    pub model: S,
}

impl<S: ReadModelStore<OrderSummary>> Projection for OrderSummaries<S> {
    fn name(&self) -> &'static str {
        "order-summaries"
    }

    fn filter(&self) -> EventFilter {
        EventFilter::all().aggregate_type("Order")
    }

    async fn apply(&self, event: &RecordedEvent) -> Result<(), HandlerError> {
        let order_event: OrderEvent = event.payload.decode()?;
        let status = event.payload.event_type.clone();
        apply_once(&self.model, &event.aggregate_id, event.position, |old| {
            let mut line = old.unwrap_or_default();
            line.status.clone_from(&status);
            match &order_event {
                OrderEvent::Submitted { items, .. } => {
                    line.items = items.iter().map(|i| i.quantity).sum();
                }
                OrderEvent::Shipped { tracking } => line.tracking = Some(tracking.clone()),
                OrderEvent::Paid { .. } | OrderEvent::Cancelled { .. } => {}
            }
            line
        })
        .await?;
        Ok(())
    }
}

/// The shipping saga: once a payment is validated, ship the order.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shipping;

impl ProcessManager for Shipping {
    const NAME: &'static str = "shipping";
    type State = ();
    type Command = OrderRequest;

    fn filter(&self) -> EventFilter {
        EventFilter::all()
            .aggregate_type("Order")
            .event_type("PaymentValidated")
    }

    fn react(
        &self,
        (): (),
        event: &RecordedEvent,
    ) -> Result<((), Vec<OrderRequest>), HandlerError> {
        match event.payload.decode::<OrderEvent>()? {
            OrderEvent::Paid { payment_id } => Ok((
                (),
                vec![(
                    event.aggregate_id.clone(),
                    OrderCommand::Ship {
                        tracking: format!("TRACK-{payment_id}"),
                    },
                )],
            )),
            _ => Ok(((), vec![])),
        }
    }
}

/// The worker side in process: commands go straight to the repository.
#[derive(Debug, Clone)]
pub struct LocalOrders<S: EventStore + Clone>(pub Repository<Order, S>);

impl<S: EventStore + Clone> CommandDispatcher<OrderRequest> for LocalOrders<S> {
    async fn dispatch(
        &self,
        (id, command): OrderRequest,
        metadata: CommandMetadata,
    ) -> Result<(), HandlerError> {
        match self.0.execute(&id, command, metadata).await {
            // The saga sees the outcome of a refused command as the absence of its events.
            Ok(_) | Err(CommandError::Rejected(_) | CommandError::InvalidTransition(_)) => Ok(()),
            Err(error) => Err(HandlerError::from_error(error)),
        }
    }
}

/// The causal chain of one order, oldest first: which command wrote each event, and what
/// triggered that command.
pub fn causal_chain(history: &[EventEnvelope<OrderEvent>]) -> String {
    let short = |id: uuid::Uuid| id.simple().to_string()[24..].to_owned();
    let name = |id: uuid::Uuid| {
        history
            .iter()
            .find(|e| e.event_id == id)
            .map_or("an event of another aggregate", |e| {
                cqrs_core::DomainEvent::event_type(&e.payload)
            })
    };
    let mut out = String::new();
    if let Some(first) = history.first() {
        let _ = writeln!(out, "flow {}", short(first.metadata.correlation_id));
    }
    for event in history {
        let m = &event.metadata;
        let cause = m.command_causation_id.map_or_else(
            || "root".to_owned(),
            |id| format!("caused by {} {}", name(id), short(id)),
        );
        let _ = writeln!(
            out,
            "  command {} ({cause}, {}) -> {} {} v{}",
            m.command_id.map_or_else(|| "-".to_owned(), short),
            m.actor.as_deref().unwrap_or("-"),
            cqrs_core::DomainEvent::event_type(&event.payload),
            short(event.event_id),
            event.version,
        );
    }
    out
}

/// The whole flow on the in-memory store, written to `out`.
pub async fn demo(
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store = InMemoryEventStore::new();
    let orders = Repository::<Order, _>::new(store.clone()).with_cache(1_000);
    let commands = LocalOrders(orders.clone());
    let summaries = OrderSummaries {
        model: InMemoryReadModelStore::new(),
    };
    let summary_view =
        InMemoryProjectionRunner::spawn(&store, summaries, 0, RetryPolicy::default());
    let saga =
        ProcessManagerProjection::new(Shipping, InMemoryReadModelStore::new(), commands.clone());
    let saga_runner = InMemoryProjectionRunner::spawn(&store, saga, 0, RetryPolicy::default());

    // The web side: a customer checks out.
    let id = "order-1";
    let checkout = CommandMetadata::root().with_actor("user:ada");
    let submit = OrderCommand::Submit {
        items: vec![Item {
            sku: "BOOK-42".into(),
            quantity: 2,
        }],
        channel: Channel::Web,
    };
    let submitted = orders.execute(id, submit, checkout.clone()).await?;
    writeln!(out, "web: submitted {id} (v{})", submitted[0].version)?;
    // The payment step belongs to the same flow, caused by the submission.
    let pay = CommandMetadata::caused_by(&submitted[0].metadata, submitted[0].event_id);
    let paid = orders
        .execute(
            id,
            OrderCommand::Pay {
                payment_id: "pay-7".into(),
            },
            pay,
        )
        .await?;
    writeln!(out, "web: payment validated (v{})", paid[0].version)?;

    // The saga ships; the summary follows. Wait for it, within bounds.
    let summary = wait_for_status(&summary_view, id, "Shipped").await?;
    writeln!(
        out,
        "summary: {id} {} items={} tracking={}",
        summary.status,
        summary.items,
        summary.tracking.as_deref().unwrap_or("-")
    )?;

    // A command that no transition allows is refused with a typed error.
    let refused = orders
        .execute(
            id,
            OrderCommand::Cancel {
                reason: "too late".into(),
            },
            CommandMetadata::root(),
        )
        .await;
    if let Err(CommandError::InvalidTransition(invalid)) = refused {
        writeln!(out, "refused: {invalid}")?;
    }

    let stream = Repository::<Order, InMemoryEventStore>::stream_id(id, None);
    write!(out, "{}", causal_chain(&orders.history(&stream, 1).await?))?;
    saga_runner.stop().await;
    summary_view.stop().await;
    Ok(())
}

async fn wait_for_status<S: ReadModelStore<OrderSummary>>(
    view: &ProjectionHandle<OrderSummaries<S>>,
    id: &str,
    status: &str,
) -> Result<OrderSummary, Box<dyn std::error::Error + Send + Sync>> {
    for _ in 0..500 {
        if let Some(line) = view.projection().model.get(id).await?
            && line.value.status == status
        {
            return Ok(line.value);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("order {id} did not reach {status} within 5 s").into())
}
