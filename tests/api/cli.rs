//! The operator CLI: `client create` prints a working key on its last line; `migrate`
//! and `verify` run against the configured database.

use std::process::Command;

use serde_json::json;

use payments_ledger::{Application, Config};

use crate::helpers::{Backend, TestDatabase, spawn_app};
use crate::on_both_backends;

on_both_backends!(client_create_prints_a_working_key);

/// Instances of a fresh deployment start together: their migrations must not race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_starting_together_migrate_once() {
    let Some(database) = TestDatabase::postgres_empty().await else {
        return;
    };
    let builds = futures::future::join_all(
        (0..4).map(|_| Application::build(Config::for_database(database.url.clone()))),
    )
    .await;
    for build in builds {
        build.expect("every instance starts");
    }
}

pub fn ledger_command(database_url: &str, arguments: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_payments-ledger"))
        .env("DATABASE_URL", database_url)
        .args(arguments)
        .output()
        .expect("the binary runs")
}

async fn client_create_prints_a_working_key(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let url = app.database.url.clone();
    let output =
        tokio::task::spawn_blocking(move || ledger_command(&url, &["client", "create", "acme"]))
            .await
            .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let key = stdout
        .lines()
        .last()
        .expect("a last line")
        .trim()
        .to_owned();
    assert!(key.starts_with("lk_"), "{stdout}");

    let response = app
        .graphql_as(Some(&key), "{ accounts { nodes { id } } }", json!({}))
        .await;
    assert_eq!(
        response["data"]["accounts"]["nodes"],
        json!([]),
        "{response}"
    );

    // A blank name is refused with a message and a failing exit code.
    let url = app.database.url.clone();
    let output =
        tokio::task::spawn_blocking(move || ledger_command(&url, &["client", "create", "  "]))
            .await
            .unwrap();
    assert!(!output.status.success());

    // migrate is idempotent; verify passes on a sound ledger.
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "1.00", "USD").await;
    let url = app.database.url.clone();
    let (migrate, verify) = tokio::task::spawn_blocking(move || {
        (
            ledger_command(&url, &["migrate"]),
            ledger_command(&url, &["verify"]),
        )
    })
    .await
    .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}
