//! What every attribute parser shares: keys that may be given once, the text of a path for
//! messages, and skipping the value of an unknown key.

use crate::ctxt::Ctxt;
use crate::symbol::Symbol;
use quote::quote;

/// A key that may be given once in an attribute: the first value is kept, each later one is an
/// error at its path ("`name` is given more than once"), so that every macro reports a repeated
/// key the same way.
pub(crate) struct Attr<'c, T> {
    ctxt: &'c Ctxt,
    name: Symbol,
    value: Option<T>,
    given: bool,
}

impl<'c, T> Attr<'c, T> {
    /// A key not given yet.
    pub(crate) fn none(ctxt: &'c Ctxt, name: Symbol) -> Self {
        Attr {
            ctxt,
            name,
            value: None,
            given: false,
        }
    }

    /// Notes that the key was given at `path`: `true` the first time; later, reports the
    /// repetition at `path` and returns `false`.
    pub(crate) fn first(&mut self, path: &syn::Path) -> bool {
        if self.given {
            let name = self.name;
            self.ctxt
                .error_spanned_by(path, format!("`{name}` is given more than once"));
            return false;
        }
        self.given = true;
        true
    }

    /// The key's value given at `path` (`None`: given, but invalid, already reported).
    pub(crate) fn set(&mut self, path: &syn::Path, value: Option<T>) {
        if self.first(path) {
            self.value = value;
        }
    }

    /// Whether the key was given.
    pub(crate) fn is_given(&self) -> bool {
        self.given
    }

    /// Its value, if given and valid.
    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// `path` as written, for messages: `serde::rename`, not `serde :: rename`.
pub(crate) fn path_name(path: &syn::Path) -> String {
    quote!(#path).to_string().replace(' ', "")
}

/// Consumes the value of an unknown key (`= expr` or `(...)`) so that parsing goes on.
pub(crate) fn skip_value(meta: &syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(syn::Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let _content;
        syn::parenthesized!(_content in meta.input);
    }
    Ok(())
}
