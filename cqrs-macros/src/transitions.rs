//! `#[transitions]` on the impl block of an aggregate: parse -> validate -> expand.
//!
//! State machines: methods marked `#[transition(from = A, on = Cmd, to = B)]` become the arms
//! of the generated `decide` (`from = A { field }` binds a field of the state for the handler);
//! `fn evolve` moves into the generated impl. Plain aggregates: `fn
//! decide` and `fn evolve` move into it.

use crate::aggregate::command_alias;
use crate::attr::{Attr, path_name};
use crate::ctxt::{Ctxt, finish};
use crate::symbol::{FROM, ON, TO, TRANSITION};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use std::collections::BTreeMap;
use syn::{Ident, ImplItem, ImplItemFn, ItemImpl};

/// Entry point.
pub(crate) fn expand(args: &TokenStream, input: TokenStream) -> TokenStream {
    let ctxt = Ctxt::new();
    if !args.is_empty() {
        ctxt.error_spanned_by(args, "`#[transitions]` takes no arguments");
    }
    let Ok(item) = syn::parse2::<ItemImpl>(input.clone()) else {
        ctxt.error_at(
            Span::call_site(),
            "`#[transitions]` goes on the inherent impl block of an aggregate: `#[transitions] impl Order { ... }`",
        );
        // Every error recorded so far, the arguments' too; the input stays as it was.
        return finish(ctxt, TokenStream::new, || input);
    };
    let model = parse(&ctxt, item);
    if model.item.trait_.is_none() {
        validate(&ctxt, &model);
    }
    finish(ctxt, || expand_model(&model), || fallback(&model))
}

// ---------------------------------------------------------------------------------------------
// Parse

struct Model {
    /// The impl block without the items the expansion moves.
    item: ItemImpl,
    /// The self type's path without generic arguments, to name state variants in patterns
    /// (`Self::X` in a trait impl would look for an associated type first).
    state_path: TokenStream,
    /// The last segment of the self type: names the command alias.
    state_ident: Option<Ident>,
    transitions: Vec<TransitionDecl>,
    evolve: Option<ImplItemFn>,
    decide: Option<ImplItemFn>,
}

impl Model {
    /// The commands the transitions handle, each once, in the order they are first named.
    fn commands(&self) -> Vec<&Ident> {
        let mut commands: Vec<&Ident> = Vec::new();
        for on in self.transitions.iter().filter_map(|t| t.on.as_ref()) {
            if !commands.contains(&on) {
                commands.push(on);
            }
        }
        commands
    }
}

struct TransitionDecl {
    from: Vec<Ident>,
    /// The fields each `from` state binds (`from = OnLoan { member }`), aligned with `from`.
    state_fields: Vec<Vec<StateField>>,
    on: Option<Ident>,
    /// `on = Pay(..)`: a tuple variant, whose fields the handler's parameters bind in order.
    tuple: bool,
    to: Option<Ident>,
    handler: Ident,
    /// The handler's parameters after `&self` that are not state fields: the command variant's
    /// fields, by name.
    fields: Vec<Ident>,
    /// All the handler's parameters after `&self`, in order: the call's arguments.
    args: Vec<Ident>,
}

/// A state field a handler binds: `field`, or `field: name` to give it another parameter name
/// (when the command has a field of the same name).
#[derive(Clone)]
struct StateField {
    field: Ident,
    binding: Ident,
}

impl syn::parse::Parse for StateField {
    fn parse(input: syn::parse::ParseStream<'_>) -> syn::Result<Self> {
        let field: Ident = input.parse()?;
        let binding = if input.peek(syn::Token![:]) {
            input.parse::<syn::Token![:]>()?;
            input.parse()?
        } else {
            field.clone()
        };
        Ok(Self { field, binding })
    }
}

/// `State`, `State { field, .. }` or `State { field: name }` in `from = ...`.
fn parse_state(input: syn::parse::ParseStream<'_>) -> syn::Result<(Ident, Vec<StateField>)> {
    let state: Ident = input.parse()?;
    let mut fields = Vec::new();
    if input.peek(syn::token::Brace) {
        let content;
        syn::braced!(content in input);
        fields.extend(
            content.parse_terminated(<StateField as syn::parse::Parse>::parse, syn::Token![,])?,
        );
    }
    Ok((state, fields))
}

fn parse(ctxt: &Ctxt, mut item: ItemImpl) -> Model {
    if let Some((_, path, _)) = &item.trait_ {
        ctxt.error_spanned_by(
            path,
            "`#[transitions]` goes on the inherent impl block of the state type (`impl Order`), not on a trait impl",
        );
    }
    let state_ident = match &*item.self_ty {
        syn::Type::Path(path) => path.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    if state_ident.is_none() {
        ctxt.error_spanned_by(
            &item.self_ty,
            "`#[transitions]` expects the name of the state type here",
        );
    }
    let state_path = match &*item.self_ty {
        syn::Type::Path(path) if path.qself.is_none() => {
            let mut path = path.path.clone();
            for segment in &mut path.segments {
                segment.arguments = syn::PathArguments::None;
            }
            path.to_token_stream()
        }
        _ => quote!(Self),
    };
    let mut model = Model {
        state_path,
        item: item.clone(),
        state_ident,
        transitions: Vec::new(),
        evolve: None,
        decide: None,
    };
    let mut kept = Vec::new();
    for impl_item in std::mem::take(&mut item.items) {
        match impl_item {
            ImplItem::Fn(mut method) => {
                let attrs = take_transition_attrs(&mut method.attrs);
                let name = method.sig.ident.to_string();
                if name == "evolve" || name == "decide" {
                    for attr in &attrs {
                        ctxt.error_spanned_by(
                            attr,
                            format!("`#[transition]` marks a command handler; `{name}` is not one"),
                        );
                    }
                    if name == "evolve" {
                        model.evolve = Some(method);
                    } else {
                        model.decide = Some(method);
                    }
                    continue;
                }
                if !attrs.is_empty() {
                    // The framework fixes a handler's shape: `&self` even when the state does
                    // not matter, a `Result` even when it cannot fail, state fields by reference.
                    method.attrs.push(syn::parse_quote!(
                        #[allow(
                            clippy::unused_self,
                            clippy::unnecessary_wraps,
                            clippy::needless_pass_by_value,
                            clippy::trivially_copy_pass_by_ref
                        )]
                    ));
                    let fields = handler_fields(ctxt, &method);
                    for attr in &attrs {
                        model.transitions.push(parse_transition(
                            ctxt,
                            attr,
                            &method.sig.ident,
                            &fields,
                        ));
                    }
                }
                kept.push(ImplItem::Fn(method));
            }
            mut other => {
                if let Some(attrs) = item_attrs(&mut other) {
                    for attr in take_transition_attrs(attrs) {
                        ctxt.error_spanned_by(
                            attr,
                            "`#[transition(...)]` belongs on a handler method: `fn submit(&self, ...) -> Result<Vec<Event>, Error>`",
                        );
                    }
                }
                kept.push(other);
            }
        }
    }
    model.item.items = kept;
    model
}

fn item_attrs(item: &mut ImplItem) -> Option<&mut Vec<syn::Attribute>> {
    match item {
        ImplItem::Const(c) => Some(&mut c.attrs),
        ImplItem::Type(t) => Some(&mut t.attrs),
        ImplItem::Macro(m) => Some(&mut m.attrs),
        _ => None,
    }
}

fn take_transition_attrs(attrs: &mut Vec<syn::Attribute>) -> Vec<syn::Attribute> {
    let (taken, kept) = std::mem::take(attrs)
        .into_iter()
        .partition(|a| a.path() == TRANSITION);
    *attrs = kept;
    taken
}

/// `&self` followed by parameters that name the command variant's fields.
fn handler_fields(ctxt: &Ctxt, method: &ImplItemFn) -> Vec<Ident> {
    let mut inputs = method.sig.inputs.iter();
    match inputs.next() {
        Some(syn::FnArg::Receiver(receiver))
            if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(other) => ctxt.error_spanned_by(
            other,
            "a transition handler takes `&self`: it decides from the current state without changing it",
        ),
        None => ctxt.error_spanned_by(
            &method.sig,
            "a transition handler takes `&self`: it decides from the current state without changing it",
        ),
    }
    let mut fields = Vec::new();
    for input in inputs {
        match input {
            syn::FnArg::Typed(typed) => match &*typed.pat {
                syn::Pat::Ident(pat) if pat.by_ref.is_none() && pat.subpat.is_none() => {
                    fields.push(pat.ident.clone());
                }
                other => ctxt.error_spanned_by(
                    other,
                    "a handler parameter binds one field of the command variant by its name: `amount: Cents`",
                ),
            },
            syn::FnArg::Receiver(receiver) => ctxt.error_spanned_by(receiver, "unexpected receiver"),
        }
    }
    fields
}

fn parse_transition(
    ctxt: &Ctxt,
    attr: &syn::Attribute,
    handler: &Ident,
    fields: &[Ident],
) -> TransitionDecl {
    let mut decl = TransitionDecl {
        from: Vec::new(),
        state_fields: Vec::new(),
        on: None,
        tuple: false,
        to: None,
        handler: handler.clone(),
        fields: Vec::new(),
        args: fields.to_vec(),
    };
    let mut from = Attr::<Vec<(Ident, Vec<StateField>)>>::none(ctxt, FROM);
    let mut on = Attr::<(Ident, bool)>::none(ctxt, ON);
    let mut to = Attr::<Ident>::none(ctxt, TO);
    let result = attr.parse_nested_meta(|meta| {
        if meta.path == FROM {
            let value = meta.value()?;
            let states = if value.peek(syn::token::Bracket) {
                let content;
                let bracket = syn::bracketed!(content in value);
                let states = content.parse_terminated(parse_state, syn::Token![,])?;
                if states.is_empty() {
                    ctxt.error_at(bracket.span.join(), "`from = [...]` lists at least one state");
                }
                states.into_iter().collect()
            } else {
                vec![parse_state(value)?]
            };
            from.set(&meta.path, Some(states));
        } else if meta.path == ON {
            let command: Ident = meta.value()?.parse()?;
            let tuple = meta.input.peek(syn::token::Paren);
            if tuple {
                let content;
                syn::parenthesized!(content in meta.input);
                content.parse::<syn::Token![..]>()?;
            }
            on.set(&meta.path, Some((command, tuple)));
        } else if meta.path == TO {
            to.set(&meta.path, Some(meta.value()?.parse()?));
        } else {
            let key = path_name(&meta.path);
            ctxt.error_spanned_by(
                &meta.path,
                format!("unknown key `{key}` in `#[transition(...)]`; expected `from = State`, `on = Command` and `to = State`"),
            );
            if meta.input.peek(syn::Token![=]) {
                meta.value()?.parse::<syn::Expr>()?;
            }
        }
        Ok(())
    });
    let from_given = from.is_given();
    for (state, fields) in from.get().unwrap_or_default() {
        decl.from.push(state);
        decl.state_fields.push(fields);
    }
    if let Some((command, tuple)) = on.get() {
        decl.on = Some(command);
        decl.tuple = tuple;
    }
    decl.to = to.get();
    if let Err(error) = result {
        ctxt.syn_error(error);
    } else {
        let missing = |key: &str, what: &str| {
            ctxt.error_spanned_by(
                attr,
                format!("`#[transition(...)]` needs `{key} = ...`: {what}"),
            );
        };
        if !from_given {
            missing(
                "from",
                "the state(s) the transition leaves, `from = Draft` or `from = [Draft, Submitted]`",
            );
        }
        if decl.on.is_none() {
            missing("on", "the command variant it handles, `on = Submit`");
        }
        if decl.to.is_none() {
            missing("to", "the state its events lead to, `to = Submitted`");
        }
    }
    bind_state_fields(ctxt, &mut decl);
    decl
}

/// Parameters named like a field the `from` state binds take that field; the others are the
/// command's. A bound field no parameter takes is an error at the field.
fn bind_state_fields(ctxt: &Ctxt, decl: &mut TransitionDecl) {
    let handler = &decl.handler;
    for (state, bound) in decl.from.iter().zip(&decl.state_fields) {
        for StateField { binding, .. } in bound {
            if !decl.args.contains(binding) {
                ctxt.error_spanned_by(
                    binding,
                    format!(
                        "`{binding}` is bound from state `{state}`, but `{handler}` has no parameter `{binding}`; add `{binding}: &Type` after `&self`"
                    ),
                );
            }
        }
    }
    decl.fields = decl
        .args
        .iter()
        .filter(|arg| {
            !decl
                .state_fields
                .iter()
                .flatten()
                .any(|f| f.binding == **arg)
        })
        .cloned()
        .collect();
}

// ---------------------------------------------------------------------------------------------
// Validate

fn validate(ctxt: &Ctxt, model: &Model) {
    let self_ty = &model.item.self_ty;
    if model.evolve.is_none() {
        ctxt.error_spanned_by(
            self_ty,
            "this impl block needs `fn evolve(self, event: &Event) -> Self`: the next-state function",
        );
    }
    match (&model.decide, model.transitions.is_empty()) {
        (Some(decide), false) => ctxt.error_spanned_by(
            &decide.sig.ident,
            "a state machine's `decide` is generated from its `#[transition(...)]` handlers: remove this `fn decide`, or the `#[transition]` attributes for a plain aggregate",
        ),
        (None, true) => ctxt.error_spanned_by(
            self_ty,
            "this impl block declares no `#[transition(from = .., on = .., to = ..)]` handler and no `fn decide`: a state machine needs the first, a plain aggregate the second",
        ),
        _ => {}
    }
    let mut seen: BTreeMap<(String, String), &Ident> = BTreeMap::new();
    for transition in &model.transitions {
        let Some(on) = &transition.on else { continue };
        for from in &transition.from {
            let key = (from.to_string(), on.to_string());
            if let Some(first) = seen.get(&key) {
                ctxt.error_spanned_by(
                    from,
                    format!(
                        "duplicate transition: command `{on}` in state `{from}` is already handled by `{first}`; each (state, command) pair has one handler"
                    ),
                );
            } else {
                seen.insert(key, &transition.handler);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expand

fn expand_model(model: &Model) -> TokenStream {
    let item = &model.item;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let evolve = model.evolve.as_ref().map(strip_vis);

    let body = if model.transitions.is_empty() {
        let decide = model.decide.as_ref().map(strip_vis);
        quote! {
            #decide
            #evolve
        }
    } else {
        let Some(state_ident) = &model.state_ident else {
            return fallback(model);
        };
        let alias = command_alias(state_ident);
        let machine = state_machine_items(model, &alias);
        quote! {
            #machine
            #evolve
        }
    };
    let inherent = state_machine_fn(model);
    let checks = command_checks(model);
    quote! {
        #item

        #checks

        #[automatically_derived]
        impl #impl_generics ::cqrs_core::__private::Transitions for #self_ty #where_clause {
            #body
        }

        #inherent
    }
}

/// Compile-time checks against the command enum's `#[derive(Command)]`: every variant has a
/// transition (the derive's constant panics at the first variant without one), and each
/// handler takes its variant's fields (a constant per handler panics at the handler). Constants
/// are evaluated by `cargo check` too; a later one that uses a failed one is not reported again.
fn command_checks(model: &Model) -> Option<TokenStream> {
    let state = model.state_ident.as_ref()?;
    if model.transitions.is_empty() || !model.item.generics.params.is_empty() {
        return None;
    }
    let self_ty = &model.item.self_ty;
    let alias = command_alias(state);
    let variants = format_ident!(
        "__CQRS_COMMAND_VARIANTS_OF_{}",
        state,
        span = Span::call_site()
    );
    let commands = model.commands().into_iter().map(Ident::to_string);
    let handlers = model.transitions.iter().filter_map(|t| {
        let on = t.on.as_ref()?;
        let (on_name, handler) = (on.to_string(), t.handler.to_string());
        let (tuple, fields) = (t.tuple, t.fields.iter().map(Ident::to_string));
        Some(quote_spanned! {t.handler.span()=>
            const _: () = if let ::core::option::Option::Some(message) =
                ::cqrs_core::__private::handler_mismatch(#variants, #on_name, #tuple, #handler, &[#(#fields),*])
            {
                ::core::panic!("{}", message.as_str());
            };
        })
    });
    // All at `#[transitions]`, so that the compiler's note about the failed check is one line.
    let checked = respan(
        quote!(<#alias as ::cqrs_core::__private::CheckedCommands<#self_ty>>::VARIANTS),
        Span::call_site(),
    );
    Some(quote! {
        #[automatically_derived]
        impl ::cqrs_core::__private::HandledCommands for #self_ty {
            const HANDLED: &'static [&'static str] = &[#(#commands),*];
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        const #variants: &[::cqrs_core::CommandVariant] = #checked;

        #(#handlers)*
    })
}

/// `tokens` with every span set to `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let proc_macro2::TokenTree::Group(group) = &token {
                let mut inner =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                inner.set_span(span);
                token = proc_macro2::TokenTree::Group(inner);
            } else {
                token.set_span(span);
            }
            token
        })
        .collect()
}

/// `(State { bound, .. }, Command::On { fields, .. }) => Self::handler(self, args),`.
fn decide_arm(t: &TransitionDecl, state_path: &TokenStream, alias: &Ident) -> TokenStream {
    let Some(on) = &t.on else {
        return TokenStream::new();
    };
    let states = t.from.iter().zip(&t.state_fields).map(|(s, bound)| {
        // Shorthand where the names agree: `field: field` would trip a lint in user code.
        let bound = bound.iter().map(|StateField { field, binding }| {
            if field == binding {
                quote!(#binding)
            } else {
                quote!(#field: #binding)
            }
        });
        quote!(#state_path::#s { #(#bound,)* .. })
    });
    let fields = &t.fields;
    let args = &t.args;
    let handler = &t.handler;
    let call = quote_spanned!(handler.span()=> Self::#handler(self, #(#args),*));
    // The variant path carries the span of `on = ...`, so that a shape mismatch points there.
    // `..`: a field no parameter takes is reported by the check `command_checks` writes,
    // naming the field and its type, rather than by the pattern.
    let alias = Ident::new(&alias.to_string(), on.span());
    let command = if t.tuple {
        // A tuple variant's fields by index (`Pay { 0: amount, .. }`), each index at its
        // parameter, so that `on = Pay(..)` for a struct variant is an error there.
        let indexed = fields.iter().enumerate().map(|(i, field)| {
            let index = syn::Index {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                span: field.span(),
            };
            quote!(#index: #field)
        });
        quote_spanned!(on.span()=> #alias::#on { #(#indexed,)* .. })
    } else {
        quote_spanned!(on.span()=> #alias::#on { #(#fields,)* .. })
    };
    quote! {
        (#(#states)|*, #command) => #call,
    }
}

/// `decide`, `command_name`, `declared_target` and `transition_table` of a state machine.
fn state_machine_items(model: &Model, alias: &Ident) -> TokenStream {
    let state_path = &model.state_path;
    let aggregate = quote!(<Self as ::cqrs_core::__private::Aggregate>);
    let decide_arms = model
        .transitions
        .iter()
        .map(|t| decide_arm(t, state_path, alias));
    let commands = model.commands();
    let target_arms = model.transitions.iter().map(|t| {
        let (Some(on), Some(to)) = (&t.on, &t.to) else {
            return TokenStream::new();
        };
        let states = t.from.iter().map(|s| quote!(#state_path::#s { .. }));
        let to_name = to.to_string();
        quote! {
            (#(#states)|*, #alias::#on { .. }) => ::core::option::Option::Some(#to_name),
        }
    });
    // Names every `to` state with the user's span, so that an unknown one is an error there.
    let targets = model
        .transitions
        .iter()
        .filter_map(|t| t.to.as_ref())
        .map(|to| quote!(#state_path::#to { .. } => {}));
    let name_arms = commands.iter().map(|on| {
        let name = on.to_string();
        quote!(#alias::#on { .. } => #name,)
    });
    // A generic state type cannot be named in the constant that checks the commands (see
    // `command_checks`): there an exhaustive match over the commands the transitions name makes
    // a command variant without any transition an error, though at `#[transitions]`.
    let exhaustive = (!model.item.generics.params.is_empty()).then(|| {
        let arms = commands.iter().map(|on| quote!(#alias::#on { .. } => {}));
        let scrutinee = quote_spanned!(Span::call_site()=> command);
        quote! {
            match #scrutinee {
                #(#arms)*
            }
        }
    });
    quote! {
        fn decide(
            &self,
            command: #aggregate::Command,
        ) -> ::core::result::Result<::std::vec::Vec<#aggregate::Event>, #aggregate::Error> {
            #[allow(unreachable_patterns)]
            match (self, command) {
                #(#decide_arms)*
                (state, command) => ::core::result::Result::Err(
                    ::cqrs_core::__private::invalid_transition::<Self>(state, &command),
                ),
            }
        }

        fn command_name(command: &#aggregate::Command) -> &'static str {
            #exhaustive
            // Not `Command::name`: without the derive, that would be a second error about it.
            #[allow(unreachable_patterns)]
            match command {
                #(#name_arms)*
                _ => ::core::any::type_name::<#aggregate::Command>(),
            }
        }

        fn declared_target(&self, command: &#aggregate::Command) -> ::core::option::Option<&'static str> {
            let _ = |state: &Self| {
                #[allow(unreachable_patterns)]
                match state {
                    #(#targets)*
                    _ => {}
                }
            };
            #[allow(unreachable_patterns)]
            match (self, command) {
                #(#target_arms)*
                _ => ::core::option::Option::None,
            }
        }

        fn transition_table() -> ::core::option::Option<::cqrs_core::__private::StateMachine> {
            ::core::option::Option::Some(Self::state_machine())
        }
    }
}

/// `State::state_machine()`, for state machines.
fn state_machine_fn(model: &Model) -> TokenStream {
    if model.transitions.is_empty() {
        return TokenStream::new();
    }
    let item = &model.item;
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let commands = model.commands().into_iter().map(Ident::to_string);
    let mut table = Vec::new();
    for t in &model.transitions {
        let (Some(on), Some(to)) = (&t.on, &t.to) else {
            continue;
        };
        let (on, to, handler) = (on.to_string(), to.to_string(), t.handler.to_string());
        for from in &t.from {
            let from = from.to_string();
            table.push(quote! {
                ::cqrs_core::__private::Transition { from: #from, on: #on, to: #to, handler: #handler }
            });
        }
    }
    let doc = format!(
        "The transition table of `{}` as data: states, commands, initial state and transitions; \
         render it with `to_mermaid()` / `to_dot()`, check it with `analyze()`.",
        self_ty.to_token_stream().to_string().replace(' ', "")
    );
    quote! {
        #[automatically_derived]
        impl #impl_generics #self_ty #where_clause {
            #[doc = #doc]
            pub fn state_machine() -> ::cqrs_core::__private::StateMachine {
                ::cqrs_core::__private::state_machine::<Self>(
                    &[#(#commands),*],
                    &[#(#table),*],
                )
            }
        }
    }
}

/// Trait impl methods carry no visibility.
fn strip_vis(method: &ImplItemFn) -> ImplItemFn {
    let mut method = method.clone();
    method.vis = syn::Visibility::Inherited;
    method
}

/// The impl block as written (minus the transition attributes) and a `Transitions` impl whose
/// methods are unreachable, so that an error here is the only one.
fn fallback(model: &Model) -> TokenStream {
    let item = &model.item;
    if item.trait_.is_some() {
        return item.to_token_stream();
    }
    let (impl_generics, _, where_clause) = item.generics.split_for_impl();
    let self_ty = &item.self_ty;
    let aggregate = quote!(<Self as ::cqrs_core::__private::Aggregate>);
    quote! {
        #item

        #[automatically_derived]
        impl #impl_generics ::cqrs_core::__private::Transitions for #self_ty #where_clause {
            fn decide(
                &self,
                _: #aggregate::Command,
            ) -> ::core::result::Result<::std::vec::Vec<#aggregate::Event>, #aggregate::Error> {
                ::core::unreachable!("invalid #[transitions] input")
            }

            fn evolve(self, _: &#aggregate::Event) -> Self {
                ::core::unreachable!("invalid #[transitions] input")
            }
        }
    }
}
