//! `#[derive(Command)]`: parse -> expand (nothing to validate across variants).
//!
//! Writes `Command` (variant names and fields as data) and the compile-time check that
//! `#[transitions]` asks for: the `CheckedCommands<A>` impl panics, at the span of the first
//! variant the transitions of `A` do not handle, during constant evaluation.

use crate::ctxt::{Ctxt, finish};
use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::{DeriveInput, Fields, Ident, Type, Variant};

/// Entry point.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let ctxt = Ctxt::new();
    let variants = match &input.data {
        syn::Data::Enum(data) => Some(data.variants.iter().collect::<Vec<_>>()),
        syn::Data::Struct(data) => {
            ctxt.error_spanned_by(
                data.struct_token,
                "`Command` can only be derived for an enum, with one variant per command; a plain aggregate's command type needs no derive",
            );
            None
        }
        syn::Data::Union(data) => {
            ctxt.error_spanned_by(
                data.union_token,
                "`Command` can only be derived for an enum, with one variant per command",
            );
            None
        }
    };
    finish(
        ctxt,
        || variants.map_or_else(TokenStream::new, |v| expand(input, &v)),
        TokenStream::new,
    )
}

fn expand(input: &DeriveInput, variants: &[&Variant]) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let described = variants.iter().map(|v| describe(v));
    let names = variants.iter().map(|v| {
        let variant = &v.ident;
        let name = variant.to_string();
        quote!(Self::#variant { .. } => #name,)
    });
    let checks = variants.iter().map(|v| {
        let variant = &v.ident;
        let message = format!(
            "no transition handles `{variant}`; add `#[transition(from = .., on = {variant}{}, to = ..)]`",
            if matches!(v.fields, Fields::Unnamed(_)) { "(..)" } else { "" }
        );
        let name = variant.to_string();
        // The panic carries the variant's span: that is where the compiler reports it.
        quote_spanned! {variant.span()=>
            if !::cqrs_core::__private::handles(
                <__CqrsAggregate as ::cqrs_core::__private::HandledCommands>::HANDLED,
                #name,
            ) {
                ::core::panic!(#message);
            }
        }
    });
    // `CheckedCommands<A>` takes the caller's aggregate as an extra type parameter.
    let mut checked_generics = input.generics.clone();
    checked_generics.params.insert(
        0,
        syn::parse_quote!(__CqrsAggregate: ::cqrs_core::__private::HandledCommands),
    );
    let (checked_impl_generics, _, _) = checked_generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::cqrs_core::Command for #ident #ty_generics #where_clause {
            const VARIANTS: &'static [::cqrs_core::CommandVariant] = &[#(#described),*];

            fn name(&self) -> &'static str {
                match *self {
                    #(#names)*
                }
            }
        }

        #[automatically_derived]
        impl #checked_impl_generics ::cqrs_core::__private::CheckedCommands<__CqrsAggregate>
            for #ident #ty_generics #where_clause
        {
            const VARIANTS: &'static [::cqrs_core::CommandVariant] = {
                #(#checks)*
                <Self as ::cqrs_core::Command>::VARIANTS
            };
        }
    }
}

/// `CommandVariant { name, fields }` for one variant.
fn describe(variant: &Variant) -> TokenStream {
    let name = variant.ident.to_string();
    let fields = match &variant.fields {
        Fields::Unit => quote!(::cqrs_core::CommandFields::Unit),
        Fields::Named(named) => {
            let fields = named.named.iter().map(|field| {
                let name = field
                    .ident
                    .as_ref()
                    .map(Ident::to_string)
                    .unwrap_or_default();
                let ty = type_text(&field.ty);
                quote!(::cqrs_core::CommandField { name: #name, ty: #ty })
            });
            quote!(::cqrs_core::CommandFields::Named(&[#(#fields),*]))
        }
        Fields::Unnamed(unnamed) => {
            let types = unnamed.unnamed.iter().map(|field| type_text(&field.ty));
            quote!(::cqrs_core::CommandFields::Unnamed(&[#(#types),*]))
        }
    };
    quote!(::cqrs_core::CommandVariant { name: #name, fields: #fields })
}

/// A type as a user writes it: `Vec<String>`, not the token printer's `Vec < String >`.
fn type_text(ty: &Type) -> String {
    let spaced = ty.to_token_stream().to_string();
    let chars: Vec<char> = spaced.chars().collect();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '\'');
    let mut text = String::with_capacity(spaced.len());
    for (i, &c) in chars.iter().enumerate() {
        if c != ' ' {
            text.push(c);
            continue;
        }
        let prev = text.chars().last();
        let next = chars.get(i + 1).copied();
        let arrow = next == Some('-') || text.ends_with("->");
        let keep = word(prev) && word(next)
            || matches!(prev, Some(',' | ';' | '+' | '='))
            || matches!(next, Some('+' | '='))
            || arrow;
        if keep {
            text.push(' ');
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::type_text;

    #[test]
    fn types_print_as_written() {
        for (written, expected) in [
            ("Vec<String>", "Vec<String>"),
            ("&'static str", "&'static str"),
            (
                "std::collections::BTreeMap<String, Vec<u8>>",
                "std::collections::BTreeMap<String, Vec<u8>>",
            ),
            ("(u32, bool)", "(u32, bool)"),
            ("[u8; 4]", "[u8; 4]"),
            ("Option<&mut T>", "Option<&mut T>"),
            ("dyn Fn(u8) -> u8", "dyn Fn(u8) -> u8"),
        ] {
            let ty: syn::Type = syn::parse_str(written).expect("a type");
            assert_eq!(type_text(&ty), expected, "{written}");
        }
    }
}
