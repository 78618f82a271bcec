//! `#[derive(Aggregate)]`: parse -> validate -> expand.
//!
//! The derive writes the `Aggregate` impl from what the type declares — name, command, event
//! and error types, and (for an enum) its states — and delegates `decide`, `evolve`,
//! `command_name`, `declared_target` and `transition_table` to the hidden `Transitions` trait,
//! which `#[transitions]` implements from the impl block holding the handlers.

use crate::attr::{Attr, path_name};
use crate::ctxt::{Ctxt, finish};
use crate::symbol::{AGGREGATE, COMMAND, ERROR, EVENT, NAME, STATE_VERSION, TERMINAL};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{DeriveInput, Ident, LitInt, LitStr, Type};

/// Entry point.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let ctxt = Ctxt::new();
    let model = parse(&ctxt, input);
    finish(
        ctxt,
        || expand(&model),
        || {
            // A union can never be an aggregate: a fallback impl would only add errors about its
            // bounds.
            if matches!(input.data, syn::Data::Union(_)) {
                TokenStream::new()
            } else {
                fallback(&model)
            }
        },
    )
}

/// The name of the hidden alias of the command type that `#[transitions]` uses in patterns.
pub(crate) fn command_alias(state: &Ident) -> Ident {
    format_ident!("__CqrsCommandOf{}", state)
}

// ---------------------------------------------------------------------------------------------
// Parse (and validate: the rules are all local to one attribute)

struct AggregateInput<'a> {
    input: &'a DeriveInput,
    name: Option<LitStr>,
    state_version: Option<u32>,
    command: Option<Type>,
    event: Option<Type>,
    error: Option<Type>,
    /// `Some` for an enum: its states.
    states: Option<Vec<StateVariant<'a>>>,
}

struct StateVariant<'a> {
    ident: &'a Ident,
    terminal: bool,
}

fn parse<'a>(ctxt: &Ctxt, input: &'a DeriveInput) -> AggregateInput<'a> {
    let mut model = AggregateInput {
        input,
        name: None,
        state_version: None,
        command: None,
        event: None,
        error: None,
        states: None,
    };
    let attrs: Vec<_> = input
        .attrs
        .iter()
        .filter(|a| a.path() == AGGREGATE)
        .collect();
    let mut keys = ContainerKeys {
        name: Attr::none(ctxt, NAME),
        state_version: Attr::none(ctxt, STATE_VERSION),
        command: Attr::none(ctxt, COMMAND),
        event: Attr::none(ctxt, EVENT),
        error: Attr::none(ctxt, ERROR),
    };
    for attr in &attrs {
        parse_container_attr(ctxt, attr, &mut keys);
    }
    model.name = keys.name.get();
    model.state_version = keys.state_version.get();
    model.command = keys.command.get();
    model.event = keys.event.get();
    model.error = keys.error.get();
    let missing: Vec<&str> = [
        ("command", model.command.is_none()),
        ("event", model.event.is_none()),
        ("error", model.error.is_none()),
    ]
    .into_iter()
    .filter_map(|(key, missing)| missing.then_some(key))
    .collect();
    if !missing.is_empty() {
        let message = format!(
            "`#[derive(Aggregate)]` needs {}: `#[aggregate(command = MyCommand, event = MyEvent, error = MyError)]`",
            missing
                .iter()
                .map(|k| format!("`{k} = ...`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match attrs.first() {
            Some(attr) => ctxt.error_spanned_by(attr, message),
            None => ctxt.error_spanned_by(&input.ident, message),
        }
    }
    match &input.data {
        syn::Data::Enum(data) => {
            let mut states = Vec::new();
            for variant in &data.variants {
                check_no_attr(
                    ctxt,
                    variant.fields.iter().flat_map(|f| &f.attrs),
                    "a field",
                );
                let mut terminal = Attr::<()>::none(ctxt, TERMINAL);
                for attr in variant.attrs.iter().filter(|a| a.path() == AGGREGATE) {
                    let result = attr.parse_nested_meta(|meta| {
                        if meta.path == TERMINAL {
                            terminal.first(&meta.path);
                        } else {
                            let key = path_name(&meta.path);
                            ctxt.error_spanned_by(
                                &meta.path,
                                format!("unknown key `{key}` in `#[aggregate(...)]` on a state; expected `terminal`"),
                            );
                        }
                        Ok(())
                    });
                    if let Err(error) = result {
                        ctxt.syn_error(error);
                    }
                }
                states.push(StateVariant {
                    ident: &variant.ident,
                    terminal: terminal.is_given(),
                });
            }
            model.states = Some(states);
        }
        syn::Data::Struct(data) => {
            check_no_attr(ctxt, data.fields.iter().flat_map(|f| &f.attrs), "a field");
        }
        syn::Data::Union(data) => ctxt.error_spanned_by(
            data.union_token,
            "`Aggregate` can be derived for an enum (a state machine) or a struct, not a union",
        ),
    }
    model
}

fn check_no_attr<'a>(
    ctxt: &Ctxt,
    attrs: impl IntoIterator<Item = &'a syn::Attribute>,
    place: &str,
) {
    for attr in attrs.into_iter().filter(|a| a.path() == AGGREGATE) {
        ctxt.error_spanned_by(
            attr,
            format!("`#[aggregate(...)]` does not belong on {place}: it goes on the state type (`command`, `event`, `error`, ...) or on a state variant (`terminal`)"),
        );
    }
}

/// The keys of `#[aggregate(...)]` on the type, over all its `#[aggregate]` attributes.
struct ContainerKeys<'c> {
    name: Attr<'c, LitStr>,
    state_version: Attr<'c, u32>,
    command: Attr<'c, Type>,
    event: Attr<'c, Type>,
    error: Attr<'c, Type>,
}

fn parse_container_attr(ctxt: &Ctxt, attr: &syn::Attribute, keys: &mut ContainerKeys<'_>) {
    let result = attr.parse_nested_meta(|meta| {
        if meta.path == COMMAND {
            keys.command.set(&meta.path, Some(meta.value()?.parse()?));
        } else if meta.path == EVENT {
            keys.event.set(&meta.path, Some(meta.value()?.parse()?));
        } else if meta.path == ERROR {
            keys.error.set(&meta.path, Some(meta.value()?.parse()?));
        } else if meta.path == NAME {
            let lit: LitStr = meta.value()?.parse()?;
            if lit.value().is_empty() {
                ctxt.error_spanned_by(&lit, "an aggregate type name cannot be empty");
            }
            keys.name.set(&meta.path, Some(lit));
        } else if meta.path == STATE_VERSION {
            let lit: LitInt = meta.value()?.parse()?;
            let version = match lit.base10_parse::<u32>() {
                Ok(0) => {
                    ctxt.error_spanned_by(&lit, "state versions start at 1");
                    None
                }
                Ok(v) => Some(v),
                Err(_) => {
                    ctxt.error_spanned_by(&lit, "a state version must fit in a `u32`");
                    None
                }
            };
            keys.state_version.set(&meta.path, version);
        } else if meta.path == TERMINAL {
            ctxt.error_spanned_by(
                &meta.path,
                "`terminal` belongs on a state variant: `#[aggregate(terminal)] Closed`",
            );
        } else {
            let key = path_name(&meta.path);
            ctxt.error_spanned_by(
                &meta.path,
                format!("unknown key `{key}` in `#[aggregate(...)]`; expected `command`, `event`, `error`, `name` or `state_version`"),
            );
            if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<syn::Expr>()?;
            }
        }
        Ok(())
    });
    if let Err(error) = result {
        ctxt.syn_error(error);
    }
}

// ---------------------------------------------------------------------------------------------
// Expand

fn expand(model: &AggregateInput<'_>) -> TokenStream {
    let input = model.input;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let type_name = model
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), LitStr::value);
    let state_version = model.state_version.unwrap_or(1);
    let (command, event, error) = (&model.command, &model.event, &model.error);
    // Errors about a missing `#[transitions]` block point at the type name.
    let transitions = quote_spanned!(ident.span()=> <Self as ::cqrs_core::__private::Transitions>);

    let (state_name, state_enum, alias) = match &model.states {
        Some(states) => {
            let arms = states.iter().map(|s| {
                let (variant, name) = (s.ident, s.ident.to_string());
                quote!(Self::#variant { .. } => #name,)
            });
            let body = if states.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#arms)* })
            };
            let infos = states.iter().map(|s| {
                let (name, terminal) = (s.ident.to_string(), s.terminal);
                quote!(::cqrs_core::__private::State { name: #name, terminal: #terminal })
            });
            let state_enum = quote! {
                #[automatically_derived]
                impl #impl_generics ::cqrs_core::__private::StateEnum for #ident #ty_generics #where_clause {
                    const STATES: &'static [::cqrs_core::__private::State] = &[#(#infos),*];
                }
            };
            (body, state_enum, alias_item(ident, command.as_ref()))
        }
        None => (
            quote!(#type_name),
            TokenStream::new(),
            alias_item(ident, command.as_ref()),
        ),
    };

    // Enum states declare their transitions: the repository refuses undeclared ones up front.
    let state_machine = model.states.is_some();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::__private::Aggregate for #ident #ty_generics #where_clause {
            const TYPE: &'static str = #type_name;
            const STATE_VERSION: u32 = #state_version;
            const STATE_MACHINE: bool = #state_machine;
            type Command = #command;
            type Event = #event;
            type Error = #error;

            fn decide(
                &self,
                command: Self::Command,
            ) -> ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error> {
                #transitions::decide(self, command)
            }

            fn evolve(self, event: &Self::Event) -> Self {
                #transitions::evolve(self, event)
            }

            fn command_name(command: &Self::Command) -> &'static str {
                #transitions::command_name(command)
            }

            fn state_name(&self) -> &'static str {
                #state_name
            }

            fn declared_target(&self, command: &Self::Command) -> ::core::option::Option<&'static str> {
                #transitions::declared_target(self, command)
            }

            fn transition_table() -> ::core::option::Option<::cqrs_core::__private::StateMachine> {
                #transitions::transition_table()
            }
        }

        #state_enum
        #alias
    }
}

/// `type __CqrsCommandOfOrder = OrderCommand;` — lets `#[transitions]` name command variants
/// in patterns (a projection `<Order as Aggregate>::Command::Submit` is not allowed there).
fn alias_item(ident: &Ident, command: Option<&Type>) -> TokenStream {
    let Some(command) = command else {
        return TokenStream::new();
    };
    let alias = command_alias(ident);
    quote! {
        #[doc(hidden)]
        #[allow(non_camel_case_types, dead_code)]
        type #alias = #command;
    }
}

/// A minimal impl next to the errors: the types that parsed, placeholders for the others.
fn fallback(model: &AggregateInput<'_>) -> TokenStream {
    let input = model.input;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let span = Span::call_site();
    let command = model
        .command
        .as_ref()
        .map_or_else(|| quote_spanned!(span=> ()), |t| quote!(#t));
    let event = model
        .event
        .as_ref()
        .map_or_else(|| quote!(::cqrs_core::__private::NoEvent), |t| quote!(#t));
    let error = model.error.as_ref().map_or_else(
        || quote!(::cqrs_core::__private::InvalidTransition),
        |t| quote!(#t),
    );
    let alias = alias_item(ident, model.command.as_ref());
    let state_enum = model.states.as_ref().map(|_| {
        quote! {
            #[automatically_derived]
            impl #impl_generics ::cqrs_core::__private::StateEnum for #ident #ty_generics #where_clause {
                const STATES: &'static [::cqrs_core::__private::State] = &[];
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::__private::Aggregate for #ident #ty_generics #where_clause {
            const TYPE: &'static str = "";
            type Command = #command;
            type Event = #event;
            type Error = #error;

            fn decide(
                &self,
                _: Self::Command,
            ) -> ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error> {
                ::core::unreachable!("invalid #[derive(Aggregate)] input")
            }

            fn evolve(self, _: &Self::Event) -> Self {
                ::core::unreachable!("invalid #[derive(Aggregate)] input")
            }
        }
        #state_enum
        #alias
    }
}
