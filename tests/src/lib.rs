//! Shared fixtures of the cross-crate test suites.
#![forbid(unsafe_code)]
