//! Metadata on accounts and payments: returned as given, part of the idempotency
//! fingerprint, bounded, and payments found by one key/value pair.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    metadata_is_returned_as_given_and_fingerprinted,
    metadata_over_its_limits_is_refused_and_stores_nothing,
    payments_are_found_by_one_metadata_pair,
);

const PAY: &str = "mutation($input: CreatePaymentInput!) {
  createPayment(input: $input) { replayed payment { id status metadata } }
}";

async fn pay_with(
    app: &TestApp,
    key: &str,
    from: &str,
    to: &str,
    amount: &str,
    metadata: Value,
) -> Value {
    app.graphql(
        PAY,
        json!({ "input": {
            "idempotencyKey": key, "fromAccountId": from, "toAccountId": to,
            "amount": amount, "currency": "USD", "metadata": metadata,
        }}),
    )
    .await
}

async fn metadata_is_returned_as_given_and_fingerprinted(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = app
        .graphql(
            "mutation($input: CreateAccountInput!) {
               createAccount(input: $input) { replayed account { id metadata } } }",
            json!({ "input": {
                "idempotencyKey": "account-1", "currency": "USD", "balanceRule": "NON_NEGATIVE",
                "metadata": { "owner": "Ada", "city": "Zürich", "a": "" },
            }}),
        )
        .await;
    let account = &response["data"]["createAccount"]["account"];
    // Keys in the order given, not sorted.
    assert_eq!(
        account["metadata"].to_string(),
        r#"{"owner":"Ada","city":"Zürich","a":""}"#,
        "{response}"
    );
    let payer = account["id"].as_str().unwrap().to_owned();
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;

    let metadata = json!({ "orderId": "1042", "channel": "web" });
    let first = pay_with(&app, "p-1", &payer, &payee, "1.00", metadata.clone()).await;
    let payment = &first["data"]["createPayment"];
    assert_eq!(payment["payment"]["status"], "POSTED", "{first}");
    assert_eq!(payment["payment"]["metadata"], metadata);
    assert_eq!(payment["replayed"], false);
    // The same pairs in another order are the same request.
    let again = pay_with(
        &app,
        "p-1",
        &payer,
        &payee,
        "1.00",
        json!({ "channel": "web", "orderId": "1042" }),
    )
    .await;
    assert_eq!(again["data"]["createPayment"]["replayed"], true, "{again}");
    assert_eq!(
        again["data"]["createPayment"]["payment"]["id"],
        payment["payment"]["id"]
    );
    assert_eq!(
        again["data"]["createPayment"]["payment"]["metadata"],
        metadata
    );
    // Other pairs, or none, are another request under the same key.
    for other in [json!({ "orderId": "1043", "channel": "web" }), Value::Null] {
        let reused = pay_with(&app, "p-1", &payer, &payee, "1.00", other).await;
        assert_eq!(
            error_code(&reused),
            Some("IDEMPOTENCY_KEY_REUSED"),
            "{reused}"
        );
    }
    // A payment made without metadata has none, and its key replays without it.
    let plain = pay_with(&app, "p-2", &payer, &payee, "1.00", Value::Null).await;
    assert_eq!(
        plain["data"]["createPayment"]["payment"]["metadata"],
        Value::Null
    );
    let reused = pay_with(&app, "p-2", &payer, &payee, "1.00", json!({ "k": "v" })).await;
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    // A hold keeps its metadata too (the batch statement for holds writes it).
    let hold = app
        .graphql(
            "mutation($input: CreatePaymentInput!) {
               createPayment(input: $input) { payment { status metadata } } }",
            json!({ "input": {
                "idempotencyKey": "h-1", "fromAccountId": payer, "toAccountId": payee,
                "amount": "2.00", "currency": "USD", "pending": true,
                "metadata": { "orderId": "1044" },
            }}),
        )
        .await;
    assert_eq!(
        hold["data"]["createPayment"]["payment"],
        json!({ "status": "PENDING", "metadata": { "orderId": "1044" } }),
        "{hold}"
    );
    app.assert_ledger_sound().await;
}

async fn metadata_over_its_limits_is_refused_and_stores_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payments = app.count("payments").await;
    let many: serde_json::Map<String, Value> = (0..51)
        .map(|index| (format!("k{index}"), json!("v")))
        .collect();
    let large: serde_json::Map<String, Value> = (0..40)
        .map(|index| (format!("k{index}"), json!("x".repeat(500))))
        .collect();
    for (case, metadata) in [
        ("51 keys", Value::Object(many)),
        ("a value of 501 bytes", json!({ "k": "x".repeat(501) })),
        ("20 KB in all", Value::Object(large)),
        ("a key of 101 bytes", json!({ "k".repeat(101): "v" })),
        ("an empty key", json!({ "": "v" })),
        ("a number", json!({ "amount": 12 })),
        ("a nested object", json!({ "a": { "b": "c" } })),
        ("an array", json!(["a", "b"])),
        ("a string", json!("orderId=1")),
    ] {
        let response = pay_with(&app, case, &payer, &payee, "1.00", metadata).await;
        assert_eq!(
            error_code(&response),
            Some("BAD_USER_INPUT"),
            "{case}: {response}"
        );
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("metadata"), "{case}: {message}");
    }
    assert_eq!(app.count("payments").await, payments);
    assert_eq!(app.count("payment_metadata").await, 0);
    // At the limits it is taken.
    let full: serde_json::Map<String, Value> = (0..50)
        .map(|index| (format!("k{index:02}"), json!("y".repeat(300))))
        .collect();
    let response = pay_with(&app, "full", &payer, &payee, "1.00", Value::Object(full)).await;
    assert_eq!(
        response["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{response}"
    );
    assert_eq!(app.count("payment_metadata").await, 50);
}

const FIND: &str = "query($key: String!, $value: String!, $status: PaymentStatus) {
  payments(metadata: { key: $key, value: $value }, status: $status, first: 100) {
    nodes { id metadata }
  }
}";

async fn ids_found(
    app: &TestApp,
    api_key: Option<&str>,
    key: &str,
    value: &str,
    status: Option<&str>,
) -> Vec<String> {
    let response = app
        .graphql_as(
            Some(api_key.unwrap_or(&app.api_key)),
            FIND,
            json!({ "key": key, "value": value, "status": status }),
        )
        .await;
    response["data"]["payments"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .iter()
        .map(|node| node["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn payments_are_found_by_one_metadata_pair(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "5.00", "USD").await;
    // Sent at once, so several share a batch; one is declined (it would overdraw).
    let sends = (0..8).map(|index| {
        let (app, payer, payee) = (&app, &payer, &payee);
        async move {
            let amount = if index == 7 { "500.00" } else { "0.10" };
            let metadata = json!({
                "orderId": format!("order-{}", index % 4),
                "channel": if index % 2 == 0 { "web" } else { "app" },
            });
            let response =
                pay_with(app, &format!("m-{index}"), payer, payee, amount, metadata).await;
            response["data"]["createPayment"]["payment"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{response}"))
                .to_owned()
        }
    });
    let ids = futures::future::join_all(sends).await;
    app.pay("no-metadata", &payer, &payee, "0.10", "USD").await;
    app.settle_feeds().await;

    let mut expected: Vec<String> = vec![ids[3].clone(), ids[7].clone()];
    let mut found = ids_found(&app, None, "orderId", "order-3", None).await;
    expected.sort();
    found.sort();
    assert_eq!(found, expected);
    assert_eq!(ids_found(&app, None, "channel", "app", None).await.len(), 4);
    assert_eq!(ids_found(&app, None, "channel", "web", None).await.len(), 4);
    assert_eq!(
        ids_found(&app, None, "orderId", "order-3", Some("DECLINED")).await,
        [ids[7].clone()]
    );
    assert_eq!(
        ids_found(&app, None, "orderId", "order-3", Some("POSTED")).await,
        [ids[3].clone()]
    );
    assert!(
        ids_found(&app, None, "orderId", "order-9", None)
            .await
            .is_empty()
    );
    assert!(
        ids_found(&app, None, "ORDERID", "order-3", None)
            .await
            .is_empty()
    );

    // The same pair of another client is that client's alone.
    let stranger = app.other_client_key().await;
    assert!(
        ids_found(&app, Some(&stranger), "orderId", "order-3", None)
            .await
            .is_empty()
    );

    // On an account's own list too.
    let response = app
        .graphql(
            "query($id: ID!) { account(id: $id) {
               payments(metadata: { key: \"channel\", value: \"web\" }, first: 10) { nodes { id } } } }",
            json!({ "id": payee }),
        )
        .await;
    assert_eq!(
        response["data"]["account"]["payments"]["nodes"]
            .as_array()
            .map(Vec::len),
        Some(4),
        "{response}"
    );
    let response = app.graphql(FIND, json!({ "key": "", "value": "x" })).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    app.assert_ledger_sound().await;
}
