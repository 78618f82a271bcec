use cqrs_core::transitions;

// Both mistakes are reported: the arguments and the item.
#[transitions(strict)]
fn open_door() {}

fn main() {}
