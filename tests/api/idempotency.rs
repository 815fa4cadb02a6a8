//! Exactly-once (design.md section 4).

use futures::future::join_all;
use serde_json::json;

use payments_ledger::config::WriteIsolation;

use crate::helpers::{AppOptions, Backend, error_code, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    a_replay_returns_the_original_outcome,
    reusing_a_key_for_other_input_changes_nothing,
    fifty_concurrent_sends_of_one_key_pay_once,
    create_account_is_idempotent_too,
    payment_by_idempotency_key_finds_the_outcome,
    every_answer_for_a_payment_is_identical_on_any_instance,
);

/// The first answer, a replay on another instance (cold caches: read from the
/// database) and a read by id there all show the same payment, timestamps included:
/// PostgreSQL keeps microseconds, and a first answer with nanoseconds once differed.
async fn every_answer_for_a_payment_is_identical_on_any_instance(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let source = app.create_account("USD", "UNBOUNDED", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    const FIELDS: &str = "id status amount currency createdAt
        entries { id direction amount balanceAfter accountVersion createdAt }";
    let pay = format!(
        "mutation($input: CreatePaymentInput!) {{ createPayment(input: $input) {{ replayed payment {{ {FIELDS} }} }} }}"
    );
    let input = json!({ "input": { "idempotencyKey": "same-everywhere", "fromAccountId": source,
        "toAccountId": destination, "amount": "1.23", "currency": "USD" } });
    let first = app.graphql(&pay, input.clone()).await;
    let replica = app.spawn_replica().await;
    let replay = app.graphql_at(&replica.address, &pay, input).await;
    assert_eq!(
        replay["data"]["createPayment"]["replayed"], true,
        "{replay}"
    );
    let payment = &first["data"]["createPayment"]["payment"];
    assert!(payment["createdAt"].is_string(), "{first}");
    assert_eq!(&replay["data"]["createPayment"]["payment"], payment);
    let read = app
        .graphql_at(
            &replica.address,
            &format!("query($id: ID!) {{ payment(id: $id) {{ {FIELDS} }} }}"),
            json!({ "id": payment["id"] }),
        )
        .await;
    assert_eq!(&read["data"]["payment"], payment);
}

async fn a_replay_returns_the_original_outcome(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "5.00", "USD").await;

    let first = app
        .pay("same-key", &source, &destination, "3.00", "USD")
        .await;
    let second = app
        .pay("same-key", &source, &destination, "3.00", "USD")
        .await;
    // Same amount spelled differently is the same request.
    let third = app.pay("same-key", &source, &destination, "3", "USD").await;
    assert_eq!(first["data"]["createPayment"]["replayed"], false, "{first}");
    for replay in [&second, &third] {
        assert_eq!(
            replay["data"]["createPayment"]["replayed"], true,
            "{replay}"
        );
        assert_eq!(
            replay["data"]["createPayment"]["payment"], first["data"]["createPayment"]["payment"],
            "a replay names the same payment with the same entries"
        );
    }
    assert_eq!(app.balance(&source).await, ("2.00".to_owned(), 2));

    // A declined payment replays its decline, even once funds would allow it.
    let declined = app
        .pay("declined-key", &source, &destination, "4.00", "USD")
        .await;
    assert_eq!(
        declined["data"]["createPayment"]["payment"]["status"],
        "DECLINED"
    );
    app.fund(&source, "10.00", "USD").await;
    let replay = app
        .pay("declined-key", &source, &destination, "4.00", "USD")
        .await;
    assert_eq!(replay["data"]["createPayment"]["replayed"], true);
    assert_eq!(
        replay["data"]["createPayment"]["payment"],
        declined["data"]["createPayment"]["payment"]
    );
    assert_eq!(app.count("payments").await, 4);
    app.assert_ledger_sound().await;
}

async fn reusing_a_key_for_other_input_changes_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "50.00", "USD").await;
    app.pay("k", &source, &destination, "1.00", "USD").await;
    let before = (app.balance(&source).await, app.balance(&destination).await);
    let payments_before = app.count("payments").await;

    for (from, to, amount) in [
        (&source, &destination, "2.00"),
        (&destination, &source, "1.00"),
    ] {
        let response = app.pay("k", from, to, amount, "USD").await;
        assert_eq!(
            error_code(&response),
            Some("IDEMPOTENCY_KEY_REUSED"),
            "{response}"
        );
        assert!(response["data"].is_null() || response["data"]["createPayment"].is_null());
    }
    // Another input is refused as a reused key even when it could never be carried out
    // (an account that does not exist): the key's first use decides. Sent to a second
    // instance, which has not seen the key, so the database answers, not a cache.
    let replica = app.spawn_replica().await;
    let unknown = format!("acc_{}", uuid::Uuid::now_v7().simple());
    let response = app
        .pay_at(&replica.address, "k", &source, &unknown, "1.00", "USD")
        .await;
    assert_eq!(
        error_code(&response),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{response}"
    );
    // A key first used for an account cannot then make a payment.
    let response = app
        .graphql(
            "mutation { createAccount(input: { idempotencyKey: \"acct-key\", currency: \"USD\", balanceRule: NON_NEGATIVE }) { account { id } } }",
            json!({}),
        )
        .await;
    assert!(response["errors"].is_null(), "{response}");
    let response = app
        .pay("acct-key", &source, &destination, "1.00", "USD")
        .await;
    assert_eq!(error_code(&response), Some("IDEMPOTENCY_KEY_REUSED"));

    assert_eq!(
        (app.balance(&source).await, app.balance(&destination).await),
        before
    );
    assert_eq!(app.count("payments").await, payments_before);
    app.assert_ledger_sound().await;
}

async fn fifty_concurrent_sends_of_one_key_pay_once(backend: Backend) {
    fifty_sends_of_one_key(backend, AppOptions::default()).await;
}

/// The same on PostgreSQL with READ COMMITTED write transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_sends_of_one_key_pay_once_under_read_committed() {
    let options = AppOptions {
        write_isolation: WriteIsolation::ReadCommitted,
        ..AppOptions::default()
    };
    fifty_sends_of_one_key(Backend::Postgres, options).await;
}

async fn fifty_sends_of_one_key(backend: Backend, options: AppOptions) {
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "100.00", "USD").await;
    let payments_before = app.count("payments").await;

    let responses = join_all(
        (0..50).map(|_| app.pay_until_final("race-key", &source, &destination, "7.00", "USD")),
    )
    .await;
    let ids: Vec<&str> = responses
        .iter()
        .map(|response| {
            response["data"]["createPayment"]["payment"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{response}"))
        })
        .collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "every response names one payment"
    );
    let originals = responses
        .iter()
        .filter(|response| response["data"]["createPayment"]["replayed"] == false)
        .count();
    assert_eq!(originals, 1, "exactly one response is the original");

    assert_eq!(app.count("payments").await, payments_before + 1);
    assert_eq!(
        app.count("ledger_entries").await,
        4,
        "one funding pair, one payment pair"
    );
    assert_eq!(app.balance(&source).await, ("93.00".to_owned(), 2));
    app.assert_ledger_sound().await;
}

async fn create_account_is_idempotent_too(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let create = "mutation($input: CreateAccountInput!) { createAccount(input: $input) { replayed account { id externalRef } } }";
    let input = json!({ "input": { "idempotencyKey": "acct-1", "currency": "GBP", "balanceRule": "NON_NEGATIVE", "externalRef": "cust-9" } });
    let responses = join_all((0..10).map(|_| app.graphql(create, input.clone()))).await;
    let ids: Vec<&str> = responses
        .iter()
        .map(|response| {
            response["data"]["createAccount"]["account"]["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{response}"))
        })
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(app.count("accounts").await, 1);

    let changed = json!({ "input": { "idempotencyKey": "acct-1", "currency": "USD", "balanceRule": "NON_NEGATIVE" } });
    let response = app.graphql(create, changed).await;
    assert_eq!(error_code(&response), Some("IDEMPOTENCY_KEY_REUSED"));

    // externalRef is unique per client: a new key cannot take it again.
    let duplicate = json!({ "input": { "idempotencyKey": "acct-2", "currency": "GBP", "balanceRule": "NON_NEGATIVE", "externalRef": "cust-9" } });
    let response = app.graphql(create, duplicate).await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
    assert_eq!(app.count("accounts").await, 1);
    // ...and the failed attempt stored nothing, so its key is still free.
    let retry = json!({ "input": { "idempotencyKey": "acct-2", "currency": "GBP", "balanceRule": "NON_NEGATIVE", "externalRef": "cust-10" } });
    let response = app.graphql(create, retry).await;
    assert_eq!(
        response["data"]["createAccount"]["replayed"], false,
        "{response}"
    );

    let response = app
        .graphql(
            "query { accountByExternalRef(externalRef: \"cust-9\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(response["data"]["accountByExternalRef"]["id"], ids[0]);
}

async fn payment_by_idempotency_key_finds_the_outcome(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let source = app.create_account("JPY", "NON_NEGATIVE", None).await;
    let destination = app.create_account("JPY", "NON_NEGATIVE", None).await;
    app.fund(&source, "1000", "JPY").await;
    let response = app
        .pay("lost-response", &source, &destination, "250", "JPY")
        .await;
    let id = response["data"]["createPayment"]["payment"]["id"].clone();

    let query = "query($key: String!) { paymentByIdempotencyKey(idempotencyKey: $key) { id status amount } }";
    let found = app.graphql(query, json!({ "key": "lost-response" })).await;
    assert_eq!(
        found["data"]["paymentByIdempotencyKey"],
        json!({ "id": id, "status": "POSTED", "amount": "250" })
    );
    let missing = app.graphql(query, json!({ "key": "never-sent" })).await;
    assert!(
        missing["data"]["paymentByIdempotencyKey"].is_null(),
        "{missing}"
    );
    assert!(missing["errors"].is_null());
}
