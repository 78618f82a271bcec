use cqrs_core::Command;

#[derive(Command)]
struct Deposit {
    amount: u64,
}

#[derive(Command)]
union Raw {
    bits: u64,
}

fn main() {}
