//! Traffic meant to bloat or crowd the server is refused cheaply, with a code, before
//! it runs: documents over their field budget (aliases and fragments counted where
//! they are used; smaller without a key), repeated introspection, introspection when
//! it is configured off, and one client running more requests at once than it may.

use payments_ledger::config::Introspection;
use serde_json::json;

use crate::helpers::{AppOptions, Backend, error_code, spawn_app, spawn_app_with};
use crate::stalls::hold_row_lock;

fn aliases(count: usize, field: &str) -> String {
    let fields: String = (0..count)
        .map(|index| format!(" a{index}: {field}"))
        .collect();
    format!("{{{fields} }}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_documents_are_refused_before_they_run() {
    let app = spawn_app(Backend::Sqlite).await.unwrap();
    // The attack: 290 aliases of the whole schema, without a key.
    let schema = aliases(290, "__schema { types { name fields { name } } }");
    let response = app.graphql_as(None, &schema, json!({})).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    assert!(response["data"].is_null());
    // One introspection is fine without a key; two are not.
    let once = app
        .graphql_as(None, "{ __schema { queryType { name } } }", json!({}))
        .await;
    assert_eq!(once["data"]["__schema"]["queryType"]["name"], "Query");
    let twice = app
        .graphql_as(
            None,
            "{ a: __schema { queryType { name } } b: __schema { queryType { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(error_code(&twice), Some("BAD_USER_INPUT"), "{twice}");

    // 2000 aliases of a balance, with a key.
    let account = app.create_account("USD", "UNBOUNDED", None).await;
    let balance =
        format!("account(id: \"{account}\") {{ balance(consistency: STRONG) {{ amount }} }}");
    let response = app.graphql(&aliases(2000, &balance), json!({})).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    // The same through a fragment spread 500 times: counted where used.
    let spread: String = (0..500)
        .map(|index| format!(" a{index}: account(id: \"{account}\") {{ ...B }}"))
        .collect();
    let query =
        format!("{{{spread} }} fragment B on Account {{ id balance {{ amount version }} }}");
    let response = app.graphql(&query, json!({})).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    // Within the budget it runs.
    let response = app.graphql(&aliases(50, &balance), json!({})).await;
    assert_eq!(
        response["data"]["a49"]["balance"]["amount"], "0.00",
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn introspection_can_be_limited_to_clients() {
    let options = AppOptions {
        introspection: Some(Introspection::Authenticated),
        ..AppOptions::default()
    };
    let app = spawn_app_with(Backend::Sqlite, options).await.unwrap();
    let query = "{ __schema { queryType { name } } }";
    let anonymous = app.graphql_as(None, query, json!({})).await;
    assert!(anonymous["data"].is_null(), "{anonymous}");
    assert_eq!(
        error_code(&anonymous),
        Some("BAD_USER_INPUT"),
        "{anonymous}"
    );
    assert!(
        anonymous["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("needs an API key"),
        "{anonymous}"
    );
    let client = app.graphql(query, json!({})).await;
    assert_eq!(
        client["data"]["__schema"]["queryType"]["name"], "Query",
        "{client}"
    );
    let typename = app.graphql_as(None, "{ __typename }", json!({})).await;
    assert_eq!(typename["data"]["__typename"], "Query");
}

/// A client at its limit of requests in flight is answered 429 RETRY_LATER with a
/// hint at once, while other clients go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_client_cannot_run_more_than_its_share_at_once() {
    let options = AppOptions {
        client_concurrent_requests_max: Some(1),
        lock_timeout_ms: Some(10_000),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let from = app.create_account("USD", "UNBOUNDED", None).await;
    let to = app.create_account("USD", "NON_NEGATIVE", None).await;
    let other = app.other_client_key().await;
    let session = hold_row_lock(&app, &from).await;
    // The client's one request in flight: a payment waiting for the lock.
    let stuck = tokio::spawn({
        let client = app.client.clone();
        let (from, to) = (from.clone(), to.clone());
        async move {
            client
                .create_payment(
                    &ledger_client::PaymentInput::new("stuck", &from, &to, "1.00", "USD"),
                    false,
                )
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let response = app
        .http
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&app.api_key)
        .json(&json!({ "query": "{ accounts { nodes { id } } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("RETRY_LATER"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["retryAfterMs"], 1000);
    let others = app
        .graphql_as(Some(&other), "{ accounts { nodes { id } } }", json!({}))
        .await;
    assert_eq!(others["data"]["accounts"]["nodes"], json!([]), "{others}");

    session.rollback().await.unwrap();
    let paid = stuck.await.unwrap().unwrap();
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{paid}"
    );
    let after = app
        .graphql("{ accounts { nodes { id } } }", json!({}))
        .await;
    assert!(
        error_code(&after).is_none(),
        "room again once it finished: {after}"
    );
}
