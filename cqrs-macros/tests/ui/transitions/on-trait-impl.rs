use cqrs_core::transitions;

trait Knock {
    fn knock(&self);
}

struct Door;

#[transitions]
impl Knock for Door {
    fn knock(&self) {}
}

fn main() {}
