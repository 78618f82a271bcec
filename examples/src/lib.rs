//! Domains shared by the runnable examples in `examples/examples/` and by the tests that check
//! their output.
#![forbid(unsafe_code)]

pub mod bank_account;
pub mod order_flow;
pub mod order_fulfilment;

/// The code blocks of README.md, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
