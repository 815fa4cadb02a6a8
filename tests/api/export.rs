//! `payments-ledger export`: one client's statement, whose totals are its balances.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::cli::ledger_command;
use crate::helpers::{Backend, TestApp, spawn_app};
use crate::on_both_backends;

on_both_backends!(an_exported_statement_adds_up_to_the_balances);

/// Runs `export` with `arguments` against the app's database; stdout on success.
async fn export(app: &TestApp, arguments: &[&str]) -> Result<String, String> {
    let url = app.database.url.clone();
    let mut all = vec!["export".to_owned()];
    all.extend(arguments.iter().map(|argument| (*argument).to_owned()));
    let output = tokio::task::spawn_blocking(move || {
        let arguments: Vec<&str> = all.iter().map(String::as_str).collect();
        ledger_command(&url, &arguments)
    })
    .await
    .unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The CSV's rows as maps from column to value.
fn csv_rows(text: &str) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|record| {
            let record = record.unwrap();
            headers
                .iter()
                .zip(record.iter())
                .map(|(header, value)| (header.to_owned(), value.to_owned()))
                .collect()
        })
        .collect()
}

fn cents(text: &str) -> i64 {
    let value: rust_decimal::Decimal = text.parse().unwrap();
    (value * rust_decimal::Decimal::from(100))
        .try_into()
        .unwrap()
}

async fn an_exported_statement_adds_up_to_the_balances(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let alice = app.create_account("USD", "NON_NEGATIVE", None).await;
    let bob = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.pay("fund", &funding, &alice, "100.00", "USD").await;
    let paid = app
        .graphql(
            "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { payment { id status } } }",
            json!({ "input": {
                "idempotencyKey": "order-1", "fromAccountId": alice, "toAccountId": bob,
                "amount": "30.00", "currency": "USD", "description": "order 1, \"blue\"",
                "metadata": { "orderId": "1", "note": "a,b" },
            }}),
        )
        .await;
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{paid}"
    );
    app.pay("back", &bob, &alice, "5.25", "USD").await;
    let hold = app
        .graphql(
            "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { payment { id } } }",
            json!({ "input": {
                "idempotencyKey": "hold", "fromAccountId": alice, "toAccountId": bob,
                "amount": "10.00", "currency": "USD", "pending": true,
            }}),
        )
        .await;
    let hold_id = hold["data"]["createPayment"]["payment"]["id"].clone();
    let captured = app
        .graphql(
            "mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { payment { status } } }",
            json!({ "input": { "idempotencyKey": "capture", "paymentId": hold_id, "amount": "7.00" } }),
        )
        .await;
    assert_eq!(
        captured["data"]["capturePayment"]["payment"]["status"], "POSTED",
        "{captured}"
    );
    // Another client's entries stay out of this client's statement.
    let stranger = app.other_client_key().await;
    let theirs = app
        .create_account_as(&stranger, "USD", "UNBOUNDED", None)
        .await;
    let theirs_too = app
        .create_account_as(&stranger, "USD", "NON_NEGATIVE", None)
        .await;
    let response = app
        .client
        .with_key(Some(&stranger))
        .create_payment(
            &ledger_client::PaymentInput::new("theirs", &theirs, &theirs_too, "1.00", "USD"),
            false,
        )
        .await
        .unwrap();
    assert!(response["errors"].is_null(), "{response}");

    let client = app.client_id.to_string();
    let statement = export(&app, &["--client", &client]).await.unwrap();
    let rows = csv_rows(&statement);
    assert_eq!(rows.len(), 8, "{statement}");
    let mut sums: HashMap<String, i64> = HashMap::new();
    let mut last: HashMap<String, (i64, i64)> = HashMap::new();
    for row in &rows {
        let account = row["account_id"].clone();
        let sum = sums.entry(account.clone()).or_default();
        *sum += cents(&row["signed_amount"]);
        // Each row's running balance follows from the rows before it.
        assert_eq!(*sum, cents(&row["balance_after"]), "{row:?}");
        let version: i64 = row["account_version"].parse().unwrap();
        let previous = last.insert(account, (version, *sum));
        assert_eq!(
            previous.map_or(0, |(version, _)| version) + 1,
            version,
            "{row:?}"
        );
    }
    for account in [&funding, &alice, &bob] {
        let (balance, version) = app.balance(account).await;
        assert_eq!(sums[account.as_str()], cents(&balance), "{account}");
        assert_eq!(last[account.as_str()].0, version, "{account}");
    }
    assert_eq!(
        sums.values().sum::<i64>(),
        0,
        "money is conserved in the statement"
    );
    let order = rows
        .iter()
        .find(|row| row["payment_idempotency_key"] == "order-1" && row["direction"] == "DEBIT")
        .unwrap();
    assert_eq!(order["payment_description"], "order 1, \"blue\"");
    assert_eq!(
        serde_json::from_str::<Value>(&order["payment_metadata"]).unwrap(),
        json!({ "orderId": "1", "note": "a,b" })
    );
    assert_eq!(order["counterparty_account_id"], bob);

    // JSON: the same rows.
    let json_statement = export(&app, &["--client", &client, "--format", "json"])
        .await
        .unwrap();
    let objects: Vec<HashMap<String, Value>> = serde_json::from_str(&json_statement).unwrap();
    assert_eq!(objects.len(), rows.len());
    for (object, row) in objects.iter().zip(&rows) {
        for (column, value) in row {
            let exported = match &object[column] {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            assert_eq!(&exported, value, "{column}");
        }
    }

    // A window: entries from the capture's time on (since inclusive, until exclusive).
    let captured_at = rows
        .iter()
        .filter(|row| row["payment_idempotency_key"] == "hold")
        .map(|row| row["created_at"].clone())
        .next()
        .unwrap();
    let window = csv_rows(
        &export(&app, &["--client", &client, "--since", &captured_at])
            .await
            .unwrap(),
    );
    assert_eq!(window.len(), 2);
    assert!(
        window
            .iter()
            .all(|row| row["payment_idempotency_key"] == "hold")
    );
    let before = csv_rows(
        &export(&app, &["--client", &client, "--until", &captured_at])
            .await
            .unwrap(),
    );
    assert_eq!(before.len(), 6);
    let empty = export(
        &app,
        &["--client", &client, "--until", "2000-01-01T00:00:00Z"],
    )
    .await
    .unwrap();
    assert_eq!(empty.lines().count(), 1, "a header and no rows: {empty}");

    // By name, and refusals.
    let url = app.database.url.clone();
    let created = tokio::task::spawn_blocking(move || {
        ledger_command(&url, &["client", "create", "statement-co"])
    })
    .await
    .unwrap();
    assert!(created.status.success());
    let named = export(&app, &["--client", "statement-co"]).await.unwrap();
    assert_eq!(
        named.lines().count(),
        1,
        "a new client has no entries: {named}"
    );
    let error = export(&app, &["--client", "nobody"]).await.unwrap_err();
    assert!(error.contains("no client is named"), "{error}");
    let error = export(&app, &["--client", &client, "--since", "yesterday"])
        .await
        .unwrap_err();
    assert!(error.contains("--since"), "{error}");
}
