//! Every attribute and key name the macros read, in one table (as `serde_derive`'s
//! `symbol.rs`): a typo in a name is a compile error here rather than a key that is never
//! recognised.

use std::fmt;
use syn::{Ident, Path};

/// An attribute or key name.
#[derive(Copy, Clone)]
pub(crate) struct Symbol(&'static str);

/// `#[aggregate(...)]`, on a state type and its variants.
pub(crate) const AGGREGATE: Symbol = Symbol("aggregate");
/// `#[event(...)]`, on a variant of an event enum.
pub(crate) const EVENT: Symbol = Symbol("event");
/// `#[transition(...)]`, on a handler.
pub(crate) const TRANSITION: Symbol = Symbol("transition");
/// `#[personal(...)]`, on a field of an event variant.
pub(crate) const PERSONAL: Symbol = Symbol("personal");
/// `subject = field` in `#[personal]`.
pub(crate) const SUBJECT: Symbol = Symbol("subject");
/// `replacement = value` in `#[personal]`.
pub(crate) const REPLACEMENT: Symbol = Symbol("replacement");
/// `#[serde(...)]`, read to check an event enum's representation.
pub(crate) const SERDE: Symbol = Symbol("serde");

/// `command = Type` in `#[aggregate]`.
pub(crate) const COMMAND: Symbol = Symbol("command");
/// `error = Type` in `#[aggregate]`.
pub(crate) const ERROR: Symbol = Symbol("error");
/// `name = "..."` in `#[aggregate]` and `#[event]`.
pub(crate) const NAME: Symbol = Symbol("name");
/// `state_version = N` in `#[aggregate]`.
pub(crate) const STATE_VERSION: Symbol = Symbol("state_version");
/// `terminal` in `#[aggregate]` on a state.
pub(crate) const TERMINAL: Symbol = Symbol("terminal");
/// `json_schema` in `#[event]` on the enum.
pub(crate) const JSON_SCHEMA: Symbol = Symbol("json_schema");
/// `version = N` in `#[event]`.
pub(crate) const VERSION: Symbol = Symbol("version");
/// `upcast(from = N, with = Type)` in `#[event]`.
pub(crate) const UPCAST: Symbol = Symbol("upcast");
/// `from = ...` in `upcast(...)` and `#[transition]`.
pub(crate) const FROM: Symbol = Symbol("from");
/// `with = Type` in `upcast(...)`.
pub(crate) const WITH: Symbol = Symbol("with");
/// `on = Command` in `#[transition]`.
pub(crate) const ON: Symbol = Symbol("on");
/// `to = State` in `#[transition]`.
pub(crate) const TO: Symbol = Symbol("to");
/// `rename` in `#[serde]`.
pub(crate) const RENAME: Symbol = Symbol("rename");
/// `deserialize` in `#[serde(rename(...))]`.
pub(crate) const DESERIALIZE: Symbol = Symbol("deserialize");

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }
}
