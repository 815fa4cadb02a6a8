//! DataLoaders batch: resolving the accounts and entries of many payments costs a
//! constant number of statements, not one per payment.

use serde_json::json;

use crate::helpers::{Backend, spawn_app};
use crate::on_both_backends;

on_both_backends!(nested_fields_are_batched_not_n_plus_one);

async fn nested_fields_are_batched_not_n_plus_one(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    for index in 0..30 {
        let account = app.create_account("USD", "NON_NEGATIVE", None).await;
        app.pay(&format!("p{index}"), &funding, &account, "1.00", "USD")
            .await;
    }
    app.settle_feeds().await;
    let query = "{ payments(first: 30) { nodes {
        fromAccount { id balance { amount } } toAccount { id balance { amount } }
        entries { account { id currency } payment { id } } } } }";
    // Measured on a new instance, whose caches are cold but for the API key.
    let replica = app.spawn_replica().await;
    app.graphql_at(&replica.address, "{ __typename }", json!({}))
        .await;
    let before = replica.metrics.database_statements.get();
    let response = app.graphql_at(&replica.address, query, json!({})).await;
    let statements = replica.metrics.database_statements.get() - before;
    assert!(response["errors"].is_null(), "{response}");
    assert_eq!(
        response["data"]["payments"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        30
    );
    // Ideally five: the page, then per nesting level one batch per kind (accounts and
    // entries, then the entries' accounts and payments). A loader collects keys for 1 ms,
    // so a slow machine may split a batch in two; one query per object would be 150.
    assert!(
        statements < 30,
        "{statements} statements for 30 payments: not batched"
    );
}
