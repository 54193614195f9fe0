//! The `vmprim` command.
fn main() {}
