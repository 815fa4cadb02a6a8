//! Bulk payments (`createPaymentBatch`): independent payments in one request, each under
//! its own key with its own outcome, decided in order; on both backends, every test
//! ending with an audit of the stored rows.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, Backend, TestApp, error_code, spawn_app, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    each_payment_of_a_batch_gets_its_own_outcome_in_order,
    a_resent_batch_replays_every_payment,
    racing_batches_with_overlapping_keys_make_one_payment_per_key,
    a_thousand_payments_go_through_one_batch,
    a_batch_with_no_payments_or_too_many_is_refused_whole,
);

const RESULT_FIELDS: &str = "results {
    replayed
    error { code message }
    payment { id idempotencyKey status declineReason amount holdExpiresAt
              entries { direction amount } }
}";

async fn create_batch(app: &TestApp, payments: &[Value]) -> Value {
    create_batch_at(app, &app.address, payments).await
}

/// `create_batch` against the instance at `address`.
async fn create_batch_at(app: &TestApp, address: &str, payments: &[Value]) -> Value {
    app.graphql_at(
        address,
        &format!(
            "mutation($input: CreatePaymentBatchInput!) {{
               createPaymentBatch(input: $input) {{ {RESULT_FIELDS} }} }}"
        ),
        json!({ "input": { "payments": payments } }),
    )
    .await
}

fn item(key: &str, from: &str, to: &str, amount: &str, currency: &str) -> Value {
    json!({ "idempotencyKey": key, "fromAccountId": from, "toAccountId": to,
            "amount": amount, "currency": currency })
}

fn results(response: &Value) -> &Vec<Value> {
    response["data"]["createPaymentBatch"]["results"]
        .as_array()
        .unwrap_or_else(|| panic!("a batch answer: {response}"))
}

/// (status or error code, replayed) of each result.
fn summary(response: &Value) -> Vec<(String, Value)> {
    results(response)
        .iter()
        .map(|result| match result["error"]["code"].as_str() {
            Some(code) => {
                assert!(result["payment"].is_null(), "{result}");
                assert!(result["replayed"].is_null(), "{result}");
                assert!(!result["error"]["message"].as_str().unwrap().is_empty());
                (code.to_owned(), Value::Null)
            }
            None => (
                result["payment"]["status"].as_str().unwrap().to_owned(),
                result["replayed"].clone(),
            ),
        })
        .collect()
}

fn expected(rows: &[(&str, Value)]) -> Vec<(String, Value)> {
    rows.iter()
        .map(|(outcome, replayed)| ((*outcome).to_owned(), replayed.clone()))
        .collect()
}

async fn each_payment_of_a_batch_gets_its_own_outcome_in_order(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let euros = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let single = app.pay("single-1", &payer, &payee, "1.00", "USD").await;
    let single_id = single["data"]["createPayment"]["payment"]["id"].clone();
    let unknown = "acc_00000000000000000000000000000000";

    let mut hold = item("b-hold", &payer, &payee, "1.00", "USD");
    hold["pending"] = json!(true);
    let batch = [
        item("b-1", &payer, &payee, "4.00", "USD"),
        item("b-2", &payer, &payee, "4.00", "USD"),
        // 9.00 - 8.00 leaves 1.00: declined, an outcome and not an error.
        item("b-3", &payer, &payee, "4.00", "USD"),
        item("b-unknown", &payer, unknown, "1.00", "USD"),
        item("b-negative", &payer, &payee, "-1.00", "USD"),
        item("b-euros", &payer, &euros, "1.00", "USD"),
        hold,
        item("b-1", &payer, &payee, "4.00", "USD"),
        item("b-1", &payer, &payee, "4.01", "USD"),
        item("single-1", &payer, &payee, "1.00", "USD"),
        item("single-1", &payer, &payee, "2.00", "USD"),
    ];
    let response = create_batch(&app, &batch).await;
    assert_eq!(
        summary(&response),
        expected(&[
            ("POSTED", json!(false)),
            ("POSTED", json!(false)),
            ("DECLINED", json!(false)),
            ("NOT_FOUND", Value::Null),
            ("BAD_USER_INPUT", Value::Null),
            ("CURRENCY_MISMATCH", Value::Null),
            ("PENDING", json!(false)),
            ("POSTED", json!(true)),
            ("IDEMPOTENCY_KEY_REUSED", Value::Null),
            ("POSTED", json!(true)),
            ("IDEMPOTENCY_KEY_REUSED", Value::Null),
        ]),
        "{response}"
    );
    let answered = results(&response);
    assert_eq!(
        answered[2]["payment"]["declineReason"],
        "INSUFFICIENT_FUNDS"
    );
    assert_eq!(answered[7]["payment"]["id"], answered[0]["payment"]["id"]);
    assert_eq!(answered[9]["payment"]["id"], single_id);
    assert_eq!(answered[0]["payment"]["idempotencyKey"], "b-1");
    assert_eq!(
        answered[1]["payment"]["entries"],
        json!([{ "direction": "DEBIT", "amount": "4.00" }, { "direction": "CREDIT", "amount": "4.00" }])
    );
    // 10.00 - 1.00 (alone) - 4.00 - 4.00, and 1.00 of what is left held.
    assert_eq!(app.balance(&payer).await.0, "1.00");
    assert_eq!(app.balance(&payee).await.0, "9.00");
    assert_eq!(
        app.count("payments").await,
        6,
        "funding, single-1, b-1, b-2, b-3, b-hold"
    );
    app.assert_ledger_sound().await;
}

async fn a_resent_batch_replays_every_payment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "5.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let batch: Vec<Value> = (0..8)
        .map(|n| item(&format!("resend-{n}"), &payer, &payee, "1.00", "USD"))
        .collect();
    let first = create_batch(&app, &batch).await;
    let outcomes: Vec<String> = summary(&first)
        .into_iter()
        .map(|(outcome, _)| outcome)
        .collect();
    assert_eq!(
        outcomes,
        [
            "POSTED", "POSTED", "POSTED", "POSTED", "POSTED", "DECLINED", "DECLINED", "DECLINED"
        ]
    );
    let again = create_batch(&app, &batch).await;
    for (sent, resent) in results(&first).iter().zip(results(&again)) {
        assert_eq!(resent["replayed"], true, "{again}");
        assert_eq!(resent["payment"]["id"], sent["payment"]["id"]);
        assert_eq!(resent["payment"]["status"], sent["payment"]["status"]);
    }
    // Its answer lost, the batch goes again through another instance, which has never
    // seen these keys: the database's records answer every one, with one look-up.
    let other = app.spawn_replica().await;
    let elsewhere = create_batch_at(&app, &other.address, &batch).await;
    for (sent, resent) in results(&first).iter().zip(results(&elsewhere)) {
        assert_eq!(resent["replayed"], true, "{elsewhere}");
        assert_eq!(resent["payment"]["id"], sent["payment"]["id"]);
    }
    // A changed item under a used key is refused there too; the others replay.
    let mut changed = batch.clone();
    changed[3]["amount"] = json!("2.00");
    let refused = create_batch_at(&app, &other.address, &changed).await;
    assert_eq!(
        summary(&refused)[3],
        ("IDEMPOTENCY_KEY_REUSED".to_owned(), Value::Null),
        "{refused}"
    );
    assert_eq!(results(&refused)[4]["replayed"], true, "{refused}");
    assert_eq!(app.balance(&payer).await.0, "0.00");
    assert_eq!(app.balance(&payee).await.0, "5.00");
    assert_eq!(app.count("payments").await, 9);
    app.assert_ledger_sound().await;
}

/// Eight batches at once, each with twenty of thirty keys (same input per key): one
/// payment per key, each key answered as made once and replayed the other times.
async fn racing_batches_with_overlapping_keys_make_one_payment_per_key(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "100.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let batches: Vec<Vec<Value>> = (0..8)
        .map(|batch| {
            (0..20)
                .map(|n| {
                    let key = (batch * 7 + n) % 30;
                    item(&format!("race-{key}"), &payer, &payee, "1.00", "USD")
                })
                .collect()
        })
        .collect();
    let responses = join_all(batches.iter().map(|batch| async {
        loop {
            let response = create_batch(&app, batch).await;
            let busy = results(&response)
                .iter()
                .any(|result| result["error"]["code"] == "RETRY_LATER");
            if !busy {
                return response;
            }
        }
    }))
    .await;
    let mut made: std::collections::HashMap<String, (Value, usize)> = Default::default();
    for (batch, response) in batches.iter().zip(&responses) {
        for (sent, result) in batch.iter().zip(results(response)) {
            assert_eq!(result["payment"]["status"], "POSTED", "{response}");
            let key = sent["idempotencyKey"].as_str().unwrap().to_owned();
            let entry = made
                .entry(key)
                .or_insert((result["payment"]["id"].clone(), 0));
            assert_eq!(entry.0, result["payment"]["id"], "one payment per key");
            entry.1 += usize::from(result["replayed"] == false);
        }
    }
    assert_eq!(made.len(), 30);
    assert!(made.values().all(|(_, fresh)| *fresh == 1), "{made:?}");
    assert_eq!(app.balance(&payer).await.0, "70.00");
    assert_eq!(app.count("payments").await, 31);
    app.assert_ledger_sound().await;
}

async fn a_thousand_payments_go_through_one_batch(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "1000.00", "USD").await;
    let payees = [
        app.create_account("USD", "NON_NEGATIVE", None).await,
        app.create_account("USD", "NON_NEGATIVE", None).await,
    ];
    let batches_before = app.metric("ledger_write_batch_payments_count").await;
    // Long keys and descriptions: about 450 bytes a payment, over the 256 KiB a
    // request without a key may send, within what a client's may.
    let batch: Vec<Value> = (0..1000)
        .map(|n| {
            let mut payment = item(
                &format!("payout-2026-12-{n:0>48}"),
                &payer,
                &payees[n % 2],
                "1.00",
                "USD",
            );
            payment["description"] = json!(format!("{n:x>200}"));
            payment
        })
        .collect();
    assert!(json!(batch).to_string().len() > 400 * 1024);
    let response = create_batch(&app, &batch).await;
    assert!(
        summary(&response)
            .iter()
            .all(|(outcome, replayed)| outcome == "POSTED" && *replayed == false),
        "{response}"
    );
    assert_eq!(
        app.metric("ledger_write_batch_payments_count").await - batches_before,
        1.0,
        "a thousand payments of one request in one batch"
    );
    assert_eq!(app.balance(&payer).await.0, "0.00");
    assert_eq!(app.balance(&payees[0]).await.0, "500.00");
    assert_eq!(app.balance(&payees[1]).await.0, "500.00");
    app.assert_ledger_sound().await;
}

async fn a_batch_with_no_payments_or_too_many_is_refused_whole(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "2000.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let payments_before = app.count("payments").await;
    let empty = create_batch(&app, &[]).await;
    assert_eq!(error_code(&empty), Some("BAD_USER_INPUT"), "{empty}");
    let too_many: Vec<Value> = (0..1001)
        .map(|n| item(&format!("over-{n}"), &payer, &payee, "1.00", "USD"))
        .collect();
    let refused = create_batch(&app, &too_many).await;
    assert_eq!(error_code(&refused), Some("BAD_USER_INPUT"), "{refused}");
    assert!(
        refused["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("1 to 1000"),
        "{refused}"
    );
    assert_eq!(app.count("payments").await, payments_before);
    assert_eq!(app.balance(&payer).await.0, "2000.00");
    app.assert_ledger_sound().await;
}

/// A batch counts against the client's concurrent requests by its size: with room for
/// 3 requests and 2 running (waiting for a row lock), a batch of 200 payments (4
/// requests' worth, at most the whole limit) is refused at once with RETRY_LATER and
/// changes nothing; once they finish, it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_counts_against_the_client_limit_by_its_size() {
    let options = AppOptions {
        client_concurrent_requests_max: Some(3),
        lock_timeout_ms: Some(10_000),
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let payer = app.create_account("USD", "UNBOUNDED", None).await;
    let locked = app.create_account("USD", "UNBOUNDED", None).await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let session = crate::stalls::hold_row_lock(&app, &locked).await;
    let batch: Vec<Value> = (0..200)
        .map(|n| item(&format!("sized-{n}"), &payer, &payee, "1.00", "USD"))
        .collect();
    let keys = ["waiting-0", "waiting-1"];
    let waiting = join_all(
        keys.iter()
            .map(|key| app.pay(key, &locked, &payee, "1.00", "USD")),
    );
    let batch_while_waiting = async {
        // The two payments are running (waiting for the lock) before the batch goes.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let refused = create_batch(&app, &batch).await;
        let stored = app.count("payments").await;
        session.rollback().await.unwrap();
        (refused, stored)
    };
    let (waited, (refused, stored)) = tokio::join!(waiting, batch_while_waiting);
    assert_eq!(error_code(&refused), Some("RETRY_LATER"), "{refused}");
    assert_eq!(stored, 0, "a refused batch stores nothing");
    for response in waited {
        assert_eq!(
            response["data"]["createPayment"]["payment"]["status"], "POSTED",
            "{response}"
        );
    }
    let response = create_batch(&app, &batch).await;
    assert_eq!(results(&response).len(), 200, "{response}");
    assert!(
        results(&response)
            .iter()
            .all(|result| result["payment"]["status"] == "POSTED"),
        "{response}"
    );
    assert_eq!(app.balance(&payee).await.0, "202.00");
    app.assert_ledger_sound().await;
}
