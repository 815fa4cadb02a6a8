//! Tenant isolation (design.md sections 3 and 8): another client's ids are NOT_FOUND,
//! by every field, and no list shows them.

use serde_json::json;

use crate::helpers::{Backend, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(a_client_never_sees_another_clients_data);

async fn a_client_never_sees_another_clients_data(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "20.00", "USD").await;
    let response = app
        .pay("shared-key", &source, &destination, "5.00", "USD")
        .await;
    let payment = response["data"]["createPayment"]["payment"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = app
        .graphql(
            "query($id: ID!) { ledgerEntries(accountId: $id) { nodes { id } } }",
            json!({ "id": source }),
        )
        .await["data"]["ledgerEntries"]["nodes"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let intruder = app.other_client_key().await;
    let as_intruder = |query: &'static str, variables: serde_json::Value| {
        let intruder = intruder.clone();
        let app = &app;
        async move { app.graphql_as(Some(&intruder), query, variables).await }
    };

    for (query, variables) in [
        (
            "query($id: ID!) { account(id: $id) { id } }",
            json!({ "id": source }),
        ),
        (
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": source }),
        ),
        (
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": payment }),
        ),
        (
            "query($id: ID!) { node(id: $id) { id } }",
            json!({ "id": entry }),
        ),
        (
            "query($id: ID!) { payment(id: $id) { id } }",
            json!({ "id": payment }),
        ),
        (
            "query($id: ID!) { ledgerEntries(accountId: $id) { nodes { id } } }",
            json!({ "id": source }),
        ),
        (
            "query($id: ID!) { payments(accountId: $id) { nodes { id } } }",
            json!({ "id": source }),
        ),
    ] {
        let response = as_intruder(query, variables).await;
        assert_eq!(
            error_code(&response),
            Some("NOT_FOUND"),
            "{query}: {response}"
        );
        assert!(!response.to_string().contains("5.00"), "{response}");
    }

    // Lists are empty, keys are per client, and references by external id see nothing;
    // once the feeds list the owner's rows, so an empty list means "not yours".
    app.settle_feeds().await;
    let owners = app
        .graphql(
            "query { accounts { nodes { id } } payments { nodes { id } } }",
            json!({}),
        )
        .await;
    assert!(
        !owners["data"]["accounts"]["nodes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(
        !owners["data"]["payments"]["nodes"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let response = as_intruder(
        "query { accounts { nodes { id } } payments { nodes { id } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        response["data"]["accounts"]["nodes"],
        json!([]),
        "{response}"
    );
    assert_eq!(response["data"]["payments"]["nodes"], json!([]));
    let response = as_intruder(
        "query { paymentByIdempotencyKey(idempotencyKey: \"shared-key\") { id } }",
        json!({}),
    )
    .await;
    assert!(
        response["data"]["paymentByIdempotencyKey"].is_null(),
        "{response}"
    );

    // Paying from, or to, a foreign account is NOT_FOUND and moves nothing, even with
    // an account of the intruder's own on the other side.
    let own = app
        .create_account_as(&intruder, "USD", "UNBOUNDED", None)
        .await;
    for (from, to) in [(&source, &own), (&own, &source)] {
        let response = app
            .graphql_as(
                Some(&intruder),
                crate::helpers::PAY,
                json!({ "input": { "idempotencyKey": "steal", "fromAccountId": from, "toAccountId": to, "amount": "1.00", "currency": "USD" } }),
            )
            .await;
        assert_eq!(error_code(&response), Some("NOT_FOUND"), "{response}");
    }
    assert_eq!(app.balance(&source).await, ("15.00".to_owned(), 2));

    // The same key in two tenants is two keys.
    let response = app
        .graphql_as(
            Some(&intruder),
            "mutation { createAccount(input: { idempotencyKey: \"shared-key\", currency: \"USD\", balanceRule: NON_NEGATIVE }) { replayed } }",
            json!({}),
        )
        .await;
    assert_eq!(
        response["data"]["createAccount"]["replayed"], false,
        "{response}"
    );
    app.assert_ledger_sound().await;
}
