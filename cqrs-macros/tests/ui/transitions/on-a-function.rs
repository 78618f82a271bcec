use cqrs_core::transitions;

#[transitions]
fn open_door() {}

fn main() {}
