//! Derive macros of `cqrs-core`. Use them through `cqrs_core` (feature `macros`).
#![forbid(unsafe_code)]
