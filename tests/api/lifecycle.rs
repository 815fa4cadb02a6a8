//! Holds (authorize, then capture or void, with expiry) and refunds, over HTTP, on both
//! backends; every test ends by auditing the ledger from its stored rows.

use std::time::Duration;

use futures::future::join_all;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    AppOptions, Backend, TestApp, assert_audit_finds, error_code, run, spawn_app, spawn_app_with,
    uuid_of,
};
use crate::on_both_backends;

on_both_backends!(
    a_hold_holds_until_captured_whole,
    a_partial_capture_posts_part_and_releases_the_rest,
    a_void_releases_the_hold,
    a_hold_expires_by_the_clock,
    holds_are_decided_against_what_is_available,
    one_of_fifty_racing_captures_and_voids_settles_a_hold,
    racing_refunds_never_exceed_the_payment,
    a_refund_is_declined_by_the_payees_rule,
    transitions_replay_and_refuse_reused_keys,
    another_clients_payment_is_not_found,
    bad_transitions_change_nothing,
    the_database_and_the_audit_guard_holds_and_refunds,
    another_instance_sees_holds_within_the_cache_bound,
    a_capture_lands_after_every_feed_cursor,
    payments_are_listed_by_their_status_now
);

const PAYMENT_FIELDS: &str = "id status amount postedAmount holdExpiresAt settledAt declineReason
    refundedAmount refundOf { id } refunds { id status amount }
    entries { direction amount account { id } }";

async fn hold(app: &TestApp, key: &str, from: &str, to: &str, amount: &str) -> Value {
    hold_until(app, key, from, to, amount, None).await
}

async fn hold_until(
    app: &TestApp,
    key: &str,
    from: &str,
    to: &str,
    amount: &str,
    expires_at: Option<String>,
) -> Value {
    let response = app
        .graphql(
            &format!(
                "mutation($input: CreatePaymentInput!) {{
                   createPayment(input: $input) {{ replayed payment {{ {PAYMENT_FIELDS} }} }} }}"
            ),
            json!({ "input": {
                "idempotencyKey": key, "fromAccountId": from, "toAccountId": to,
                "amount": amount, "currency": "USD", "pending": true,
                "holdExpiresAt": expires_at,
            }}),
        )
        .await;
    if response["data"]["createPayment"].is_object() {
        response["data"]["createPayment"].clone()
    } else {
        response
    }
}

/// Sends one of the transition mutations and returns its payload, or the whole response
/// when it failed.
async fn transition(app: &TestApp, mutation: &str, input: Value) -> Value {
    transition_as(app, None, mutation, input).await
}

async fn transition_as(app: &TestApp, key: Option<&str>, mutation: &str, input: Value) -> Value {
    let input_type = format!("{}{}Input", mutation[..1].to_uppercase(), &mutation[1..]);
    let query = format!(
        "mutation($input: {input_type}!) {{
           {mutation}(input: $input) {{ replayed payment {{ {PAYMENT_FIELDS} }} }} }}"
    );
    let response = match key {
        Some(key) => {
            app.graphql_as(Some(key), &query, json!({ "input": input }))
                .await
        }
        None => app.graphql(&query, json!({ "input": input })).await,
    };
    if response["data"][mutation].is_object() {
        response["data"][mutation].clone()
    } else {
        response
    }
}

async fn capture(app: &TestApp, key: &str, payment: &str, amount: Option<&str>) -> Value {
    transition(
        app,
        "capturePayment",
        json!({ "idempotencyKey": key, "paymentId": payment, "amount": amount }),
    )
    .await
}

async fn void(app: &TestApp, key: &str, payment: &str) -> Value {
    transition(
        app,
        "voidPayment",
        json!({ "idempotencyKey": key, "paymentId": payment }),
    )
    .await
}

async fn refund(app: &TestApp, key: &str, payment: &str, amount: Option<&str>) -> Value {
    transition(
        app,
        "refundPayment",
        json!({ "idempotencyKey": key, "paymentId": payment, "amount": amount,
                "reason": "returned goods" }),
    )
    .await
}

/// (amount, pending, available, version) read STRONG, and the same read CACHED.
async fn balances(app: &TestApp, account: &str) -> [(String, String, String, i64); 2] {
    let response = app
        .graphql(
            "query($id: ID!) { account(id: $id) {
               strong: balance(consistency: STRONG) { amount pending available version }
               cached: balance { amount pending available version } } }",
            json!({ "id": account }),
        )
        .await;
    ["strong", "cached"].map(|name| {
        let balance = &response["data"]["account"][name];
        let text = |field: &str| {
            balance[field]
                .as_str()
                .unwrap_or_else(|| panic!("{response}"))
                .to_owned()
        };
        (
            text("amount"),
            text("pending"),
            text("available"),
            balance["version"].as_i64().unwrap(),
        )
    })
}

async fn assert_balance(
    app: &TestApp,
    account: &str,
    amount: &str,
    pending: &str,
    available: &str,
) {
    for (name, read) in ["STRONG", "CACHED"]
        .iter()
        .zip(balances(app, account).await)
    {
        assert_eq!(
            (read.0.as_str(), read.1.as_str(), read.2.as_str()),
            (amount, pending, available),
            "{name} balance of {account}"
        );
    }
}

/// The id of the payment a `createPayment` response answers with.
fn paid_id_of(response: &Value) -> String {
    response["data"]["createPayment"]["payment"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("a payment: {response}"))
        .to_owned()
}

/// A payer with 100.00 and a payee, a hold of 20.00 and a payment of 10.00 between them.
struct HeldAndPaid {
    payer: String,
    payee: String,
    hold: String,
    paid: String,
}

async fn held_and_paid(app: &TestApp) -> HeldAndPaid {
    let (payer, payee) = payer_and_payee(app).await;
    let held = hold(app, "hold-1", &payer, &payee, "20.00").await;
    let hold = held["payment"]["id"].as_str().unwrap().to_owned();
    let paid = app.pay("pay-1", &payer, &payee, "10.00", "USD").await;
    HeldAndPaid {
        paid: paid_id_of(&paid),
        payer,
        payee,
        hold,
    }
}

/// A funded NON_NEGATIVE payer with 100.00 and an empty NON_NEGATIVE payee.
async fn payer_and_payee(app: &TestApp) -> (String, String) {
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "100.00", "USD").await;
    (payer, payee)
}

fn key() -> String {
    Uuid::new_v4().to_string()
}

async fn a_hold_holds_until_captured_whole(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let held = hold(&app, "hold-1", &payer, &payee, "30.00").await;
    let payment = &held["payment"];
    assert_eq!(payment["status"], "PENDING", "{held}");
    assert_eq!(payment["postedAmount"], "0.00");
    assert!(payment["holdExpiresAt"].is_string());
    assert_eq!(payment["entries"], json!([]));
    assert_balance(&app, &payer, "100.00", "30.00", "70.00").await;
    assert_balance(&app, &payee, "0.00", "0.00", "0.00").await;

    let id = payment["id"].as_str().unwrap();
    let captured = capture(&app, "capture-1", id, None).await;
    let payment = &captured["payment"];
    assert_eq!(captured["replayed"], false, "{captured}");
    assert_eq!(payment["status"], "POSTED");
    assert_eq!(payment["amount"], "30.00");
    assert_eq!(payment["postedAmount"], "30.00");
    assert!(payment["settledAt"].is_string());
    assert_eq!(
        payment["entries"].as_array().unwrap().len(),
        2,
        "{captured}"
    );
    assert_balance(&app, &payer, "70.00", "0.00", "70.00").await;
    assert_balance(&app, &payee, "30.00", "0.00", "30.00").await;
    app.assert_ledger_sound().await;
}

async fn a_partial_capture_posts_part_and_releases_the_rest(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let held = hold(&app, "hold-1", &payer, &payee, "80.00").await;
    let id = held["payment"]["id"].as_str().unwrap().to_owned();
    let captured = capture(&app, "capture-1", &id, Some("25.5")).await;
    let payment = &captured["payment"];
    assert_eq!(payment["status"], "POSTED", "{captured}");
    assert_eq!(
        (&payment["amount"], &payment["postedAmount"]),
        (&json!("80.00"), &json!("25.50"))
    );
    let amounts: Vec<&Value> = payment["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["amount"])
        .collect();
    assert_eq!(amounts, [&json!("25.50"), &json!("25.50")]);
    assert_balance(&app, &payer, "74.50", "0.00", "74.50").await;
    assert_balance(&app, &payee, "25.50", "0.00", "25.50").await;
    // Settled once: the rest cannot be captured later.
    let again = capture(&app, "capture-2", &id, Some("1.00")).await;
    assert_eq!(error_code(&again), Some("PAYMENT_NOT_PENDING"), "{again}");
    app.assert_ledger_sound().await;
}

async fn a_void_releases_the_hold(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let held = hold(&app, "hold-1", &payer, &payee, "100.00").await;
    let id = held["payment"]["id"].as_str().unwrap().to_owned();
    assert_balance(&app, &payer, "100.00", "100.00", "0.00").await;
    let voided = void(&app, "void-1", &id).await;
    assert_eq!(voided["payment"]["status"], "VOIDED", "{voided}");
    assert_eq!(voided["payment"]["postedAmount"], "0.00");
    assert_eq!(voided["payment"]["entries"], json!([]));
    assert_balance(&app, &payer, "100.00", "0.00", "100.00").await;
    for (mutation, response) in [
        ("capture", capture(&app, "capture-1", &id, None).await),
        ("void", void(&app, "void-2", &id).await),
    ] {
        assert_eq!(
            error_code(&response),
            Some("PAYMENT_NOT_PENDING"),
            "{mutation} after void: {response}"
        );
    }
    app.assert_ledger_sound().await;
}

async fn a_hold_expires_by_the_clock(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let expires_at = (chrono::Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339();
    let held = hold_until(&app, "hold-1", &payer, &payee, "60.00", Some(expires_at)).await;
    let id = held["payment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(held["payment"]["status"], "PENDING", "{held}");
    // Warm the caches with the held balance, then let the hold expire.
    assert_balance(&app, &payer, "100.00", "60.00", "40.00").await;
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert_balance(&app, &payer, "100.00", "0.00", "100.00").await;
    let read = app
        .graphql(
            "query($id: ID!) { payment(id: $id) { status postedAmount } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(read["data"]["payment"]["status"], "EXPIRED", "{read}");
    let late = capture(&app, "capture-1", &id, None).await;
    assert_eq!(error_code(&late), Some("PAYMENT_NOT_PENDING"), "{late}");
    // The released amount can be spent, and the expired hold leaves the working set
    // with that write.
    let paid = app.pay("pay-1", &payer, &payee, "100.00", "USD").await;
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{paid}"
    );
    assert_eq!(app.count("live_holds").await, 0);
    app.assert_ledger_sound().await;
}

async fn holds_are_decided_against_what_is_available(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let first = hold(&app, "hold-1", &payer, &payee, "70.00").await;
    assert_eq!(first["payment"]["status"], "PENDING", "{first}");
    let too_big = hold(&app, "hold-2", &payer, &payee, "30.01").await;
    assert_eq!(too_big["payment"]["status"], "DECLINED", "{too_big}");
    assert_eq!(too_big["payment"]["declineReason"], "INSUFFICIENT_FUNDS");
    let paid = app.pay("pay-1", &payer, &payee, "30.01", "USD").await;
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["declineReason"], "INSUFFICIENT_FUNDS",
        "a payment is decided against posted minus pending: {paid}"
    );
    let fits = app.pay("pay-2", &payer, &payee, "30.00", "USD").await;
    assert_eq!(
        fits["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{fits}"
    );
    assert_balance(&app, &payer, "70.00", "70.00", "0.00").await;
    app.assert_ledger_sound().await;
}

async fn one_of_fifty_racing_captures_and_voids_settles_a_hold(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    for round in 0..2 {
        let held = hold(&app, &key(), &payer, &payee, "10.00").await;
        let id = held["payment"]["id"].as_str().unwrap().to_owned();
        let answers = join_all((0..50).map(|attempt| {
            let (app, id) = (&app, id.clone());
            async move {
                // Round 0 races captures against voids; round 1 only captures.
                if round == 0 && attempt % 2 == 1 {
                    void(app, &key(), &id).await
                } else {
                    capture(app, &key(), &id, Some("4.00")).await
                }
            }
        }))
        .await;
        let won: Vec<&Value> = answers
            .iter()
            .filter(|answer| answer["payment"].is_object())
            .collect();
        assert_eq!(won.len(), 1, "round {round}: {answers:?}");
        for answer in answers
            .iter()
            .filter(|answer| !answer["payment"].is_object())
        {
            assert_eq!(error_code(answer), Some("PAYMENT_NOT_PENDING"), "{answer}");
        }
    }
    let [strong, _] = balances(&app, &payer).await;
    assert_eq!(strong.1, "0.00", "no hold is left pending");
    app.assert_ledger_sound().await;
}

async fn racing_refunds_never_exceed_the_payment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let paid = app.pay("pay-1", &payer, &payee, "10.00", "USD").await;
    let id = paid_id_of(&paid);
    let keys: Vec<String> = (0..20).map(|_| key()).collect();
    let answers = join_all(keys.iter().map(|key| refund(&app, key, &id, Some("1.00")))).await;
    let posted = answers
        .iter()
        .filter(|answer| answer["payment"]["status"] == "POSTED")
        .count();
    assert_eq!(posted, 10, "{answers:?}");
    for answer in answers
        .iter()
        .filter(|answer| !answer["payment"].is_object())
    {
        assert_eq!(
            error_code(answer),
            Some("REFUND_EXCEEDS_PAYMENT"),
            "{answer}"
        );
    }
    let read = app
        .graphql(
            "query($id: ID!) { payment(id: $id) { refundedAmount refunds { refundOf { id } } } }",
            json!({ "id": id }),
        )
        .await;
    assert_eq!(read["data"]["payment"]["refundedAmount"], "10.00", "{read}");
    assert_eq!(
        read["data"]["payment"]["refunds"].as_array().unwrap().len(),
        10
    );
    assert_eq!(
        read["data"]["payment"]["refunds"][0]["refundOf"]["id"],
        id.as_str()
    );
    assert_balance(&app, &payer, "100.00", "0.00", "100.00").await;
    assert_balance(&app, &payee, "0.00", "0.00", "0.00").await;
    app.assert_ledger_sound().await;
}

async fn a_refund_is_declined_by_the_payees_rule(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let paid = app.pay("pay-1", &payer, &payee, "40.00", "USD").await;
    let id = paid_id_of(&paid);
    // The payee spends what it was paid; giving it back no longer fits its rule.
    let elsewhere = app.create_account("USD", "NON_NEGATIVE", None).await;
    let spent = app.pay("pay-2", &payee, &elsewhere, "40.00", "USD").await;
    assert_eq!(
        spent["data"]["createPayment"]["payment"]["status"],
        "POSTED"
    );
    let refunded = refund(&app, "refund-1", &id, None).await;
    let payment = &refunded["payment"];
    assert_eq!(payment["status"], "DECLINED", "{refunded}");
    assert_eq!(payment["declineReason"], "INSUFFICIENT_FUNDS");
    assert_eq!(payment["amount"], "40.00");
    assert_eq!(payment["refundOf"]["id"], id.as_str());
    // The decline is stored and replayed, and took nothing from what is refundable.
    let again = refund(&app, "refund-1", &id, None).await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["payment"]["id"], payment["id"]);
    app.fund(&payee, "15.00", "USD").await;
    let part = refund(&app, "refund-2", &id, Some("15")).await;
    assert_eq!(part["payment"]["status"], "POSTED", "{part}");
    app.assert_ledger_sound().await;
}

async fn transitions_replay_and_refuse_reused_keys(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let first = hold(&app, "hold-1", &payer, &payee, "20.00").await;
    let replayed = hold(&app, "hold-1", &payer, &payee, "20.00").await;
    assert_eq!(replayed["replayed"], true, "{replayed}");
    assert_eq!(replayed["payment"]["id"], first["payment"]["id"]);
    let reused = hold(&app, "hold-1", &payer, &payee, "21.00").await;
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    // A plain payment with the hold's key is other input too.
    let plain = app.pay("hold-1", &payer, &payee, "20.00", "USD").await;
    assert_eq!(
        error_code(&plain),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{plain}"
    );

    let id = first["payment"]["id"].as_str().unwrap().to_owned();
    let captured = capture(&app, "capture-1", &id, Some("5")).await;
    assert_eq!(captured["replayed"], false, "{captured}");
    let again = capture(&app, "capture-1", &id, Some("5.00")).await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["payment"]["postedAmount"], "5.00");
    let other = capture(&app, "capture-1", &id, Some("6")).await;
    assert_eq!(
        error_code(&other),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{other}"
    );

    let second = hold(&app, "hold-2", &payer, &payee, "1.00").await;
    let second_id = second["payment"]["id"].as_str().unwrap().to_owned();
    assert_eq!(void(&app, "void-1", &second_id).await["replayed"], false);
    assert_eq!(void(&app, "void-1", &second_id).await["replayed"], true);
    let wrong = void(&app, "capture-1", &second_id).await;
    assert_eq!(
        error_code(&wrong),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{wrong}"
    );

    let refunded = refund(&app, "refund-1", &id, Some("2")).await;
    assert_eq!(refunded["replayed"], false, "{refunded}");
    let again = refund(&app, "refund-1", &id, Some("2.0")).await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["payment"]["id"], refunded["payment"]["id"]);
    let more = refund(&app, "refund-1", &id, Some("3")).await;
    assert_eq!(error_code(&more), Some("IDEMPOTENCY_KEY_REUSED"), "{more}");
    assert_balance(&app, &payer, "97.00", "0.00", "97.00").await;
    app.assert_ledger_sound().await;
}

async fn another_clients_payment_is_not_found(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let HeldAndPaid {
        payer,
        hold: id,
        paid: paid_id,
        ..
    } = held_and_paid(&app).await;
    let intruder = app.other_client_key().await;
    for (mutation, input) in [
        (
            "capturePayment",
            json!({ "idempotencyKey": "k1", "paymentId": id }),
        ),
        (
            "voidPayment",
            json!({ "idempotencyKey": "k2", "paymentId": id }),
        ),
        (
            "refundPayment",
            json!({ "idempotencyKey": "k3", "paymentId": paid_id }),
        ),
    ] {
        let response = transition_as(&app, Some(&intruder), mutation, input).await;
        assert_eq!(
            error_code(&response),
            Some("NOT_FOUND"),
            "{mutation}: {response}"
        );
    }
    assert_balance(&app, &payer, "90.00", "20.00", "70.00").await;
    app.assert_ledger_sound().await;
}

async fn bad_transitions_change_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let HeldAndPaid {
        payer,
        payee,
        hold: id,
        paid: paid_id,
    } = held_and_paid(&app).await;
    let account_id = payer.clone();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "capturePayment",
            json!({ "paymentId": id, "amount": "0" }),
            "BAD_USER_INPUT",
        ),
        (
            "capturePayment",
            json!({ "paymentId": id, "amount": "-1" }),
            "BAD_USER_INPUT",
        ),
        (
            "capturePayment",
            json!({ "paymentId": id, "amount": "1.001" }),
            "BAD_USER_INPUT",
        ),
        (
            "capturePayment",
            json!({ "paymentId": id, "amount": "20.01" }),
            "CAPTURE_EXCEEDS_HOLD",
        ),
        (
            "capturePayment",
            json!({ "paymentId": id, "amount": "99999999999999999999999" }),
            "BAD_USER_INPUT",
        ),
        (
            "capturePayment",
            json!({ "paymentId": paid_id }),
            "PAYMENT_NOT_PENDING",
        ),
        (
            "voidPayment",
            json!({ "paymentId": paid_id }),
            "PAYMENT_NOT_PENDING",
        ),
        (
            "capturePayment",
            json!({ "paymentId": account_id }),
            "BAD_USER_INPUT",
        ),
        (
            "voidPayment",
            json!({ "paymentId": "pay_nonsense" }),
            "BAD_USER_INPUT",
        ),
        (
            "refundPayment",
            json!({ "paymentId": id }),
            "REFUND_EXCEEDS_PAYMENT",
        ),
        (
            "refundPayment",
            json!({ "paymentId": paid_id, "amount": "10.01" }),
            "REFUND_EXCEEDS_PAYMENT",
        ),
        (
            "refundPayment",
            json!({ "paymentId": paid_id, "amount": "0.00" }),
            "BAD_USER_INPUT",
        ),
        (
            "refundPayment",
            json!({ "paymentId": format!("pay_{}", Uuid::now_v7().simple()) }),
            "NOT_FOUND",
        ),
    ];
    for (mutation, mut input, code) in cases {
        input["idempotencyKey"] = json!(key());
        let response = transition(&app, mutation, input.clone()).await;
        assert_eq!(
            error_code(&response),
            Some(code),
            "{mutation} {input}: {response}"
        );
    }
    for (expires_at, pending) in [
        (Some("2001-01-01T00:00:00Z"), true),
        (Some("2999-01-01T00:00:00Z"), true),
        (Some("2030-01-01T00:00:00Z"), false),
    ] {
        let response = app
            .graphql(
                "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { payment { id } } }",
                json!({ "input": {
                    "idempotencyKey": key(), "fromAccountId": payer, "toAccountId": payee,
                    "amount": "1.00", "currency": "USD", "pending": pending,
                    "holdExpiresAt": expires_at,
                }}),
            )
            .await;
        assert_eq!(
            error_code(&response),
            Some("BAD_USER_INPUT"),
            "{expires_at:?}: {response}"
        );
    }
    assert_balance(&app, &payer, "90.00", "20.00", "70.00").await;
    assert_eq!(app.count("payment_settlements").await, 0);
    app.assert_ledger_sound().await;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Same,
    Back,
}

/// Inserts by hand a refund of `original` of one unit more than it, going `direction`.
async fn refund_by_hand(
    app: &TestApp,
    original: Uuid,
    direction: Direction,
    status: &str,
) -> Result<u64, sea_orm::DbErr> {
    let accounts = match direction {
        Direction::Same => "from_account_id, to_account_id",
        Direction::Back => "to_account_id, from_account_id",
    };
    let decline_reason = if status == "DECLINED" {
        "'INSUFFICIENT_FUNDS'"
    } else {
        "NULL"
    };
    let sql = format!(
        "INSERT INTO payments (id, client_id, idempotency_key, from_account_id, to_account_id, \
         amount_minor, currency, status, decline_reason, created_at, refund_of, feed_seq) \
         SELECT ?, client_id, '{}', {accounts}, amount_minor + 1, currency, '{status}', \
         {decline_reason}, created_at, id, 0 FROM payments WHERE id = ?",
        Uuid::new_v4()
    );
    run(app, &sql, &[Uuid::now_v7(), original]).await
}

async fn the_database_and_the_audit_guard_holds_and_refunds(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let HeldAndPaid {
        payer,
        payee,
        hold: hold_id,
        paid: paid_id,
    } = held_and_paid(&app).await;
    let (hold_id, paid_id) = (uuid_of(&hold_id), uuid_of(&paid_id));
    let other = hold(&app, "hold-2", &payer, &payee, "5.00").await;
    let other_payment = other["payment"]["id"].as_str().unwrap().to_owned();
    void(&app, "void-2", &other_payment).await;
    let other_id = uuid_of(&other_payment);
    let payer_id = uuid_of(&payer);

    // The database refuses, on both backends:
    let both: [(&str, Uuid); 4] = [
        (
            "UPDATE accounts SET pending_minor = 1000000 WHERE id = ?",
            payer_id,
        ),
        (
            "UPDATE live_holds SET amount_minor = 1 WHERE payment_id = ?",
            hold_id,
        ),
        (
            "UPDATE payment_settlements SET kind = 'CAPTURE' WHERE payment_id = ?",
            other_id,
        ),
        (
            "DELETE FROM payment_settlements WHERE payment_id = ?",
            other_id,
        ),
    ];
    // and on PostgreSQL, whose statement-level checks see other tables' rows:
    let postgres_only: [(&str, Uuid); 2] = [
        (
            "UPDATE accounts SET pending_minor = 0 WHERE id = ?",
            payer_id,
        ),
        ("DELETE FROM live_holds WHERE payment_id = ?", hold_id),
    ];
    let statements: Vec<&(&str, Uuid)> = match backend {
        Backend::Postgres => both.iter().chain(&postgres_only).collect(),
        Backend::Sqlite => both.iter().collect(),
    };
    for (sql, id) in &statements {
        assert!(run(&app, sql, &[*id]).await.is_err(), "not refused: {sql}");
    }
    app.assert_ledger_sound().await;

    // With the guards gone (on PostgreSQL, the balance rule's CHECK too), the audit
    // still finds each corruption.
    app.drop_guards().await;
    if backend == Backend::Postgres {
        app.db
            .execute_unprepared("ALTER TABLE accounts DROP CONSTRAINT accounts_pending_within_rule")
            .await
            .unwrap();
    }
    assert_eq!(run(&app, both[0].0, &[payer_id]).await.unwrap(), 1);
    assert_audit_finds(&app, "no account breaks its balance rule").await;
    assert_audit_finds(&app, "an account's pending is the sum").await;
    run(
        &app,
        "UPDATE accounts SET pending_minor = 0 WHERE id = ?",
        &[payer_id],
    )
    .await
    .unwrap();
    run(
        &app,
        "DELETE FROM live_holds WHERE payment_id = ?",
        &[hold_id],
    )
    .await
    .unwrap();
    assert_audit_finds(&app, "an unsettled hold that has not expired is live").await;
    // A refund going the same way as its payment: PostgreSQL's guard refuses it (its
    // trigger is back for this).
    if backend == Backend::Postgres {
        app.db
            .execute_unprepared(
                "CREATE TRIGGER payments_posted_with_entries AFTER INSERT ON payments \
                 REFERENCING NEW TABLE AS new_payments \
                 FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_payments()",
            )
            .await
            .unwrap();
        let refused = refund_by_hand(&app, paid_id, Direction::Same, "DECLINED")
            .await
            .expect_err("a refund the same way as its payment is refused");
        assert!(refused.to_string().contains("refund"), "{refused}");
        app.db
            .execute_unprepared("DROP TRIGGER payments_posted_with_entries ON payments")
            .await
            .unwrap();
    }
    // A POSTED refund of more than the payment posted.
    refund_by_hand(&app, paid_id, Direction::Back, "POSTED")
        .await
        .unwrap();
    assert_audit_finds(&app, "a refund gives back part").await;
}

/// A hold placed and voided through one instance shows in the other's CACHED balance
/// (pending and available) within the same bound as a payment (tests/api/cache.rs).
async fn another_instance_sees_holds_within_the_cache_bound(backend: Backend) {
    let options = AppOptions {
        redis: true,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let replica = app.spawn_replica().await;
    let (payer, payee) = payer_and_payee(&app).await;
    let cached_on_replica = || async {
        let response = app
            .graphql_at(
                &replica.address,
                "query($id: ID!) { account(id: $id) { balance { amount pending available } } }",
                json!({ "id": payer }),
            )
            .await;
        let balance = &response["data"]["account"]["balance"];
        (
            balance["pending"].as_str().unwrap_or_default().to_owned(),
            balance["available"].as_str().unwrap_or_default().to_owned(),
        )
    };
    assert_eq!(
        cached_on_replica().await,
        ("0.00".to_owned(), "100.00".to_owned())
    );
    let bound = Duration::from_millis(
        payments_ledger::config::CacheConfig::default().l1_balance_ttl_ms
            + payments_ledger::config::CacheConfig::default().l2_balance_ttl_ms,
    );
    let held = hold(&app, "hold-1", &payer, &payee, "30.00").await;
    let id = held["payment"]["id"].as_str().unwrap().to_owned();
    for (step, expected) in [("hold", ("30.00", "70.00")), ("void", ("0.00", "100.00"))] {
        if step == "void" {
            void(&app, "void-1", &id).await;
        }
        let started = std::time::Instant::now();
        loop {
            let seen = cached_on_replica().await;
            if (seen.0.as_str(), seen.1.as_str()) == expected {
                break;
            }
            assert!(
                started.elapsed() < bound,
                "after the {step} the replica still reads {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    app.assert_ledger_sound().await;
}

/// A capture writes its entries after the hold was made: a poller of the client's entry
/// feed that had read everything before the capture sees both entries after its cursor.
async fn a_capture_lands_after_every_feed_cursor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let held = hold(&app, "hold-1", &payer, &payee, "30.00").await;
    let id = held["payment"]["id"].as_str().unwrap().to_owned();
    app.pay("pay-1", &payer, &payee, "1.00", "USD").await;
    app.settle_feeds().await;
    let page = |after: Option<String>| {
        app.graphql(
            "query($after: String) { ledgerEntries(first: 100, after: $after) {
               nodes { payment { id } amount } pageInfo { endCursor } } }",
            json!({ "after": after }),
        )
    };
    let before = page(None).await;
    let cursor = before["data"]["ledgerEntries"]["pageInfo"]["endCursor"]
        .as_str()
        .map(str::to_owned);
    assert!(cursor.is_some(), "{before}");
    capture(&app, "capture-1", &id, Some("12.00")).await;
    app.settle_feeds().await;
    let after = page(cursor).await;
    let nodes = after["data"]["ledgerEntries"]["nodes"].as_array().unwrap();
    let captured: Vec<&Value> = nodes
        .iter()
        .filter(|node| node["payment"]["id"] == id.as_str())
        .collect();
    assert_eq!(
        captured.len(),
        2,
        "the capture's entries after the cursor: {after}"
    );
    assert!(captured.iter().all(|node| node["amount"] == "12.00"));
}

/// A batch whose jobs depend on each other through a key another request owns: a
/// capture whose key names an earlier payment would have settled the hold first in the
/// batch, so a void of the same hold behind it looked refused. The batch runs one job
/// at a time instead: the capture is IDEMPOTENCY_KEY_REUSED and the void voids.
/// PostgreSQL only: a row lock held by the test makes the two share one batch (on a
/// machine too slow for the timing they may not, and then the answers are the same).
/// Without the rerun, the void answered PAYMENT_NOT_PENDING while the hold stayed live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_freed_by_a_taken_key_is_decided_again() {
    let options = AppOptions {
        lock_timeout_ms: Some(10_000),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let held = hold(&app, "hold-1", &payer, &payee, "20.00").await;
    let id = held["payment"]["id"].as_str().unwrap().to_owned();
    // Through another instance, so this one has not seen the key and must ask the
    // database (in the batch).
    let replica = app.spawn_replica().await;
    let taken = app
        .pay_at(&replica.address, "taken-key", &payer, &payee, "1.00", "USD")
        .await;
    assert_eq!(
        taken["data"]["createPayment"]["payment"]["status"],
        "POSTED"
    );

    // A payment on the payer waits for the lock and keeps the batch slot busy, so the
    // capture and the void queue up behind it and go in the next batch together.
    let session = crate::stalls::hold_row_lock(&app, &payer).await;
    let waiting = app.pay("waiting", &payer, &payee, "1.00", "USD");
    let queued = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let capture = capture(&app, "taken-key", &id, None);
        let void = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            void(&app, "void-1", &id).await
        };
        let release = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            session.rollback().await.unwrap();
        };
        let (captured, voided, ()) = tokio::join!(capture, void, release);
        (captured, voided)
    };
    let (paid, (captured, voided)) = tokio::join!(waiting, queued);
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{paid}"
    );
    assert_eq!(
        error_code(&captured),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{captured}"
    );
    assert_eq!(voided["payment"]["status"], "VOIDED", "{voided}");
    assert_balance(&app, &payer, "98.00", "0.00", "98.00").await;
    app.assert_ledger_sound().await;
}

/// `payments(status:)` lists each payment under the status it has now.
async fn payments_are_listed_by_their_status_now(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = payer_and_payee(&app).await;
    let id_of = |payload: &Value| payload["payment"]["id"].as_str().unwrap().to_owned();
    let captured = id_of(&hold(&app, "hold-1", &payer, &payee, "1.00").await);
    capture(&app, "capture-1", &captured, None).await;
    let voided = id_of(&hold(&app, "hold-2", &payer, &payee, "1.00").await);
    void(&app, "void-2", &voided).await;
    let pending = id_of(&hold(&app, "hold-3", &payer, &payee, "1.00").await);
    let soon = (chrono::Utc::now() + chrono::Duration::milliseconds(700)).to_rfc3339();
    let expired = id_of(&hold_until(&app, "hold-4", &payer, &payee, "1.00", Some(soon)).await);
    let declined = id_of(&hold(&app, "hold-5", &payer, &payee, "1000.00").await);
    tokio::time::sleep(Duration::from_millis(900)).await;
    app.settle_feeds().await;
    for (status, expected) in [
        ("POSTED", &captured),
        ("VOIDED", &voided),
        ("PENDING", &pending),
        ("EXPIRED", &expired),
        ("DECLINED", &declined),
    ] {
        let response = app
            .graphql(
                "query($status: PaymentStatus, $account: ID) {
                   all: payments(status: $status, first: 50) { nodes { id status } }
                   mine: payments(status: $status, accountId: $account, first: 50) { nodes { id } } }",
                json!({ "status": status, "account": payer }),
            )
            .await;
        let ids = |list: &str| -> Vec<String> {
            response["data"][list]["nodes"]
                .as_array()
                .unwrap_or_else(|| panic!("{response}"))
                .iter()
                .filter_map(|node| node["id"].as_str().map(str::to_owned))
                .filter(|id| [&captured, &voided, &pending, &expired, &declined].contains(&id))
                .collect()
        };
        assert_eq!(ids("all"), [expected.as_str()], "{status}: {response}");
        assert_eq!(
            ids("mine"),
            [expected.as_str()],
            "{status} of the payer: {response}"
        );
    }
}
