//! `schema.graphql` is exactly what the code serves.

use std::process::Command;

#[test]
fn schema_graphql_matches_the_code() {
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
            .expect("schema.graphql exists");
    let generated = payments_ledger::graphql::sdl();
    assert!(
        checked_in == generated,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql`"
    );
}

#[test]
fn the_schema_command_prints_schema_graphql() {
    let output = Command::new(env!("CARGO_BIN_EXE_payments-ledger"))
        .arg("schema")
        .output()
        .expect("the binary runs");
    assert!(output.status.success());
    let checked_in =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), checked_in);
}
