//! A row lock held elsewhere stalls only the payments that need it: they answer
//! RETRY_LATER after `POSTGRES_LOCK_TIMEOUT_MS` (nothing happened), while unrelated
//! payments, even those queued in the same batch, post; no tenant can take another
//! tenant's row locks; and reads cannot take the connections payments need. PostgreSQL
//! only: SQLite has one writer, and its lock is the whole file.

use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, Statement, TransactionTrait};
use uuid::Uuid;

use crate::helpers::{AppOptions, Backend, TestApp, error_code, spawn_app, spawn_app_with};

/// Opens a transaction that holds `account`'s row lock until it ends, as an operator's
/// `SELECT … FOR UPDATE` in psql would.
pub async fn hold_row_lock(app: &TestApp, account: &str) -> DatabaseTransaction {
    let session = app.db.begin().await.unwrap();
    session
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
            [Uuid::parse_str(&account[4..]).unwrap().into()],
        ))
        .await
        .unwrap();
    session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_account_stalls_only_its_own_payments() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let held = app.create_account("USD", "UNBOUNDED", None).await;
    let held_to = app.create_account("USD", "NON_NEGATIVE", None).await;
    let free = app.create_account("USD", "UNBOUNDED", None).await;
    let free_to = app.create_account("USD", "NON_NEGATIVE", None).await;

    let session = hold_row_lock(&app, &held).await;

    // Sent together, so they can share a batch.
    let (blocked, unrelated) = tokio::join!(
        app.pay("on-the-locked-account", &held, &held_to, "1.00", "USD"),
        app.pay("unrelated", &free, &free_to, "1.00", "USD"),
    );
    assert_eq!(
        unrelated["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{unrelated}"
    );
    assert_eq!(error_code(&blocked), Some("RETRY_LATER"), "{blocked}");
    // The instance is not stuck behind the lock.
    let later = app.pay("after", &free, &free_to, "2.00", "USD").await;
    assert_eq!(
        later["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{later}"
    );

    // RETRY_LATER meant nothing happened: once the lock is gone the same key pays once.
    session.rollback().await.unwrap();
    assert_eq!(app.balance(&held_to).await, ("0.00".to_owned(), 0));
    let retried = app
        .pay("on-the-locked-account", &held, &held_to, "1.00", "USD")
        .await;
    assert_eq!(
        retried["data"]["createPayment"]["replayed"], false,
        "{retried}"
    );
    assert_eq!(
        retried["data"]["createPayment"]["payment"]["status"],
        "POSTED"
    );
    assert_eq!(app.balance(&held_to).await, ("1.00".to_owned(), 1));
    app.assert_ledger_sound().await;
}

/// A request that outlives `REQUEST_TIMEOUT_SECONDS` answers 503 in the GraphQL error
/// shape, code TIMEOUT: its outcome is unknown, and the same key tells it later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_out_of_time_says_its_outcome_is_unknown() {
    let options = AppOptions {
        request_timeout_seconds: Some(1),
        lock_timeout_ms: Some(5_000),
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let from = app.create_account("USD", "UNBOUNDED", None).await;
    let to = app.create_account("USD", "NON_NEGATIVE", None).await;
    let session = hold_row_lock(&app, &from).await;
    let response = app
        .http
        .post(format!("{}/graphql", app.address))
        .bearer_auth(&app.api_key)
        .json(&serde_json::json!({
            "query": crate::helpers::PAY,
            "variables": { "input": { "idempotencyKey": "slow", "fromAccountId": from,
                "toAccountId": to, "amount": "1.00", "currency": "USD" } },
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error_code(&body), Some("TIMEOUT"), "{body}");
    session.rollback().await.unwrap();
    // Whatever happened, the same key now gives the one outcome.
    let response = app.pay_until_final("slow", &from, &to, "1.00", "USD").await;
    assert_eq!(
        response["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{response}"
    );
    assert_eq!(app.balance(&to).await, ("1.00".to_owned(), 1));
}

/// A payment locks only its own client's accounts: naming another tenant's account
/// answers NOT_FOUND at once, without waiting for (or taking) that account's row lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_cannot_lock_another_tenants_account() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let victims = app.create_account("USD", "UNBOUNDED", None).await;
    let intruder = app.other_client_key().await;
    let intruders = app
        .create_account_as(&intruder, "USD", "UNBOUNDED", None)
        .await;

    let session = hold_row_lock(&app, &victims).await;
    let response = app
        .client
        .with_key(Some(&intruder))
        .create_payment(
            &ledger_client::PaymentInput::new("probe", &victims, &intruders, "1.00", "USD"),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        error_code(&response),
        Some("NOT_FOUND"),
        "the intruder's payment waited for the victim's row lock: {response}"
    );
    session.rollback().await.unwrap();
}

/// Reads cannot take the connections payments need: with every read connection held,
/// a payment still posts on the write pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_cannot_take_the_connections_payments_need() {
    let options = AppOptions {
        max_connections: Some(1),
        acquire_timeout_seconds: Some(1),
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let from = app.create_account("USD", "UNBOUNDED", None).await;
    let to = app.create_account("USD", "NON_NEGATIVE", None).await;
    // The only read connection, held as a flood of slow reads would hold it.
    let reads_held = app.db.begin().await.unwrap();
    let response = app
        .client
        .create_payment(
            &ledger_client::PaymentInput::new("beside-the-reads", &from, &to, "1.00", "USD"),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        response["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{response}"
    );
    reads_held.rollback().await.unwrap();
    assert_eq!(app.balance(&to).await, ("1.00".to_owned(), 1));
}
