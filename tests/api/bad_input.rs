//! Bad input gets a clear error with a code, and changes nothing (design.md section 8).

use serde_json::{Value, json};

use crate::helpers::{Backend, PAY, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    bad_payments_are_refused_and_change_nothing,
    bad_accounts_are_refused,
    bad_requests_are_refused
);

async fn snapshot(app: &TestApp) -> (i64, i64, i64, i64) {
    (
        app.count("accounts").await,
        app.count("payments").await,
        app.count("ledger_entries").await,
        app.count("idempotency_keys").await,
    )
}

async fn bad_payments_are_refused_and_change_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let usd = app.create_account("USD", "NON_NEGATIVE", None).await;
    let usd_2 = app.create_account("USD", "NON_NEGATIVE", None).await;
    let eur = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let jpy = app.create_account("JPY", "UNBOUNDED", None).await;
    app.fund(&usd, "100.00", "USD").await;
    let before = snapshot(&app).await;
    let unknown_account = "acc_0193a5b0c1d27f3e8a4b5c6d7e8f9a0b";

    let cases: Vec<(&str, Value, &str)> = vec![
        ("zero", json!("0"), "BAD_USER_INPUT"),
        ("zero with decimals", json!("0.00"), "BAD_USER_INPUT"),
        ("negative", json!("-5.00"), "BAD_USER_INPUT"),
        ("too many decimals", json!("1.001"), "BAD_USER_INPUT"),
        // Past a decimal's 28 digits: once rounded to 0.01 and 1.00 and POSTED.
        (
            "rounds up past 28 digits",
            json!("0.009999999999999999999999999999"),
            "BAD_USER_INPUT",
        ),
        (
            "rounds down past 28 digits",
            json!("1.00000000000000000000000000001"),
            "BAD_USER_INPUT",
        ),
        ("non-numeric", json!("ten"), "BAD_USER_INPUT"),
        ("exponent", json!("1e2"), "BAD_USER_INPUT"),
        ("JSON number", json!(12.5), "BAD_USER_INPUT"),
        ("JSON integer", json!(12), "BAD_USER_INPUT"),
        (
            "overflows i64 minor units",
            json!("92233720368547758.08"),
            "BAD_USER_INPUT",
        ),
        (
            "overflows a decimal",
            json!("9".repeat(40)),
            "BAD_USER_INPUT",
        ),
        ("null", Value::Null, "BAD_USER_INPUT"),
    ];
    for (name, amount, code) in cases {
        let response = app
            .graphql(
                PAY,
                json!({ "input": { "idempotencyKey": format!("amount-{name}"), "fromAccountId": usd, "toAccountId": usd_2, "amount": amount, "currency": "USD" } }),
            )
            .await;
        assert_eq!(error_code(&response), Some(code), "{name}: {response}");
        assert!(
            !response["errors"][0]["message"]
                .as_str()
                .unwrap()
                .is_empty()
        );
    }

    let long_key = "k".repeat(256);
    let cases: Vec<(&str, &str, &str, &str, &str, &str)> = vec![
        // (name, key, from, to, currency, expected code)
        (
            "unknown currency",
            "c1",
            &usd,
            &usd_2,
            "ZZZ",
            "BAD_USER_INPUT",
        ),
        (
            "currency with no minor unit",
            "c2",
            &usd,
            &usd_2,
            "XAU",
            "BAD_USER_INPUT",
        ),
        (
            "payment currency differs from accounts",
            "c3",
            &usd,
            &usd_2,
            "EUR",
            "CURRENCY_MISMATCH",
        ),
        (
            "accounts in different currencies",
            "c4",
            &usd,
            &eur,
            "USD",
            "CURRENCY_MISMATCH",
        ),
        (
            "paying an account to itself",
            "c5",
            &usd,
            &usd,
            "USD",
            "BAD_USER_INPUT",
        ),
        (
            "empty idempotency key",
            "",
            &usd,
            &usd_2,
            "USD",
            "BAD_USER_INPUT",
        ),
        (
            "overlong idempotency key",
            &long_key,
            &usd,
            &usd_2,
            "USD",
            "BAD_USER_INPUT",
        ),
        (
            "unknown account",
            "c6",
            &usd,
            unknown_account,
            "USD",
            "NOT_FOUND",
        ),
        (
            "unknown source account",
            "c7",
            unknown_account,
            &usd,
            "USD",
            "NOT_FOUND",
        ),
        (
            "malformed id",
            "c8",
            &usd,
            "not-an-id",
            "USD",
            "BAD_USER_INPUT",
        ),
        (
            "id of another type",
            "c9",
            &usd,
            "pay_0193a5b0c1d27f3e8a4b5c6d7e8f9a0b",
            "USD",
            "BAD_USER_INPUT",
        ),
    ];
    for (name, key, from, to, currency, code) in cases {
        let response = app.pay(key, from, to, "1.00", currency).await;
        assert_eq!(error_code(&response), Some(code), "{name}: {response}");
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(!message.to_lowercase().contains("sql"), "{name}: {message}");
    }
    // JPY has no decimals at all.
    let response = app.pay("jpy", &jpy, &usd, "1.5", "JPY").await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"));

    assert_eq!(snapshot(&app).await, before, "nothing was stored");
    // A failure before any effect stores nothing: the same key then works.
    let response = app.pay("c6", &usd, &usd_2, "1.00", "USD").await;
    assert_eq!(
        response["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{response}"
    );
    app.assert_ledger_sound().await;
}

async fn bad_accounts_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let create = ledger_client::CREATE_ACCOUNT;
    for (name, input) in [
        (
            "unknown currency",
            json!({ "idempotencyKey": "a1", "currency": "ABC", "balanceRule": "NON_NEGATIVE" }),
        ),
        (
            "credit limit missing",
            json!({ "idempotencyKey": "a2", "currency": "USD", "balanceRule": "CREDIT_LIMIT" }),
        ),
        (
            "credit limit on another rule",
            json!({ "idempotencyKey": "a3", "currency": "USD", "balanceRule": "NON_NEGATIVE", "creditLimit": "5.00" }),
        ),
        (
            "negative credit limit",
            json!({ "idempotencyKey": "a4", "currency": "USD", "balanceRule": "CREDIT_LIMIT", "creditLimit": "-5.00" }),
        ),
        (
            "credit limit as a number",
            json!({ "idempotencyKey": "a5", "currency": "USD", "balanceRule": "CREDIT_LIMIT", "creditLimit": 5 }),
        ),
        (
            "unknown balance rule",
            json!({ "idempotencyKey": "a6", "currency": "USD", "balanceRule": "WHATEVER" }),
        ),
        (
            "overlong externalRef",
            json!({ "idempotencyKey": "a7", "currency": "USD", "balanceRule": "UNBOUNDED", "externalRef": "r".repeat(256) }),
        ),
        (
            "missing key",
            json!({ "currency": "USD", "balanceRule": "UNBOUNDED" }),
        ),
    ] {
        let response = app.graphql(create, json!({ "input": input })).await;
        assert_eq!(
            error_code(&response),
            Some("BAD_USER_INPUT"),
            "{name}: {response}"
        );
    }
    assert_eq!(app.count("accounts").await, 0);
    assert_eq!(app.count("idempotency_keys").await, 0);
}

async fn bad_requests_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let url = format!("{}/graphql", app.address);

    // Missing and wrong API keys.
    let query = "{ accounts { nodes { id } } }";
    let response = app.graphql_as(None, query, json!({})).await;
    assert_eq!(error_code(&response), Some("UNAUTHENTICATED"), "{response}");
    let response = app.graphql_as(Some("lk_wrong"), query, json!({})).await;
    assert_eq!(error_code(&response), Some("UNAUTHENTICATED"));
    let response = app.graphql_as(Some("garbage"), query, json!({})).await;
    assert_eq!(error_code(&response), Some("UNAUTHENTICATED"));
    let response = app
        .graphql_as(None, "mutation { createAccount(input: { idempotencyKey: \"x\", currency: \"USD\", balanceRule: UNBOUNDED }) { account { id } } }", json!({}))
        .await;
    assert_eq!(error_code(&response), Some("UNAUTHENTICATED"));

    // Malformed bodies get a GraphQL-shaped error, not a bare 400 text.
    for body in ["{not json", "", "[]", "{\"query\": 5}", "null"] {
        let response = app
            .http
            .post(&url)
            .header("content-type", "application/json")
            .bearer_auth(&app.api_key)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let json: Value = response.json().await.unwrap();
        assert_eq!(error_code(&json), Some("BAD_USER_INPUT"), "{body}: {json}");
    }
    // Syntax errors, unknown fields and wrong variable types carry a code too.
    for (query, variables) in [
        ("{ accounts { ", json!({})),
        ("{ nope }", json!({})),
        (
            "query($id: ID!) { account(id: $id) { id } }",
            json!({ "id": [1] }),
        ),
    ] {
        let response = app.graphql(query, variables).await;
        assert_eq!(
            error_code(&response),
            Some("BAD_USER_INPUT"),
            "{query}: {response}"
        );
    }
    // Unknown and malformed ids.
    for (id, code) in [
        ("acc_0193a5b0c1d27f3e8a4b5c6d7e8f9a0b", "NOT_FOUND"),
        ("acc_zzz", "BAD_USER_INPUT"),
        ("", "BAD_USER_INPUT"),
        ("'; DROP TABLE accounts; --", "BAD_USER_INPUT"),
    ] {
        let response = app
            .graphql(
                "query($id: ID!) { node(id: $id) { id } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(error_code(&response), Some(code), "{id}: {response}");
        assert!(
            !response["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("parse"),
            "{response}"
        );
    }
    // nodes takes at most 100 ids.
    let ids: Vec<String> = (0..101)
        .map(|_| "acc_0193a5b0c1d27f3e8a4b5c6d7e8f9a0b".to_owned())
        .collect();
    let response = app
        .graphql(
            "query($ids: [ID!]!) { nodes(ids: $ids) { id } }",
            json!({ "ids": ids }),
        )
        .await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    assert_eq!(app.count("accounts").await, 0);
}
