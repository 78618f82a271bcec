//! Compile tests of the macros: `ui/pass/` must compile and run, every other file under `ui/`
//! must fail with exactly the checked-in `.stderr`.
//!
//! The snapshots are taken with the toolchain pinned in `rust-toolchain.toml`; after changing a
//! message, regenerate them with `TRYBUILD=overwrite cargo test -p cqrs-macros --test ui` and
//! read every changed `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/event/*.rs");
    t.compile_fail("tests/ui/aggregate/*.rs");
    t.compile_fail("tests/ui/transitions/*.rs");
    t.compile_fail("tests/ui/command/*.rs");
}
