//! `#[derive(Command)]` alone: names and fields as data, generics, every variant shape.
use cqrs_core::{Command, CommandField, CommandFields};

#[derive(Command)]
enum Transfer<T: Clone> {
    Send { to: String, amount: T, memo: Option<&'static str> },
    Batch(Vec<(String, T)>, [u8; 4]),
    Cancel,
}

#[derive(Command)]
enum Nothing {}

fn main() {
    assert_eq!(Transfer::<u64>::Cancel.name(), "Cancel");
    assert_eq!(Transfer::Batch(vec![("a".to_owned(), 1u8)], [0; 4]).name(), "Batch");
    let variants = <Transfer<u64> as Command>::VARIANTS;
    assert_eq!(variants.len(), 3);
    assert_eq!(
        variants[0].fields,
        CommandFields::Named(&[
            CommandField { name: "to", ty: "String" },
            CommandField { name: "amount", ty: "T" },
            CommandField { name: "memo", ty: "Option<&'static str>" },
        ])
    );
    assert_eq!(variants[1].fields, CommandFields::Unnamed(&["Vec<(String, T)>", "[u8; 4]"]));
    assert_eq!(variants[2].fields, CommandFields::Unit);
    assert!(<Nothing as Command>::VARIANTS.is_empty());
}
