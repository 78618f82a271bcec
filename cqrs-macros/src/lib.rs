//! Derive macros of `cqrs-core`. Use them through `cqrs_core` (feature `macros`, on by
//! default): `use cqrs_core::{Aggregate, Command, DomainEvent, transitions};`.
//!
//! Each macro lives in its own module and runs in three steps: parse the input into a small
//! model while recording every error in an error context, validate the model (cross-cutting
//! rules such as duplicate names or gaps in an upcast chain), then expand. Invalid input still
//! expands to a minimal impl next to the errors, so that a mistake is reported once.
//!
//! Shared by all of them: `ctxt` (the error context, which panics if dropped unchecked),
//! `symbol` (every attribute and key name), `attr` (keys that may be given once, reported the
//! same way everywhere, and the text of a path for messages).
#![forbid(unsafe_code)]

mod aggregate;
mod attr;
mod command;
mod ctxt;
mod event;
mod personal;
mod symbol;
mod transitions;

use proc_macro::TokenStream;

#[doc = include_str!("../docs/domain_event.md")]
#[proc_macro_derive(DomainEvent, attributes(event, personal))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::derive(&input).into()
}

#[doc = include_str!("../docs/aggregate.md")]
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    aggregate::derive(&input).into()
}

#[doc = include_str!("../docs/command.md")]
#[proc_macro_derive(Command)]
pub fn derive_command(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    command::derive(&input).into()
}

#[doc = include_str!("../docs/transitions.md")]
#[proc_macro_attribute]
pub fn transitions(args: TokenStream, input: TokenStream) -> TokenStream {
    transitions::expand(&args.into(), input.into()).into()
}
