//! Order fulfilment: a state machine written with the derives.
//!
//! `Draft --Submit--> Submitted --Pay--> Paid --Ship--> Shipped`, and `Cancel` from `Draft`,
//! `Submitted` or `Paid` to `Cancelled`. The `Submitted` event is at schema version 3: version 1
//! had no channel and one item, version 2 had no channel; both still decode.

use cqrs_core::{Aggregate, Command, DomainEvent, InvalidTransition, transitions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// Where an order came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Channel {
    /// The web shop.
    Web,
    /// A phone call.
    Phone,
}

/// The order's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, Aggregate)]
#[aggregate(command = OrderCommand, event = OrderEvent, error = OrderError)]
pub enum Order {
    /// Being put together.
    #[default]
    Draft,
    /// Submitted, waiting for payment.
    Submitted {
        /// What was ordered.
        items: Vec<Item>,
    },
    /// Paid, waiting for shipment.
    Paid {
        /// What was ordered.
        items: Vec<Item>,
        /// The payment.
        payment_id: String,
    },
    /// On its way. Final.
    #[aggregate(terminal)]
    Shipped {
        /// Parcel tracking code.
        tracking: String,
    },
    /// Cancelled. Final.
    #[aggregate(terminal)]
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// What can be asked of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Command)]
pub enum OrderCommand {
    /// Submit the order.
    Submit {
        /// What is ordered; not empty.
        items: Vec<Item>,
        /// Where from.
        channel: Channel,
    },
    /// Record the payment.
    Pay {
        /// The payment.
        payment_id: String,
    },
    /// Ship it.
    Ship {
        /// Parcel tracking code.
        tracking: String,
    },
    /// Cancel it.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// What happened to an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, DomainEvent)]
#[event(json_schema)]
pub enum OrderEvent {
    /// The order was submitted.
    #[event(
        version = 3,
        upcast(from = 1, with = SubmittedV1),
        upcast(from = 2, with = SubmittedV2)
    )]
    Submitted {
        /// What was ordered.
        items: Vec<Item>,
        /// Where from.
        channel: Channel,
    },
    /// The payment was validated.
    #[event(name = "PaymentValidated")]
    Paid {
        /// The payment.
        payment_id: String,
    },
    /// The order left the warehouse.
    Shipped {
        /// Parcel tracking code.
        tracking: String,
    },
    /// The order was cancelled.
    Cancelled {
        /// Why.
        reason: String,
    },
}

/// `Submitted` at schema version 1: a single item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubmittedV1 {
    /// Stock keeping unit.
    pub sku: String,
    /// How many.
    pub quantity: u32,
}

/// `Submitted` at schema version 2: several items, no channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SubmittedV2 {
    /// What was ordered.
    pub items: Vec<Item>,
}

impl From<SubmittedV1> for SubmittedV2 {
    fn from(v1: SubmittedV1) -> Self {
        SubmittedV2 {
            items: vec![Item {
                sku: v1.sku,
                quantity: v1.quantity,
            }],
        }
    }
}

impl From<SubmittedV2> for OrderEvent {
    fn from(v2: SubmittedV2) -> Self {
        // Before version 3 every order came from the web shop.
        OrderEvent::Submitted {
            items: v2.items,
            channel: Channel::Web,
        }
    }
}

/// Why an order refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// An order needs at least one item.
    #[error("an order needs at least one item")]
    NoItems,
    /// The command makes no sense in the order's state.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

#[transitions]
impl Order {
    #[transition(from = Draft, on = Submit, to = Submitted)]
    fn submit(&self, items: Vec<Item>, channel: Channel) -> Result<Vec<OrderEvent>, OrderError> {
        if items.is_empty() {
            return Err(OrderError::NoItems);
        }
        Ok(vec![OrderEvent::Submitted { items, channel }])
    }

    #[transition(from = Submitted, on = Pay, to = Paid)]
    fn pay(&self, payment_id: String) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Paid { payment_id }])
    }

    #[transition(from = Paid, on = Ship, to = Shipped)]
    fn ship(&self, tracking: String) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Shipped { tracking }])
    }

    #[transition(from = [Draft, Submitted, Paid], on = Cancel, to = Cancelled)]
    fn cancel(&self, reason: String) -> Result<Vec<OrderEvent>, OrderError> {
        Ok(vec![OrderEvent::Cancelled { reason }])
    }

    fn evolve(self, event: &OrderEvent) -> Self {
        match (self, event) {
            (_, OrderEvent::Submitted { items, .. }) => Order::Submitted {
                items: items.clone(),
            },
            (Order::Submitted { items }, OrderEvent::Paid { payment_id }) => Order::Paid {
                items,
                payment_id: payment_id.clone(),
            },
            (_, OrderEvent::Shipped { tracking }) => Order::Shipped {
                tracking: tracking.clone(),
            },
            (_, OrderEvent::Cancelled { reason }) => Order::Cancelled {
                reason: reason.clone(),
            },
            // Events are facts: one that does not fit the state leaves it unchanged.
            (state, _) => state,
        }
    }
}

impl Order {
    /// The ordered items, once submitted and until shipped or cancelled.
    pub fn items(&self) -> &[Item] {
        match self {
            Order::Submitted { items } | Order::Paid { items, .. } => items,
            _ => &[],
        }
    }
}
