//! Small fixture types for documentation examples. Not part of the API.

use crate::event::{DecodeError, DomainEvent, EncodeError, EventSchema};
use serde::{Deserialize, Serialize};

/// An event of the documentation counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CounterEvent {
    /// Something was added.
    Added {
        /// How much.
        amount: u64,
    },
}

/// Why the documentation counter refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// Adding zero is refused.
    #[error("adding zero changes nothing")]
    Zero,
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        "Added"
    }

    fn schema_version(&self) -> u32 {
        1
    }

    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        crate::event::encode_variant(self.event_type(), self)
    }

    fn decode(event_type: &str, schema_version: u32, body: &[u8]) -> Result<Self, DecodeError> {
        match (event_type, schema_version) {
            ("Added", 1) => crate::event::decode_variant("Added", event_type, schema_version, body),
            ("Added", version) => Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version,
                readable: vec![1],
            }),
            _ => Err(DecodeError::UnknownEventType {
                event_type: event_type.to_owned(),
            }),
        }
    }

    fn catalog() -> &'static [EventSchema] {
        &[EventSchema {
            name: "Added",
            version: 1,
            readable_versions: &[1],
            personal: &[],
        }]
    }
}

/// The documentation counter: a plain-struct aggregate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    /// The sum so far.
    pub value: u64,
}

/// Commands of the documentation counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CounterCommand {
    /// Add an amount.
    Add(u64),
}

impl crate::Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn decide(&self, command: CounterCommand) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Add(0) => Err(CounterError::Zero),
            CounterCommand::Add(amount) => Ok(vec![CounterEvent::Added { amount }]),
        }
    }

    fn evolve(self, event: &CounterEvent) -> Self {
        match event {
            CounterEvent::Added { amount } => Self {
                value: self.value + amount,
            },
        }
    }
}
