//! API keys: a client holds several (to rotate them), a revoked key stops working, and
//! a made-up key does not cost a database query per request.

use serde_json::{Value, json};

use crate::cli::ledger_command;
use crate::helpers::{AppOptions, Backend, TestApp, error_code, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(keys_rotate_and_a_revoked_key_stops_working);

/// Runs the CLI against the test's database: its stdout, or its stderr if it failed.
async fn cli(app: &TestApp, arguments: &[&str]) -> Result<String, String> {
    let url = app.database.url.clone();
    let arguments: Vec<String> = arguments
        .iter()
        .map(|&argument| argument.to_owned())
        .collect();
    let output = tokio::task::spawn_blocking(move || {
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        ledger_command(&url, &arguments)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

async fn accounts_as(app: &TestApp, key: &str) -> Value {
    app.graphql_as(Some(key), "{ accounts { nodes { id } } }", json!({}))
        .await
}

async fn keys_rotate_and_a_revoked_key_stops_working(backend: Backend) {
    let options = AppOptions {
        api_key_cache_seconds: Some(0),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let client_id = app.client_id.to_string();
    let old_key = app.api_key.clone();
    let added = cli(&app, &["client", "add-key", &client_id]).await.unwrap();
    let new_key = added.lines().last().unwrap().trim().to_owned();
    assert!(new_key.starts_with("lk_") && new_key != old_key, "{added}");
    for key in [&old_key, &new_key] {
        let response = accounts_as(&app, key).await;
        assert_eq!(
            response["data"]["accounts"]["nodes"],
            json!([]),
            "{response}"
        );
    }
    let listed = cli(&app, &["client", "keys", &client_id]).await.unwrap();
    assert_eq!(
        listed
            .lines()
            .filter(|line| line.ends_with("active"))
            .count(),
        2,
        "{listed}"
    );
    assert!(
        !listed.contains("lk_"),
        "keys are never shown again: {listed}"
    );

    cli(&app, &["client", "revoke-key", &old_key])
        .await
        .unwrap();
    let refused = accounts_as(&app, &old_key).await;
    assert_eq!(error_code(&refused), Some("UNAUTHENTICATED"), "{refused}");
    let still = accounts_as(&app, &new_key).await;
    assert_eq!(still["data"]["accounts"]["nodes"], json!([]), "{still}");

    let error = cli(&app, &["client", "revoke-key", &old_key])
        .await
        .unwrap_err();
    assert!(error.contains("no such unrevoked key"), "{error}");
    let error = cli(
        &app,
        &["client", "add-key", "00000000-0000-0000-0000-000000000000"],
    )
    .await
    .unwrap_err();
    assert!(error.contains("not found"), "{error}");
    let listed = cli(&app, &["client", "keys", &client_id]).await.unwrap();
    assert_eq!(
        listed
            .lines()
            .filter(|line| line.contains("revoked"))
            .count(),
        1,
        "{listed}"
    );
}

/// The same made-up key sent 40 times is looked up once per `API_KEY_CACHE_SECONDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_made_up_key_is_looked_up_once() {
    for (cache_seconds, lookups) in [(None, 1.0..=2.0), (Some(0), 40.0..=45.0)] {
        let options = AppOptions {
            api_key_cache_seconds: cache_seconds,
            ..AppOptions::default()
        };
        let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
        let before = app.metric("ledger_database_statements_total").await;
        for _ in 0..40 {
            let response = accounts_as(&app, "lk_madeUpmadeUpmadeUpmadeUpmadeUpmadeUp1234").await;
            assert_eq!(error_code(&response), Some("UNAUTHENTICATED"), "{response}");
        }
        let statements = app.metric("ledger_database_statements_total").await - before;
        assert!(
            lookups.contains(&statements),
            "API_KEY_CACHE_SECONDS {cache_seconds:?}: {statements} statements for 40 requests, expected {lookups:?}"
        );
    }
}
