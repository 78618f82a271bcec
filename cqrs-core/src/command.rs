//! Command enums: their variants as data.
//!
//! `#[derive(Command)]` on an enum of commands writes [`Command`]: each variant's name and
//! fields. A state machine's command type must derive it: `#[transitions]` checks at compile
//! time that a transition handles every variant and that every handler takes its variant's
//! fields, and reports a mistake at the variant or field it concerns instead of as a
//! non-exhaustive `match` inside generated code.
//!
//! ```
//! use cqrs_core::Command;
//!
//! #[derive(Command)]
//! enum AccountCommand {
//!     Open { owner: String },
//!     Deposit { amount: u64 },
//!     Close,
//! }
//!
//! assert_eq!(AccountCommand::Deposit { amount: 5 }.name(), "Deposit");
//! let names: Vec<_> = AccountCommand::VARIANTS.iter().map(|v| v.name).collect();
//! assert_eq!(names, ["Open", "Deposit", "Close"]);
//! ```

/// An enum of commands, described by `#[derive(Command)]`.
pub trait Command {
    /// Every variant, in declaration order.
    const VARIANTS: &'static [CommandVariant];

    /// The name of this command's variant: `"Deposit"` for `AccountCommand::Deposit { .. }`.
    fn name(&self) -> &'static str;
}

/// One variant of a command enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandVariant {
    /// The variant's name as written.
    pub name: &'static str,
    /// Its fields.
    pub fields: CommandFields,
}

/// The fields of a command variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandFields {
    /// `Close`.
    Unit,
    /// `Deposit { amount: u64 }`: names and types, in declaration order.
    Named(&'static [CommandField]),
    /// `Pay(u64, String)`: the types, in order.
    Unnamed(&'static [&'static str]),
}

/// A named field of a command variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandField {
    /// The field's name.
    pub name: &'static str,
    /// Its type as written in the enum (`Vec<String>`).
    pub ty: &'static str,
}
