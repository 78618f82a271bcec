//! The order fulfilment flow around the [`Order`] state machine: a web side that sends commands,
//! a worker side that runs them, an order summary projection, and a shipping saga that reacts to
//! `PaymentValidated` by commanding shipment — with the correlation/causation chain of one flow.

use crate::order_fulfilment::{Channel, Item, Order, OrderCommand, OrderEvent};
use cqrs_core::deadline::{InMemoryDeadlines, Timed, WithDeadlines};
use cqrs_core::projection::InMemoryProjectionRunner;
use cqrs_core::read_model::{InMemoryReadModelStore, apply_once};
use cqrs_core::{
    CommandError, CommandMetadata, EventEnvelope, EventFilter, EventStore, HandlerError,
    InMemoryEventStore, ProcessManager, ProcessManagerProjection, Projection, ReadModelStore,
    RecordedEvent, Repository, RetryPolicy, Targeted,
};
use cqrs_nats::command::{CommandClient, CommandFailure, CommandService, FailureKind};
use cqrs_nats::deadlines::JetStreamDeadlines;
use cqrs_nats::{JetStreamProjectionRunner, KvReadModelStore, ProjectionConfig};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

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

/// The shipping saga: once a payment is validated, ship the order. Its commands name the order
/// they are for ([`Targeted`]); the repository delivers them in process, the command client
/// over NATS.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shipping;

impl ProcessManager for Shipping {
    const NAME: &'static str = "shipping";
    type State = ();
    type Command = Targeted<Order>;

    fn filter(&self) -> EventFilter {
        EventFilter::all()
            .aggregate_type("Order")
            .event_type("PaymentValidated")
    }

    fn react(
        &self,
        (): (),
        event: &RecordedEvent,
    ) -> Result<((), Vec<Targeted<Order>>), HandlerError> {
        match event.payload.decode::<OrderEvent>()? {
            OrderEvent::Paid { payment_id } => Ok((
                (),
                vec![Targeted::new(
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

/// How long a submitted order waits for its payment.
pub const PAYMENT_WINDOW: Duration = Duration::from_secs(30 * 60);

/// The payment deadline: an order not paid within its window ([`PAYMENT_WINDOW`] by default)
/// of its submission is cancelled. The deadline is scheduled when the order is submitted and cancelled when its
/// payment is validated.
#[derive(Debug, Clone, Copy)]
pub struct PaymentDeadline {
    /// How long a submitted order waits for its payment.
    pub window: Duration,
}

impl Default for PaymentDeadline {
    /// [`PAYMENT_WINDOW`].
    fn default() -> Self {
        Self {
            window: PAYMENT_WINDOW,
        }
    }
}

impl ProcessManager for PaymentDeadline {
    const NAME: &'static str = "payment-deadline";
    type State = ();
    type Command = Timed<Targeted<Order>>;

    fn filter(&self) -> EventFilter {
        EventFilter::all()
            .aggregate_type("Order")
            .event_type("Submitted")
            .event_type("PaymentValidated")
    }

    fn react(
        &self,
        (): (),
        event: &RecordedEvent,
    ) -> Result<((), Vec<Self::Command>), HandlerError> {
        let deadline = "payment".to_owned();
        Ok((
            (),
            match event.payload.decode::<OrderEvent>()? {
                OrderEvent::Submitted { .. } => vec![Timed::At {
                    deadline,
                    at: event.recorded_at + self.window,
                    command: Targeted::new(
                        event.aggregate_id.clone(),
                        OrderCommand::Cancel {
                            reason: format!("not paid within {} s", self.window.as_secs()),
                        },
                    ),
                }],
                OrderEvent::Paid { .. } => vec![Timed::Cancel { deadline }],
                _ => vec![],
            },
        ))
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

/// Why the front end's command was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Whether the order's state has no transition for the command.
    pub invalid_transition: bool,
    /// What the worker side said.
    pub message: String,
}

/// The web side: sends a command and learns the version it produced and its first event id.
pub trait Frontend: Send + Sync {
    /// Sends `command` for order `id`.
    fn send(
        &self,
        id: &str,
        command: OrderCommand,
        metadata: CommandMetadata,
    ) -> impl Future<Output = Result<(u64, uuid::Uuid), Refusal>> + Send;
}

/// In process, the front end calls the repository itself.
impl<S: EventStore + Clone> Frontend for Repository<Order, S> {
    async fn send(
        &self,
        id: &str,
        command: OrderCommand,
        metadata: CommandMetadata,
    ) -> Result<(u64, uuid::Uuid), Refusal> {
        match self.execute(id, command, metadata).await {
            Ok(events) => match (events.last(), events.first()) {
                (Some(last), Some(first)) => Ok((last.version, first.event_id)),
                _ => Err(Refusal {
                    invalid_transition: false,
                    message: "no events".to_owned(),
                }),
            },
            Err(error) => Err(Refusal {
                invalid_transition: matches!(error, CommandError::InvalidTransition(_)),
                message: error.to_string(),
            }),
        }
    }
}

/// Over NATS, the front end is a command client and the worker a command service.
impl Frontend for CommandClient {
    async fn send(
        &self,
        id: &str,
        command: OrderCommand,
        metadata: CommandMetadata,
    ) -> Result<(u64, uuid::Uuid), Refusal> {
        match self.send::<Order>(id, &command, &metadata).await {
            Ok(receipt) => match (receipt.version, receipt.event_ids.first()) {
                (Some(version), Some(&first)) => Ok((version, first)),
                _ => Err(Refusal {
                    invalid_transition: false,
                    message: "no events".to_owned(),
                }),
            },
            Err(failure) => Err(Refusal {
                invalid_transition: failure.kind() == Some(FailureKind::InvalidTransition),
                message: match failure {
                    CommandFailure::Failed { message, .. } => message,
                    other => other.to_string(),
                },
            }),
        }
    }
}

/// The customer's side of the flow and what it shows: checkout, payment, the shipped summary,
/// a refused cancellation and the causal chain read back from `store`.
async fn shop<F, M, S>(
    frontend: &F,
    summaries: &M,
    store: S,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    F: Frontend,
    M: ReadModelStore<OrderSummary>,
    S: EventStore + Clone,
{
    let id = "order-1";
    let checkout = CommandMetadata::root().with_actor("user:ada");
    let submit = OrderCommand::Submit {
        items: vec![Item {
            sku: "BOOK-42".into(),
            quantity: 2,
        }],
        channel: Channel::Web,
    };
    let (version, submitted) = frontend
        .send(id, submit, checkout.clone())
        .await
        .map_err(|r| r.message)?;
    writeln!(out, "web: submitted {id} (v{version})")?;
    // The payment step belongs to the same flow, caused by the submission.
    let mut pay = CommandMetadata::root().with_actor("user:ada");
    pay.correlation_id = checkout.correlation_id;
    pay.causation_id = Some(submitted);
    let payment = OrderCommand::Pay {
        payment_id: "pay-7".into(),
    };
    let (version, _) = frontend
        .send(id, payment, pay)
        .await
        .map_err(|r| r.message)?;
    writeln!(out, "web: payment validated (v{version})")?;

    // The saga ships; the summary follows. Wait for it, within bounds.
    let summary = wait_for_status(summaries, id, "Shipped").await?;
    writeln!(
        out,
        "summary: {id} {} items={} tracking={}",
        summary.status,
        summary.items,
        summary.tracking.as_deref().unwrap_or("-")
    )?;

    // A command that no transition allows is refused with a typed error.
    let cancel = OrderCommand::Cancel {
        reason: "too late".into(),
    };
    match frontend.send(id, cancel, CommandMetadata::root()).await {
        Err(refusal) if refusal.invalid_transition => {
            writeln!(out, "refused: {}", refusal.message)?;
        }
        other => {
            return Err(format!("cancelling a shipped order was not refused: {other:?}").into());
        }
    }

    let orders = Repository::<Order, S>::new(store);
    let stream = cqrs_core::StreamId::of::<Order>(id, None);
    write!(out, "{}", causal_chain(&orders.history(&stream, 1).await?))?;
    Ok(())
}

/// The whole flow on the in-memory store, written to `out`.
pub async fn demo(
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    demo_on(InMemoryEventStore::new(), out).await
}

/// [`demo`] on `store`, which keeps the events for a caller to look at.
pub async fn demo_on(
    store: InMemoryEventStore,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let orders = Repository::<Order, _>::new(store.clone()).with_cache(1_000);
    let summaries = OrderSummaries {
        model: InMemoryReadModelStore::new(),
    };
    let model = summaries.model.clone();
    let summary_view =
        InMemoryProjectionRunner::spawn(&store, summaries, 0, RetryPolicy::default());
    let saga = ProcessManagerProjection::new(
        Shipping,
        InMemoryReadModelStore::new(),
        // The repository is the saga's dispatcher in process.
        orders.clone(),
    );
    let saga_runner = InMemoryProjectionRunner::spawn(&store, saga, 0, RetryPolicy::default());
    let deadlines = InMemoryDeadlines::new();
    let payment_deadline = ProcessManagerProjection::new(
        PaymentDeadline::default(),
        InMemoryReadModelStore::new(),
        WithDeadlines::new(orders.clone(), deadlines.clone()),
    );
    let deadline_runner =
        InMemoryProjectionRunner::spawn(&store, payment_deadline, 0, RetryPolicy::default());
    let mut outcome = shop(&orders, &model, store.clone(), out).await;
    if outcome.is_ok() {
        outcome = unpaid(&orders, &deadline_runner, &deadlines, out).await;
    }
    deadline_runner.stop().await;
    saga_runner.stop().await;
    summary_view.stop().await;
    outcome
}

/// The order that is never paid, and its submission.
fn unpaid_order() -> (&'static str, OrderCommand) {
    let submit = OrderCommand::Submit {
        items: vec![Item {
            sku: "PEN-1".into(),
            quantity: 1,
        }],
        channel: Channel::Phone,
    };
    ("order-2", submit)
}

/// On NATS, an order submitted and never paid: the server holds its payment deadline and,
/// once due, the deadline worker cancels it through the command service.
async fn unpaid_on_nats<M: ReadModelStore<OrderSummary>>(
    commands: &CommandClient,
    summaries: &M,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (id, submit) = unpaid_order();
    Frontend::send(
        commands,
        id,
        submit,
        CommandMetadata::root().with_actor("user:bob"),
    )
    .await
    .map_err(|r| r.message)?;
    let summary = wait_for_status(summaries, id, "Cancelled").await?;
    writeln!(
        out,
        "deadline: {id} not paid within its window: {} (scheduled on the server)",
        summary.status
    )?;
    Ok(())
}

/// An order submitted and never paid: once the payment window has passed on the deadlines'
/// clock, its deadline cancels it.
async fn unpaid<P: Projection>(
    orders: &Repository<Order, InMemoryEventStore>,
    deadline_runner: &cqrs_core::projection::ProjectionHandle<P>,
    deadlines: &InMemoryDeadlines<Targeted<Order>>,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (id, submit) = unpaid_order();
    let submitted = orders
        .execute(id, submit, CommandMetadata::root().with_actor("user:bob"))
        .await?;
    let position = submitted.last().map_or(0, |e| e.position);
    deadline_runner
        .wait_for(position, Duration::from_secs(5))
        .await?;
    let pending = deadlines.pending();
    writeln!(
        out,
        "deadline: {id} must be paid by submission + {} min ({} pending)",
        PAYMENT_WINDOW.as_secs() / 60,
        pending.len()
    )?;
    let early = deadlines
        .advance(
            PAYMENT_WINDOW.saturating_sub(Duration::from_secs(60)),
            orders,
        )
        .await?;
    let late = deadlines.advance(Duration::from_secs(61), orders).await?;
    let stream = cqrs_core::StreamId::of::<Order>(id, None);
    let state = orders.load(&stream).await?.state;
    writeln!(
        out,
        "deadline: after 29 min {early} sent, after 30 min {late} sent: {id} {}",
        cqrs_core::Aggregate::state_name(&state)
    )?;
    Ok(())
}

/// The whole flow on JetStream at `url`: the web side is a [`CommandClient`], the worker side a
/// [`CommandService`], the summary and the saga run from checkpoints with their state in KV
/// buckets.
pub async fn demo_nats(
    url: &str,
    out: &mut impl std::fmt::Write,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store = crate::connect_fresh(url, "sales").await?;
    let client = store.client().clone();
    // The worker side.
    let worker = CommandService::new(
        client.clone(),
        "sales",
        Repository::<Order, _>::new(store.clone()).with_cache(1_000),
    )
    .spawn()
    .await?;
    // The web side.
    let commands = CommandClient::new(client, "sales");
    let summaries = OrderSummaries {
        model: KvReadModelStore::open(store.jetstream(), "SALES_ORDER_SUMMARIES", 1).await?,
    };
    let model = summaries.model.clone();
    let summary_view =
        JetStreamProjectionRunner::spawn(&store, summaries, ProjectionConfig::new()).await?;
    let saga = ProcessManagerProjection::new(
        Shipping,
        KvReadModelStore::<()>::open(store.jetstream(), "SALES_SHIPPING_SAGA", 1).await?,
        // The command client is its dispatcher over NATS.
        commands.clone(),
    );
    let saga_runner =
        JetStreamProjectionRunner::spawn(&store, saga, ProjectionConfig::new()).await?;
    // Payment deadlines, held by the server; two seconds here, so that the demo shows one.
    let deadlines = JetStreamDeadlines::<Targeted<Order>>::open(&store).await?;
    let payment_deadline = ProcessManagerProjection::new(
        PaymentDeadline {
            window: Duration::from_secs(2),
        },
        KvReadModelStore::<()>::open(store.jetstream(), "SALES_PAYMENT_DEADLINE", 1).await?,
        WithDeadlines::new(commands.clone(), deadlines.clone()),
    );
    let deadline_runner =
        JetStreamProjectionRunner::spawn(&store, payment_deadline, ProjectionConfig::new()).await?;
    let deadline_worker = deadlines.spawn_worker(commands.clone()).await?;
    let mut outcome = shop(&commands, &model, store, out).await;
    if outcome.is_ok() {
        outcome = unpaid_on_nats(&commands, &model, out).await;
    }
    deadline_worker.stop().await;
    deadline_runner.stop().await?;
    saga_runner.stop().await?;
    summary_view.stop().await?;
    worker.stop().await;
    outcome
}

async fn wait_for_status<S: ReadModelStore<OrderSummary>>(
    model: &S,
    id: &str,
    status: &str,
) -> Result<OrderSummary, Box<dyn std::error::Error + Send + Sync>> {
    for _ in 0..1_500 {
        if let Some(line) = model.get(id).await?
            && line.value.status == status
        {
            return Ok(line.value);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("order {id} did not reach {status} within 15 s").into())
}
