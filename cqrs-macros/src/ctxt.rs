//! Error accumulation: every check records its error here and goes on, so that one expansion
//! reports every mistake at once, each at its own tokens.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::cell::RefCell;
use std::fmt::Display;

/// Collects `syn::Error`s; [`Ctxt::check`] merges them into one. Dropping a context that was
/// never checked is a bug in this crate (an expansion that returned early would lose its
/// errors), so it panics, as `serde_derive`'s does.
pub(crate) struct Ctxt {
    errors: RefCell<Vec<syn::Error>>,
    checked: std::cell::Cell<bool>,
}

impl Drop for Ctxt {
    fn drop(&mut self) {
        assert!(
            self.checked.get() || std::thread::panicking(),
            "cqrs-macros: an error context was dropped without being checked"
        );
    }
}

impl Ctxt {
    pub(crate) fn new() -> Self {
        Ctxt {
            errors: RefCell::new(Vec::new()),
            checked: std::cell::Cell::new(false),
        }
    }

    /// Records an error at the span of `tokens`.
    pub(crate) fn error_spanned_by<T: ToTokens, M: Display>(&self, tokens: T, message: M) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    /// Records an error at `span`.
    pub(crate) fn error_at<M: Display>(&self, span: proc_macro2::Span, message: M) {
        self.errors
            .borrow_mut()
            .push(syn::Error::new(span, message));
    }

    /// Records a parse error.
    pub(crate) fn syn_error(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    /// All recorded errors combined into one, if any.
    pub(crate) fn check(self) -> Result<(), syn::Error> {
        self.checked.set(true);
        let mut errors = self.errors.take().into_iter();
        let Some(mut combined) = errors.next() else {
            return Ok(());
        };
        for error in errors {
            combined.combine(error);
        }
        Err(combined)
    }
}

/// The expansion, or the errors next to a minimal `fallback` impl, so that users see the
/// errors in their input and not a cascade of "trait not implemented" after them.
pub(crate) fn finish(
    ctxt: Ctxt,
    expand: impl FnOnce() -> TokenStream,
    fallback: impl FnOnce() -> TokenStream,
) -> TokenStream {
    match ctxt.check() {
        Ok(()) => expand(),
        Err(error) => {
            let mut tokens = error.to_compile_error();
            tokens.extend(fallback());
            tokens
        }
    }
}
