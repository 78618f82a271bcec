//! A small wallet aggregate used by the cqrs-core integration tests.
#![allow(dead_code, unreachable_pub)]

use cqrs_core::event::{EventSchema, decode_variant, encode_variant};
use cqrs_core::{Aggregate, DecodeError, DomainEvent, EncodeError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wallet {
    pub opened: bool,
    pub balance: i64,
    pub transfers: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalletCommand {
    Open,
    Credit(i64),
    Debit(i64),
    /// Emits several events at once (a fee and a debit).
    DebitWithFee {
        amount: i64,
        fee: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletEvent {
    Opened,
    Credited { amount: i64 },
    Debited { amount: i64 },
    FeeCharged { fee: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalletError {
    #[error("wallet already open")]
    AlreadyOpen,
    #[error("wallet not open")]
    NotOpen,
    #[error("insufficient funds")]
    InsufficientFunds,
    #[error("amount must be positive")]
    NotPositive,
}

impl WalletEvent {
    fn name(&self) -> &'static str {
        match self {
            Self::Opened => "Opened",
            Self::Credited { .. } => "Credited",
            Self::Debited { .. } => "Debited",
            Self::FeeCharged { .. } => "FeeCharged",
        }
    }
}

impl DomainEvent for WalletEvent {
    fn event_type(&self) -> &'static str {
        self.name()
    }
    fn schema_version(&self) -> u32 {
        1
    }
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode_variant(self.name(), self)
    }
    fn decode(event_type: &str, version: u32, body: &[u8]) -> Result<Self, DecodeError> {
        match Self::catalog().iter().find(|s| s.name == event_type) {
            Some(_) if version == 1 => decode_variant(event_type, event_type, version, body),
            Some(_) => Err(DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version,
                readable: vec![1],
            }),
            None => Err(DecodeError::UnknownEventType {
                event_type: event_type.to_owned(),
            }),
        }
    }
    fn catalog() -> &'static [EventSchema] {
        &[
            EventSchema {
                name: "Opened",
                version: 1,
                readable_versions: &[1],
                personal: &[],
            },
            EventSchema {
                name: "Credited",
                version: 1,
                readable_versions: &[1],
                personal: &[],
            },
            EventSchema {
                name: "Debited",
                version: 1,
                readable_versions: &[1],
                personal: &[],
            },
            EventSchema {
                name: "FeeCharged",
                version: 1,
                readable_versions: &[1],
                personal: &[],
            },
        ]
    }
}

impl Aggregate for Wallet {
    const TYPE: &'static str = "Wallet";
    type Command = WalletCommand;
    type Event = WalletEvent;
    type Error = WalletError;

    fn decide(&self, command: WalletCommand) -> Result<Vec<WalletEvent>, WalletError> {
        match command {
            WalletCommand::Open if self.opened => Err(WalletError::AlreadyOpen),
            WalletCommand::Open => Ok(vec![WalletEvent::Opened]),
            _ if !self.opened => Err(WalletError::NotOpen),
            WalletCommand::Credit(amount) if amount <= 0 => Err(WalletError::NotPositive),
            WalletCommand::Credit(amount) => Ok(vec![WalletEvent::Credited { amount }]),
            WalletCommand::Debit(amount) | WalletCommand::DebitWithFee { amount, .. }
                if amount <= 0 =>
            {
                Err(WalletError::NotPositive)
            }
            WalletCommand::Debit(amount) if amount > self.balance => {
                Err(WalletError::InsufficientFunds)
            }
            WalletCommand::Debit(amount) => Ok(vec![WalletEvent::Debited { amount }]),
            WalletCommand::DebitWithFee { amount, fee } if amount + fee > self.balance => {
                Err(WalletError::InsufficientFunds)
            }
            WalletCommand::DebitWithFee { amount, fee } => Ok(vec![
                WalletEvent::FeeCharged { fee },
                WalletEvent::Debited { amount },
            ]),
        }
    }

    fn evolve(mut self, event: &WalletEvent) -> Self {
        match event {
            WalletEvent::Opened => self.opened = true,
            WalletEvent::Credited { amount } => {
                self.balance += amount;
                self.transfers += 1;
            }
            WalletEvent::Debited { amount } => {
                self.balance -= amount;
                self.transfers += 1;
            }
            WalletEvent::FeeCharged { fee } => self.balance -= fee,
        }
        self
    }
}
