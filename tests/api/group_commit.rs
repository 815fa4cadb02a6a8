//! Group commit: concurrent payments share transactions, yet each keeps its own
//! outcome. A bad payment fails alone and stores nothing; payments in one batch see the
//! balances the earlier ones left; a key sent twice into one batch has one effect; a
//! batch the database refuses is rerun one payment per transaction.

use futures::future::join_all;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    bad_payments_fail_alone_inside_shared_transactions,
    payments_sharing_a_transaction_see_each_others_balances,
);

fn status(response: &Value) -> Option<&str> {
    response["data"]["createPayment"]["payment"]["status"].as_str()
}

fn payment_id(response: &Value) -> Option<&str> {
    response["data"]["createPayment"]["payment"]["id"].as_str()
}

/// (payments run in batches, batches) on the first instance, from its `/metrics`.
async fn batch_counts(app: &TestApp) -> (f64, f64) {
    (
        app.metric("ledger_write_batch_payments_sum").await,
        app.metric("ledger_write_batch_payments_count").await,
    )
}

/// A USD source holding `amount` and an empty USD destination, both NON_NEGATIVE.
async fn funded_pair(app: &TestApp, amount: &str) -> (String, String) {
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, amount, "USD").await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    (source, destination)
}

async fn bad_payments_fail_alone_inside_shared_transactions(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (source, destination) = funded_pair(&app, "100.00").await;
    let euros = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let unknown = format!("acc_{}", Uuid::now_v7().simple());
    let (payments_before, batches_before) = batch_counts(&app).await;

    // 40 good payments, 10 to an account that does not exist, 10 into another currency,
    // all at once: they share transactions.
    let mut sends = Vec::new();
    for index in 0..60 {
        let to = match index % 6 {
            4 => &unknown,
            5 => &euros,
            _ => &destination,
        };
        sends.push((format!("mixed-{index}"), to.clone()));
    }
    let responses = join_all(
        sends
            .iter()
            .map(|(key, to)| app.pay_until_final(key, &source, to, "1.00", "USD")),
    )
    .await;
    for ((key, to), response) in sends.iter().zip(&responses) {
        if to == &destination {
            assert_eq!(status(response), Some("POSTED"), "{key}: {response}");
        } else if to == &unknown {
            assert_eq!(error_code(response), Some("NOT_FOUND"), "{key}: {response}");
        } else {
            assert_eq!(
                error_code(response),
                Some("CURRENCY_MISMATCH"),
                "{key}: {response}"
            );
        }
    }
    let (payments_after, batches_after) = batch_counts(&app).await;
    let payments_run = payments_after - payments_before;
    let batches = batches_after - batches_before;
    assert!(payments_run >= 60.0, "every payment went through a batch");
    assert!(
        batches < payments_run,
        "60 simultaneous payments must share transactions: {payments_run} payments in {batches} batches"
    );
    assert_eq!(app.balance(&destination).await, ("40.00".to_owned(), 40));
    assert_eq!(app.balance(&source).await, ("60.00".to_owned(), 41));
    assert_eq!(app.balance(&euros).await, ("0.00".to_owned(), 0));

    // The failed ones stored nothing: their keys are still free for a corrected retry.
    let retries = join_all(
        sends
            .iter()
            .filter(|(_, to)| to != &destination)
            .map(|(key, _)| app.pay_until_final(key, &source, &destination, "1.00", "USD")),
    )
    .await;
    for response in &retries {
        assert_eq!(status(response), Some("POSTED"), "{response}");
        assert_eq!(response["data"]["createPayment"]["replayed"], false);
    }
    assert_eq!(app.balance(&destination).await, ("60.00".to_owned(), 60));
    assert_eq!(app.count("payments").await, 61);
    app.assert_ledger_sound().await;
}

async fn payments_sharing_a_transaction_see_each_others_balances(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (source, destination) = funded_pair(&app, "10.00").await;

    // 30 payments of 1.00 out of 10.00, each of the first 10 keys sent three times at
    // once: exactly ten post, whichever transactions they land in, and every copy of
    // a key answers with the same payment.
    let mut sends = Vec::new();
    for index in 0..30 {
        sends.push(format!("drain-{index}"));
    }
    for index in 0..10 {
        sends.push(format!("drain-{index}"));
        sends.push(format!("drain-{index}"));
    }
    let responses = join_all(
        sends
            .iter()
            .map(|key| app.pay_until_final(key, &source, &destination, "1.00", "USD")),
    )
    .await;
    let mut outcome_by_key = std::collections::HashMap::new();
    for (key, response) in sends.iter().zip(&responses) {
        let id = payment_id(response).unwrap_or_else(|| panic!("{key}: {response}"));
        let outcome = (id.to_owned(), status(response).unwrap().to_owned());
        let first = outcome_by_key.entry(key.clone()).or_insert(outcome.clone());
        assert_eq!(*first, outcome, "every copy of {key} names one payment");
    }
    let posted = outcome_by_key
        .values()
        .filter(|(_, status)| status == "POSTED")
        .count();
    assert_eq!(outcome_by_key.len(), 30);
    assert_eq!(posted, 10, "exactly the funds available were spent");
    let declined: Vec<&Value> = responses
        .iter()
        .filter(|response| status(response) == Some("DECLINED"))
        .collect();
    assert!(declined.iter().all(|response| {
        response["data"]["createPayment"]["payment"]["declineReason"] == "INSUFFICIENT_FUNDS"
    }));
    assert_eq!(app.balance(&source).await, ("0.00".to_owned(), 11));
    assert_eq!(app.balance(&destination).await, ("10.00".to_owned(), 10));
    // One payment per key (plus the funding), however many copies were sent.
    assert_eq!(app.count("payments").await, 31);
    app.assert_ledger_sound().await;
}

/// A batch that fails for a reason other than contention must not fail every payment
/// in it. The test corrupts one account's stored balance rule (possible only after
/// dropping the guard triggers and the CHECK constraints, hence PostgreSQL only, in the
/// test's own database):
/// every batch that locks it fails, and its payments are rerun one per transaction,
/// so only the payments touching that account fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_batch_is_rerun_one_payment_at_a_time() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let (source, destination) = funded_pair(&app, "100.00").await;
    let corrupted = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.drop_guards().await;
    let constraints = app
        .db
        .query_all_raw(Statement::from_string(
            app.db.get_database_backend(),
            "SELECT conname FROM pg_constraint WHERE conrelid = 'accounts'::regclass AND contype = 'c'",
        ))
        .await
        .unwrap();
    for row in constraints {
        let name: String = row.try_get("", "conname").unwrap();
        app.db
            .execute_unprepared(&format!("ALTER TABLE accounts DROP CONSTRAINT \"{name}\""))
            .await
            .unwrap();
    }
    let corrupted_uuid = corrupted.trim_start_matches("acc_");
    app.db
        .execute_unprepared(&format!(
            "UPDATE accounts SET balance_rule = 'NO_SUCH_RULE' WHERE id = '{corrupted_uuid}'"
        ))
        .await
        .unwrap();

    let sends: Vec<(String, &String)> = (0..40)
        .map(|index| {
            let to = if index % 4 == 0 {
                &corrupted
            } else {
                &destination
            };
            (format!("refused-{index}"), to)
        })
        .collect();
    let responses = join_all(
        sends
            .iter()
            .map(|(key, to)| app.pay_until_final(key, &source, to, "1.00", "USD")),
    )
    .await;
    for ((key, to), response) in sends.iter().zip(&responses) {
        if *to == &corrupted {
            assert_eq!(error_code(response), Some("INTERNAL"), "{key}: {response}");
        } else {
            assert_eq!(status(response), Some("POSTED"), "{key}: {response}");
        }
    }
    assert_eq!(app.balance(&destination).await, ("30.00".to_owned(), 30));
    assert_eq!(app.balance(&source).await, ("70.00".to_owned(), 31));
    assert_eq!(app.count("payments").await, 31);
}
