//! `#[personal(subject = field, replacement = value)]` on the fields of a `DomainEvent` variant:
//! parse and validate into the static `PersonalField` table the derive emits.

use crate::attr::{Attr, path_name, skip_value};
use crate::ctxt::Ctxt;
use crate::symbol::{PERSONAL, RENAME, REPLACEMENT, SERDE, SUBJECT};
use proc_macro2::TokenStream;
use quote::quote;
use syn::{Expr, Ident, Lit};

/// One personal field of a variant, validated.
pub(crate) struct PersonalField {
    /// The field's name in the stored body.
    field: String,
    /// The subject field's name in the stored body.
    subject: String,
    /// The replacement as JSON text.
    replacement: String,
}

/// The personal fields of `variant`, every misuse reported on `ctxt`.
pub(crate) fn parse(ctxt: &Ctxt, variant: &syn::Variant) -> Vec<PersonalField> {
    let named = matches!(variant.fields, syn::Fields::Named(_));
    let mut declared = Vec::new();
    for field in &variant.fields {
        for (i, attr) in field
            .attrs
            .iter()
            .filter(|a| a.path() == PERSONAL)
            .enumerate()
        {
            if i > 0 {
                ctxt.error_spanned_by(
                    attr,
                    "`#[personal]` is given more than once on this field; one attribute says it all",
                );
                continue;
            }
            if !named {
                ctxt.error_spanned_by(
                    attr,
                    "`#[personal]` marks a named field, so that the stored body names it; give the variant named fields",
                );
                continue;
            }
            if let Some(parsed) = parse_attr(ctxt, attr, field) {
                declared.push(parsed);
            }
        }
    }
    declared
        .into_iter()
        .filter_map(|(field, subject, replacement)| {
            validate(ctxt, variant, field, &subject)?;
            Some(PersonalField {
                field: body_name(field),
                subject: variant
                    .fields
                    .iter()
                    .find(|f| f.ident.as_ref() == Some(&subject))
                    .map_or_else(|| subject.to_string(), body_name),
                replacement,
            })
        })
        .collect()
}

type Declared<'a> = (&'a syn::Field, Ident, String);

/// `subject = field, replacement = value` of one attribute.
fn parse_attr<'a>(
    ctxt: &Ctxt,
    attr: &syn::Attribute,
    field: &'a syn::Field,
) -> Option<Declared<'a>> {
    let mut subject = Attr::<Ident>::none(ctxt, SUBJECT);
    let mut replacement = Attr::<String>::none(ctxt, REPLACEMENT);
    let result = attr.parse_nested_meta(|meta| {
        if meta.path == SUBJECT {
            subject.set(&meta.path, Some(meta.value()?.parse()?));
        } else if meta.path == REPLACEMENT {
            let expr: Expr = meta.value()?.parse()?;
            let json = replacement_json(&expr);
            if json.is_none() {
                ctxt.error_spanned_by(
                    &expr,
                    "a replacement is a literal the field decodes from once its subject is forgotten: a string, a number, `true`/`false`, or `None` for an `Option`",
                );
            }
            replacement.set(&meta.path, json);
        } else {
            let key = path_name(&meta.path);
            ctxt.error_spanned_by(
                &meta.path,
                format!(
                    "unknown key `{key}` in `#[personal(...)]`; expected `subject = field` and `replacement = value`"
                ),
            );
            skip_value(&meta)?;
        }
        Ok(())
    });
    if let Err(error) = result {
        ctxt.syn_error(error);
        return None;
    }
    let replacement_given = replacement.is_given();
    let replacement = match replacement.get() {
        Some(json) => json,
        None if replacement_given => return None,
        None if is_option(&field.ty) => "null".to_owned(),
        None => {
            ctxt.error_spanned_by(
                attr,
                "`#[personal]` needs `replacement = value`: what this field reads as once its subject is forgotten (only an `Option` field may leave it out and read as `None`)",
            );
            return None;
        }
    };
    let Some(subject) = subject.get() else {
        ctxt.error_spanned_by(
            attr,
            "`#[personal]` needs `subject = field`: the field of this variant that identifies the person the data belongs to",
        );
        return None;
    };
    Some((field, subject, replacement))
}

/// The subject must be another field of the variant, readable (not personal itself).
fn validate(
    ctxt: &Ctxt,
    variant: &syn::Variant,
    field: &syn::Field,
    subject: &Ident,
) -> Option<()> {
    let Some(subject_field) = variant
        .fields
        .iter()
        .find(|f| f.ident.as_ref() == Some(subject))
    else {
        ctxt.error_spanned_by(
            subject,
            format!(
                "`{subject}` is not a field of `{}`; `subject` names the field that identifies the person the data belongs to",
                variant.ident
            ),
        );
        return None;
    };
    if std::ptr::eq(subject_field, field) {
        ctxt.error_spanned_by(
            subject,
            "a field cannot be its own subject: the subject must stay readable to find the key; name the field that identifies the person",
        );
        return None;
    }
    if subject_field.attrs.iter().any(|a| a.path() == PERSONAL) {
        ctxt.error_spanned_by(
            subject,
            format!(
                "the subject field `{subject}` is itself `#[personal]`; it must stay readable to find the key"
            ),
        );
        return None;
    }
    Some(())
}

/// The JSON text of a replacement literal.
fn replacement_json(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Lit(lit) => match &lit.lit {
            Lit::Str(s) => serde_json::to_string(&s.value()).ok(),
            Lit::Int(i) => Some(i.base10_parse::<i128>().ok()?.to_string()),
            Lit::Float(f) => {
                let value = f.base10_parse::<f64>().ok()?;
                serde_json::to_string(&serde_json::Number::from_f64(value)?).ok()
            }
            Lit::Bool(b) => Some(b.value.to_string()),
            _ => None,
        },
        Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Neg(_),
            expr,
            ..
        }) => {
            let positive = replacement_json(expr)?;
            positive
                .starts_with(|c: char| c.is_ascii_digit())
                .then(|| format!("-{positive}"))
        }
        Expr::Path(path) if path.path.is_ident("None") => Some("null".to_owned()),
        _ => None,
    }
}

/// Whether `ty` is written `Option<..>` (by any path ending in `Option`).
fn is_option(ty: &syn::Type) -> bool {
    matches!(ty, syn::Type::Path(p) if p.path.segments.last().is_some_and(|s| s.ident == "Option"))
}

/// A field's name in the stored body: its `#[serde(rename)]` or its ident.
fn body_name(field: &syn::Field) -> String {
    let mut name = field
        .ident
        .as_ref()
        .map(Ident::to_string)
        .unwrap_or_default();
    for attr in field.attrs.iter().filter(|a| a.path() == SERDE) {
        let _ = attr.parse_nested_meta(|meta| {
            if meta.path == RENAME && meta.input.peek(syn::Token![=]) {
                name = meta.value()?.parse::<syn::LitStr>()?.value();
                Ok(())
            } else {
                skip_value(&meta)
            }
        });
    }
    name
}

/// The `&[PersonalField { .. }]` of one variant.
pub(crate) fn table(fields: &[PersonalField]) -> TokenStream {
    let entries = fields.iter().map(|f| {
        let (field, subject, replacement) = (&f.field, &f.subject, &f.replacement);
        quote! {
            ::cqrs_core::__private::PersonalField {
                field: #field,
                subject: #subject,
                replacement: #replacement,
            }
        }
    });
    quote!(&[#(#entries),*])
}
