//! `#[derive(DomainEvent)]`: parse -> validate -> expand.

use crate::attr::{Attr, path_name, skip_value};
use crate::ctxt::{Ctxt, finish};
use crate::symbol::{
    DESERIALIZE, EVENT, FROM, JSON_SCHEMA, NAME, RENAME, SERDE, UPCAST, VERSION, WITH,
};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use std::collections::{BTreeMap, BTreeSet};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident, LitInt, LitStr, Type};

/// Entry point.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let ctxt = Ctxt::new();
    let model = parse(&ctxt, input);
    if let Some(model) = &model {
        validate(&ctxt, model);
    }
    // A union can never be an event: a fallback impl would only add errors about its bounds.
    let is_union = matches!(input.data, syn::Data::Union(_));
    finish(
        ctxt,
        || model.as_ref().map_or_else(|| fallback(input), expand),
        || {
            if is_union {
                TokenStream::new()
            } else {
                fallback(input)
            }
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Parse

/// The derive input, as far as the event schema is concerned.
struct EventEnum<'a> {
    input: &'a DeriveInput,
    variants: Vec<EventVariant<'a>>,
    /// `#[event(json_schema)]`: implement `EventJsonSchemas` too.
    json_schema: bool,
}

struct EventVariant<'a> {
    ident: &'a Ident,
    /// The stored type name and the token to blame for it.
    name: (String, Span),
    /// The serde name of the variant (`#[serde(rename)]` or the ident).
    serde_name: String,
    /// Current schema version and its literal, if written.
    version: (u32, Option<LitInt>),
    upcasts: Vec<Upcast>,
    /// Its `#[personal]` fields.
    personal: Vec<crate::personal::PersonalField>,
}

struct Upcast {
    /// The whole `upcast(...)` for errors about it.
    span: Span,
    from: Option<(u32, LitInt)>,
    with: Option<Type>,
}

fn parse<'a>(ctxt: &Ctxt, input: &'a DeriveInput) -> Option<EventEnum<'a>> {
    let json_schema = parse_container(ctxt, input);
    check_serde_representation(ctxt, input);
    let data = match &input.data {
        syn::Data::Enum(data) => data,
        syn::Data::Struct(data) => {
            ctxt.error_spanned_by(
                data.struct_token,
                "`DomainEvent` can only be derived for an enum, with one variant per kind of event; wrap this struct in an enum variant",
            );
            return None;
        }
        syn::Data::Union(data) => {
            ctxt.error_spanned_by(
                data.union_token,
                "`DomainEvent` can only be derived for an enum, with one variant per kind of event",
            );
            return None;
        }
    };
    let variants = data
        .variants
        .iter()
        .map(|variant| parse_variant(ctxt, variant))
        .collect();
    Some(EventEnum {
        input,
        variants,
        json_schema,
    })
}

/// `#[event(json_schema)]` on the enum: whether it asks for JSON Schemas. Any other key there
/// belongs on a variant.
fn parse_container(ctxt: &Ctxt, input: &DeriveInput) -> bool {
    let mut json_schema = Attr::<()>::none(ctxt, JSON_SCHEMA);
    for attr in input.attrs.iter().filter(|a| a.path() == EVENT) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path == JSON_SCHEMA {
                json_schema.set(&meta.path, Some(()));
            } else {
                let key = path_name(&meta.path);
                ctxt.error_spanned_by(
                    &meta.path,
                    format!(
                        "`{key}` belongs on a variant of the event enum, not on the enum itself; on the enum, `#[event(...)]` takes only `json_schema`"
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            ctxt.syn_error(error);
        }
    }
    json_schema.get().is_some()
}

fn parse_variant<'a>(ctxt: &Ctxt, variant: &'a syn::Variant) -> EventVariant<'a> {
    for field in &variant.fields {
        for attr in field.attrs.iter().filter(|a| a.path() == EVENT) {
            ctxt.error_spanned_by(
                attr,
                "`#[event(...)]` belongs on a variant of the event enum, not on one of its fields",
            );
        }
    }
    let mut name = Attr::<LitStr>::none(ctxt, NAME);
    let mut version = Attr::<(u32, LitInt)>::none(ctxt, VERSION);
    let mut upcasts = Vec::new();
    for attr in variant.attrs.iter().filter(|a| a.path() == EVENT) {
        let result = attr.parse_nested_meta(|meta| {
            if meta.path == NAME {
                let lit: LitStr = meta.value()?.parse()?;
                if lit.value().is_empty() {
                    ctxt.error_spanned_by(&lit, "an event type name cannot be empty");
                }
                name.set(&meta.path, Some(lit));
            } else if meta.path == VERSION {
                let parsed = parse_version(ctxt, &meta.value()?.parse()?);
                version.set(&meta.path, parsed);
            } else if meta.path == UPCAST {
                upcasts.push(parse_upcast(ctxt, &meta)?);
            } else {
                let key = path_name(&meta.path);
                ctxt.error_spanned_by(
                    &meta.path,
                    format!(
                        "unknown key `{key}` in `#[event(...)]`; expected `name = \"...\"`, `version = N` or `upcast(from = N, with = Type)`"
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            ctxt.syn_error(error);
        }
    }
    let ident = &variant.ident;
    let (name, version) = (name.get(), version.get());
    EventVariant {
        ident,
        name: name.map_or_else(
            || (ident.to_string(), ident.span()),
            |lit| (lit.value(), lit.span()),
        ),
        serde_name: serde_rename(variant).unwrap_or_else(|| ident.to_string()),
        version: version.map_or((1, None), |(v, lit)| (v, Some(lit))),
        upcasts,
        personal: crate::personal::parse(ctxt, variant),
    }
}

/// `upcast(from = N, with = Type)`.
fn parse_upcast(ctxt: &Ctxt, meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<Upcast> {
    let mut from = Attr::<(u32, LitInt)>::none(ctxt, FROM);
    let mut with = Attr::<Type>::none(ctxt, WITH);
    meta.parse_nested_meta(|inner| {
        if inner.path == FROM {
            let parsed = parse_version(ctxt, &inner.value()?.parse()?);
            from.set(&inner.path, parsed);
        } else if inner.path == WITH {
            with.set(&inner.path, Some(inner.value()?.parse()?));
        } else {
            let key = path_name(&inner.path);
            ctxt.error_spanned_by(
                &inner.path,
                format!("unknown key `{key}` in `upcast(...)`; expected `from = N, with = Type`"),
            );
            skip_value(&inner)?;
        }
        Ok(())
    })?;
    let upcast = Upcast {
        span: meta.path.span(),
        from: from.get(),
        with: with.get(),
    };
    if upcast.from.is_none() {
        ctxt.error_at(
            upcast.span,
            "`upcast` needs `from = N`: the old schema version this type reads",
        );
    }
    if upcast.with.is_none() {
        ctxt.error_at(
            upcast.span,
            "`upcast` needs `with = Type`: the serde type of the old version, convertible into the next version with `Into`",
        );
    }
    Ok(upcast)
}

/// A schema version: an integer literal of at least 1.
fn parse_version(ctxt: &Ctxt, expr: &syn::Expr) -> Option<(u32, LitInt)> {
    let lit = match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(lit),
            ..
        }) => lit,
        other => {
            ctxt.error_spanned_by(
                other,
                "a schema version is an integer literal, starting at 1: `version = 2`",
            );
            return None;
        }
    };
    match lit.base10_parse::<u32>() {
        Ok(0) => {
            ctxt.error_spanned_by(lit, "schema versions start at 1");
            None
        }
        Ok(version) => Some((version, lit.clone())),
        Err(_) => {
            ctxt.error_spanned_by(lit, "a schema version must fit in a `u32`");
            None
        }
    }
}

/// The stored body is the variant's content under serde's default (externally tagged)
/// representation; container attributes that change how variants are named or tagged would make
/// `decode` look for the wrong variant at run time, so they are compile errors here.
fn check_serde_representation(ctxt: &Ctxt, input: &DeriveInput) {
    for attr in input.attrs.iter().filter(|a| a.path() == SERDE) {
        let Ok(list) = attr.parse_args_with(
            syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
        ) else {
            continue;
        };
        for meta in list {
            let path = meta.path();
            if ["tag", "content", "untagged", "rename_all"]
                .iter()
                .any(|key| path.is_ident(key))
            {
                let key = path_name(path);
                ctxt.error_spanned_by(
                    path,
                    format!(
                        "`#[serde({key})]` changes how variants are tagged or named, and `DomainEvent` bodies rely on serde's default enum representation; the stored type name comes from `#[event(name = \"...\")]` instead"
                    ),
                );
            }
        }
    }
}

/// `#[serde(rename = "...")]` (or `rename(deserialize = "...")`) on a variant.
fn serde_rename(variant: &syn::Variant) -> Option<String> {
    let mut rename = None;
    for attr in variant.attrs.iter().filter(|a| a.path() == SERDE) {
        let Ok(list) = attr.parse_args_with(
            syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated,
        ) else {
            continue;
        };
        for meta in list {
            match meta {
                syn::Meta::NameValue(nv) if nv.path == RENAME => {
                    if let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) = nv.value
                    {
                        rename = Some(s.value());
                    }
                }
                syn::Meta::List(list) if list.path == RENAME => {
                    let _ = list.parse_nested_meta(|inner| {
                        if inner.path == DESERIALIZE {
                            let s: LitStr = inner.value()?.parse()?;
                            rename = Some(s.value());
                        } else {
                            inner.value()?.parse::<LitStr>()?;
                        }
                        Ok(())
                    });
                }
                _ => {}
            }
        }
    }
    rename
}

// ---------------------------------------------------------------------------------------------
// Validate

fn validate(ctxt: &Ctxt, model: &EventEnum<'_>) {
    let mut names: BTreeMap<&str, &Ident> = BTreeMap::new();
    for variant in &model.variants {
        if let Some(first) = names.get(variant.name.0.as_str()) {
            ctxt.error_at(
                variant.name.1,
                format!(
                    "duplicate event type name `{}`: variant `{first}` already uses it; give one of them `#[event(name = \"...\")]`",
                    variant.name.0
                ),
            );
        } else {
            names.insert(&variant.name.0, variant.ident);
        }
        validate_chain(ctxt, variant);
    }
}

/// The upcasts of a variant at version `v` must read exactly the versions `1..v`, each once.
fn validate_chain(ctxt: &Ctxt, variant: &EventVariant<'_>) {
    let (current, current_lit) = (variant.version.0, &variant.version.1);
    let mut seen: BTreeSet<u32> = BTreeSet::new();
    for upcast in &variant.upcasts {
        let Some((from, lit)) = &upcast.from else {
            continue;
        };
        if *from >= current {
            ctxt.error_spanned_by(
                lit,
                format!(
                    "an upcast reads an older version: `from = {from}` must be below the current version {current} of `{}`",
                    variant.ident
                ),
            );
        } else if !seen.insert(*from) {
            ctxt.error_spanned_by(lit, format!("version {from} is upcast twice"));
        }
    }
    if variant.upcasts.iter().any(|u| u.from.is_none()) {
        return;
    }
    let missing: Vec<u32> = (1..current).filter(|v| !seen.contains(v)).collect();
    if !missing.is_empty() {
        let list = missing
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "the upcast chain of `{}` has a gap: version {current} needs an upcast from every older version, and there is none from version {list}; add `upcast(from = {}, with = OldType)`",
            variant.ident, missing[0]
        );
        match current_lit {
            Some(version) => ctxt.error_spanned_by(version, message),
            None => ctxt.error_spanned_by(variant.ident, message),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expand

fn expand(model: &EventEnum<'_>) -> TokenStream {
    let input = model.input;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();

    let event_type_arms = model.variants.iter().map(|v| {
        let (variant, name) = (v.ident, &v.name.0);
        quote!(Self::#variant { .. } => #name,)
    });
    let version_arms = model.variants.iter().map(|v| {
        let (variant, version) = (v.ident, v.version.0);
        quote!(Self::#variant { .. } => #version,)
    });
    let decode_arms = model.variants.iter().map(decode_arm);
    let catalog = model.variants.iter().map(|v| {
        let (name, version) = (&v.name.0, v.version.0);
        let readable = 1..=version;
        let personal = crate::personal::table(&v.personal);
        quote! {
            ::cqrs_core::__private::EventSchema {
                name: #name,
                version: #version,
                readable_versions: &[#(#readable),*],
                personal: #personal,
            }
        }
    });
    let personal_fields = personal_fields(model);
    let json_schemas = json_schemas(model);
    let (event_type, schema_version) = if model.variants.is_empty() {
        (quote!(match *self {}), quote!(match *self {}))
    } else {
        (
            quote!(match self { #(#event_type_arms)* }),
            quote!(match self { #(#version_arms)* }),
        )
    };

    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::__private::DomainEvent for #ident #ty_generics #where_clause {
            fn event_type(&self) -> &'static str {
                #event_type
            }

            fn schema_version(&self) -> u32 {
                #schema_version
            }

            fn encode(&self) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                ::cqrs_core::__private::EncodeError,
            > {
                ::cqrs_core::__private::encode_variant(
                    ::cqrs_core::__private::DomainEvent::event_type(self),
                    self,
                )
            }

            fn decode(
                event_type: &str,
                schema_version: u32,
                body: &[u8],
            ) -> ::core::result::Result<Self, ::cqrs_core::__private::DecodeError> {
                match event_type {
                    #(#decode_arms)*
                    _ => ::core::result::Result::Err(
                        ::cqrs_core::__private::DecodeError::UnknownEventType {
                            event_type: ::std::borrow::ToOwned::to_owned(event_type),
                        },
                    ),
                }
            }

            fn catalog() -> &'static [::cqrs_core::__private::EventSchema] {
                &[#(#catalog),*]
            }

            #personal_fields
        }

        #json_schemas
    }
}

/// `EventJsonSchemas`, for `#[event(json_schema)]`: each variant's current version from the
/// enum's own schema, each older version from the type its upcast reads.
fn json_schemas(model: &EventEnum<'_>) -> TokenStream {
    if !model.json_schema {
        return TokenStream::new();
    }
    let ident = &model.input.ident;
    let (impl_generics, ty_generics, where_clause) = model.input.generics.split_for_impl();
    let current = model.variants.iter().map(|v| {
        let (name, version, serde_name) = (&v.name.0, v.version.0, &v.serde_name);
        let personal = crate::personal::table(&v.personal);
        quote! {
            ::cqrs_core::schema::EventJsonSchema {
                event_type: #name,
                version: #version,
                schema: variants.schema(#name, #version, #serde_name, #personal),
            }
        }
    });
    let older = model.variants.iter().flat_map(|v| {
        let name = &v.name.0;
        let personal = crate::personal::table(&v.personal);
        v.upcasts.iter().filter_map(move |u| {
            let (from, ty) = (u.from.as_ref()?.0, u.with.as_ref()?);
            Some(quote_spanned! {ty.span()=>
                ::cqrs_core::schema::EventJsonSchema {
                    event_type: #name,
                    version: #from,
                    schema: ::cqrs_core::schema::of_type::<#ty>(#name, #from, #personal),
                }
            })
        })
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::schema::EventJsonSchemas for #ident #ty_generics #where_clause {
            fn json_schemas() -> ::std::vec::Vec<::cqrs_core::schema::EventJsonSchema> {
                let variants = ::cqrs_core::schema::Variants::of::<Self>();
                ::std::vec![#(#current,)* #(#older,)*]
            }
        }
    }
}

/// `personal_fields`, when a variant has `#[personal]` fields (the trait's default says none).
fn personal_fields(model: &EventEnum<'_>) -> TokenStream {
    if model.variants.iter().all(|v| v.personal.is_empty()) {
        return TokenStream::new();
    }
    let arms = model.variants.iter().map(|v| {
        let (variant, table) = (v.ident, crate::personal::table(&v.personal));
        quote!(Self::#variant { .. } => #table,)
    });
    quote! {
        fn personal_fields(&self) -> &'static [::cqrs_core::__private::PersonalField] {
            match self { #(#arms)* }
        }
    }
}

/// `"Name" => match schema_version { current, each upcast, otherwise unsupported }`.
fn decode_arm(variant: &EventVariant<'_>) -> TokenStream {
    let name = &variant.name.0;
    let serde_name = &variant.serde_name;
    let current = variant.version.0;
    let readable = 1..=current;
    // Upcasts sorted by the version they read; validation made them exactly 1..current.
    let mut chain: Vec<(u32, &Type)> = variant
        .upcasts
        .iter()
        .filter_map(|u| Some((u.from.as_ref()?.0, u.with.as_ref()?)))
        .collect();
    chain.sort_by_key(|(from, _)| *from);
    let upcast_arms = chain.iter().enumerate().map(|(i, (from, ty))| {
        // Read as `ty`, then step through each newer type up to the current variant.
        let mut steps = Vec::new();
        let mut previous = *ty;
        for (_, next) in &chain[i + 1..] {
            steps.push(quote_spanned! {previous.span()=>
                let value: #next = ::core::convert::Into::<#next>::into(value);
            });
            previous = next;
        }
        let read = quote_spanned! {ty.span()=>
            let value: #ty = ::cqrs_core::__private::decode_body::<#ty>(event_type, schema_version, body)?;
        };
        let last = quote_spanned! {previous.span()=>
            ::core::result::Result::Ok(::core::convert::Into::<Self>::into(value))
        };
        quote! {
            #from => {
                #read
                #(#steps)*
                #last
            }
        }
    });
    quote! {
        #name => match schema_version {
            #current => ::cqrs_core::__private::decode_variant::<Self>(
                #serde_name, event_type, schema_version, body,
            ),
            #(#upcast_arms)*
            _ => ::core::result::Result::Err(
                ::cqrs_core::__private::DecodeError::UnsupportedVersion {
                    event_type: ::std::borrow::ToOwned::to_owned(event_type),
                    version: schema_version,
                    readable: ::std::vec![#(#readable),*],
                },
            ),
        },
    }
}

/// A minimal impl, emitted next to the errors of invalid input.
fn fallback(input: &DeriveInput) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::__private::DomainEvent for #ident #ty_generics #where_clause {
            fn event_type(&self) -> &'static str {
                ::core::unreachable!("invalid #[derive(DomainEvent)] input")
            }
            fn schema_version(&self) -> u32 {
                ::core::unreachable!("invalid #[derive(DomainEvent)] input")
            }
            fn encode(&self) -> ::core::result::Result<
                ::std::vec::Vec<u8>,
                ::cqrs_core::__private::EncodeError,
            > {
                ::core::unreachable!("invalid #[derive(DomainEvent)] input")
            }
            fn decode(
                _: &str,
                _: u32,
                _: &[u8],
            ) -> ::core::result::Result<Self, ::cqrs_core::__private::DecodeError> {
                ::core::unreachable!("invalid #[derive(DomainEvent)] input")
            }
            fn catalog() -> &'static [::cqrs_core::__private::EventSchema] {
                &[]
            }
        }
    }
}
