//! Account lifecycle: updateAccount, freezeAccount, unfreezeAccount and closeAccount,
//! on both backends; every test ends by auditing the ledger from its stored rows.

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{
    AppOptions, Backend, TestApp, assert_audit_finds, error_code, run, spawn_app, spawn_app_with,
    uuid_of,
};
use crate::on_both_backends;

on_both_backends!(
    every_transition_is_recorded_and_replays,
    a_frozen_account_takes_part_in_nothing_new,
    a_closed_account_is_final,
    closing_needs_an_empty_account,
    credit_limits_and_external_refs_change_within_their_rules,
    a_close_racing_payments_never_closes_a_balance,
    the_database_and_the_audit_guard_account_settings,
    another_instance_sees_a_change_at_once,
);

const CHANGE_FIELDS: &str = "replayed
    account { id status creditLimit externalRef }
    change { sequence kind idempotencyKey oldStatus newStatus oldCreditLimit newCreditLimit
             oldExternalRef newExternalRef createdAt }";

/// Sends `mutation` (freezeAccount, unfreezeAccount, closeAccount, updateAccount) and
/// returns its payload, or the whole response when it failed.
async fn change(app: &TestApp, mutation: &str, input: Value) -> Value {
    let input_type = if mutation == "updateAccount" {
        "UpdateAccountInput"
    } else {
        "ChangeAccountStatusInput"
    };
    let response = app
        .graphql(
            &format!(
                "mutation($input: {input_type}!) {{ {mutation}(input: $input) {{ {CHANGE_FIELDS} }} }}"
            ),
            json!({ "input": input }),
        )
        .await;
    if response["data"][mutation].is_object() {
        response["data"][mutation].clone()
    } else {
        response
    }
}

async fn set_status(app: &TestApp, mutation: &str, key: &str, account: &str) -> Value {
    change(
        app,
        mutation,
        json!({ "idempotencyKey": key, "accountId": account }),
    )
    .await
}

fn status_of(response: &Value) -> &str {
    response["data"]["createPayment"]["payment"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("a payment: {response}"))
}

fn reason_of(response: &Value) -> &Value {
    &response["data"]["createPayment"]["payment"]["declineReason"]
}

async fn every_transition_is_recorded_and_replays(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    let frozen = set_status(&app, "freezeAccount", "freeze-1", &account).await;
    assert_eq!(frozen["replayed"], false, "{frozen}");
    assert_eq!(frozen["account"]["status"], "FROZEN");
    let recorded = &frozen["change"];
    assert_eq!(recorded["sequence"], 1);
    assert_eq!(recorded["kind"], "FREEZE");
    assert_eq!(recorded["idempotencyKey"], "freeze-1");
    assert_eq!(
        (&recorded["oldStatus"], &recorded["newStatus"]),
        (&json!("ACTIVE"), &json!("FROZEN"))
    );
    // Replay: the same change, the account as it is now; reuse: refused.
    let again = set_status(&app, "freezeAccount", "freeze-1", &account).await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["change"], frozen["change"]);
    let reused = set_status(&app, "unfreezeAccount", "freeze-1", &account).await;
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    // One way at a time.
    let twice = set_status(&app, "freezeAccount", "freeze-2", &account).await;
    assert_eq!(
        error_code(&twice),
        Some("ACCOUNT_STATUS_CONFLICT"),
        "{twice}"
    );
    let unfrozen = set_status(&app, "unfreezeAccount", "unfreeze-1", &account).await;
    assert_eq!(unfrozen["account"]["status"], "ACTIVE", "{unfrozen}");
    assert_eq!(unfrozen["change"]["sequence"], 2);
    let not_frozen = set_status(&app, "unfreezeAccount", "unfreeze-2", &account).await;
    assert_eq!(error_code(&not_frozen), Some("ACCOUNT_STATUS_CONFLICT"));
    // The refused keys stored nothing: they work for something else.
    let closed = set_status(&app, "closeAccount", "freeze-2", &account).await;
    assert_eq!(closed["account"]["status"], "CLOSED", "{closed}");
    let history = app
        .graphql(
            "query($id: ID!) { account(id: $id) { status changes { sequence kind oldStatus newStatus idempotencyKey } } }",
            json!({ "id": account }),
        )
        .await;
    assert_eq!(
        history["data"]["account"]["changes"],
        json!([
            { "sequence": 1, "kind": "FREEZE", "oldStatus": "ACTIVE", "newStatus": "FROZEN", "idempotencyKey": "freeze-1" },
            { "sequence": 2, "kind": "UNFREEZE", "oldStatus": "FROZEN", "newStatus": "ACTIVE", "idempotencyKey": "unfreeze-1" },
            { "sequence": 3, "kind": "CLOSE", "oldStatus": "ACTIVE", "newStatus": "CLOSED", "idempotencyKey": "freeze-2" },
        ]),
        "{history}"
    );
    // Another client's account, and ids of the wrong kind.
    let other_key = app.other_client_key().await;
    let theirs = app
        .create_account_as(&other_key, "USD", "NON_NEGATIVE", None)
        .await;
    let hidden = set_status(&app, "freezeAccount", "theirs", &theirs).await;
    assert_eq!(error_code(&hidden), Some("NOT_FOUND"), "{hidden}");
    let wrong = set_status(&app, "freezeAccount", "wrong", "pay_nope").await;
    assert_eq!(error_code(&wrong), Some("BAD_USER_INPUT"), "{wrong}");
    app.assert_ledger_sound().await;
}

async fn a_frozen_account_takes_part_in_nothing_new(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "50.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let paid = app.pay("paid", &payer, &payee, "10.00", "USD").await;
    assert_eq!(status_of(&paid), "POSTED");
    let paid_id = paid["data"]["createPayment"]["payment"]["id"].clone();
    let hold = |key: &'static str| {
        app.graphql(
            "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { payment { id status declineReason } } }",
            json!({ "input": { "idempotencyKey": key, "fromAccountId": payer, "toAccountId": payee,
                               "amount": "5.00", "currency": "USD", "pending": true } }),
        )
    };
    let held = hold("hold-1").await;
    let to_capture = held["data"]["createPayment"]["payment"]["id"].clone();
    let held = hold("hold-2").await;
    let to_void = held["data"]["createPayment"]["payment"]["id"].clone();
    let before = app.balance(&payee).await;

    set_status(&app, "freezeAccount", "freeze", &payee).await;
    // New payments and holds either way: DECLINED with ACCOUNT_FROZEN, stored, replayed.
    for (key, from, to) in [("in", &payer, &payee), ("out", &payee, &payer)] {
        let response = app.pay(key, from, to, "1.00", "USD").await;
        assert_eq!(status_of(&response), "DECLINED", "{response}");
        assert_eq!(reason_of(&response), "ACCOUNT_FROZEN");
    }
    let again = app.pay("in", &payer, &payee, "1.00", "USD").await;
    assert_eq!(reason_of(&again), "ACCOUNT_FROZEN");
    let frozen_hold = hold("hold-3").await;
    assert_eq!(
        frozen_hold["data"]["createPayment"]["payment"]["declineReason"],
        "ACCOUNT_FROZEN"
    );
    // A group touching it is declined whole, with it as the culprit.
    let fees = app.create_account("USD", "NON_NEGATIVE", None).await;
    let group = app
        .graphql(
            "mutation($input: CreatePaymentsInput!) { createPayments(input: $input) { payments { status declineReason } } }",
            json!({ "input": { "idempotencyKey": "group", "payments": [
                { "fromAccountId": payer, "toAccountId": fees, "amount": "1.00", "currency": "USD" },
                { "fromAccountId": payer, "toAccountId": payee, "amount": "1.00", "currency": "USD" },
            ] } }),
        )
        .await;
    assert_eq!(
        group["data"]["createPayments"]["payments"],
        json!([
            { "status": "DECLINED", "declineReason": "LINKED_PAYMENT_FAILED" },
            { "status": "DECLINED", "declineReason": "ACCOUNT_FROZEN" },
        ]),
        "{group}"
    );
    // A capture of an earlier hold is refused and stores nothing; a refund (a payment)
    // is DECLINED; a void still releases its hold.
    let capture = app
        .graphql(
            "mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { payment { status } } }",
            json!({ "input": { "idempotencyKey": "capture", "paymentId": to_capture } }),
        )
        .await;
    assert_eq!(error_code(&capture), Some("ACCOUNT_FROZEN"), "{capture}");
    let refund = app
        .graphql(
            "mutation($input: RefundPaymentInput!) { refundPayment(input: $input) { payment { status declineReason } } }",
            json!({ "input": { "idempotencyKey": "refund", "paymentId": paid_id } }),
        )
        .await;
    assert_eq!(
        refund["data"]["refundPayment"]["payment"]["declineReason"], "ACCOUNT_FROZEN",
        "{refund}"
    );
    let void = app
        .graphql(
            "mutation($input: VoidPaymentInput!) { voidPayment(input: $input) { payment { status } } }",
            json!({ "input": { "idempotencyKey": "void", "paymentId": to_void } }),
        )
        .await;
    assert_eq!(
        void["data"]["voidPayment"]["payment"]["status"], "VOIDED",
        "{void}"
    );
    assert_eq!(
        app.balance(&payee).await,
        before,
        "nothing moved on the frozen account"
    );

    // Unfrozen, it takes part again: the same capture key now captures.
    set_status(&app, "unfreezeAccount", "unfreeze", &payee).await;
    let capture = app
        .graphql(
            "mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { payment { status } } }",
            json!({ "input": { "idempotencyKey": "capture", "paymentId": to_capture } }),
        )
        .await;
    assert_eq!(
        capture["data"]["capturePayment"]["payment"]["status"], "POSTED",
        "{capture}"
    );
    let later = app.pay("later", &payer, &payee, "1.00", "USD").await;
    assert_eq!(status_of(&later), "POSTED");
    // Its status reads the same on a read right after, from any cache level.
    let read = app
        .graphql(
            "query($id: ID!) { account(id: $id) { status } }",
            json!({ "id": payee }),
        )
        .await;
    assert_eq!(read["data"]["account"]["status"], "ACTIVE");
    app.assert_ledger_sound().await;
}

async fn a_closed_account_is_final(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "5.00", "USD").await;
    let closing = app
        .create_account("USD", "CREDIT_LIMIT", Some("10.00"))
        .await;
    let closed = set_status(&app, "closeAccount", "close", &closing).await;
    assert_eq!(closed["account"]["status"], "CLOSED", "{closed}");
    for (key, from, to) in [("in", &payer, &closing), ("out", &closing, &payer)] {
        let response = app.pay(key, from, to, "1.00", "USD").await;
        assert_eq!(reason_of(&response), "ACCOUNT_CLOSED", "{response}");
    }
    for (mutation, key) in [
        ("freezeAccount", "f"),
        ("unfreezeAccount", "u"),
        ("closeAccount", "c"),
    ] {
        let refused = set_status(&app, mutation, key, &closing).await;
        assert_eq!(error_code(&refused), Some("ACCOUNT_CLOSED"), "{refused}");
    }
    let update = change(
        &app,
        "updateAccount",
        json!({ "idempotencyKey": "limit", "accountId": closing, "creditLimit": "20.00" }),
    )
    .await;
    assert_eq!(error_code(&update), Some("ACCOUNT_CLOSED"), "{update}");
    // The close replays.
    let again = set_status(&app, "closeAccount", "close", &closing).await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(app.balance(&closing).await.0, "0.00");
    app.assert_ledger_sound().await;
}

async fn closing_needs_an_empty_account(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "5.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    // The payer keeps 2.00 held for the payee and 0.00 available; the payee has nothing
    // posted but a live hold pays into it.
    let hold = app
        .graphql(
            "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { payment { id status } } }",
            json!({ "input": { "idempotencyKey": "hold", "fromAccountId": payer, "toAccountId": payee,
                               "amount": "2.00", "currency": "USD", "pending": true } }),
        )
        .await;
    let hold_id = hold["data"]["createPayment"]["payment"]["id"].clone();
    let paid = app.pay("spend", &payer, &funding, "3.00", "USD").await;
    assert_eq!(status_of(&paid), "POSTED");
    for (key, account) in [("close-payer", &payer), ("close-payee", &payee)] {
        let refused = set_status(&app, "closeAccount", key, account).await;
        assert_eq!(
            error_code(&refused),
            Some("ACCOUNT_NOT_EMPTY"),
            "{key}: {refused}"
        );
        let message = refused["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("live holds"), "{message}");
    }
    // The refused keys stored nothing: void the hold, move the rest out, and both close
    // under them.
    let void = app
        .graphql(
            "mutation($input: VoidPaymentInput!) { voidPayment(input: $input) { payment { status } } }",
            json!({ "input": { "idempotencyKey": "void", "paymentId": hold_id } }),
        )
        .await;
    assert_eq!(
        void["data"]["voidPayment"]["payment"]["status"], "VOIDED",
        "{void}"
    );
    let still = set_status(&app, "closeAccount", "close-payer", &payer).await;
    assert_eq!(
        error_code(&still),
        Some("ACCOUNT_NOT_EMPTY"),
        "2.00 posted: {still}"
    );
    assert_eq!(
        status_of(&app.pay("drain", &payer, &funding, "2.00", "USD").await),
        "POSTED"
    );
    for (key, account) in [("close-payer", &payer), ("close-payee", &payee)] {
        let closed = set_status(&app, "closeAccount", key, account).await;
        assert_eq!(closed["account"]["status"], "CLOSED", "{key}: {closed}");
    }
    app.assert_ledger_sound().await;
}

async fn credit_limits_and_external_refs_change_within_their_rules(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let card = app
        .create_account("USD", "CREDIT_LIMIT", Some("10.00"))
        .await;
    let shop = app.create_account("USD", "NON_NEGATIVE", None).await;
    let paid = app.pay("spend", &card, &shop, "6.00", "USD").await;
    assert_eq!(status_of(&paid), "POSTED");
    let update = |key: &str, fields: Value| {
        let mut input = json!({ "idempotencyKey": key, "accountId": card });
        input
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        change(&app, "updateAccount", input)
    };
    let below = update("low", json!({ "creditLimit": "5.99" })).await;
    assert_eq!(
        error_code(&below),
        Some("CREDIT_LIMIT_BELOW_BALANCE"),
        "{below}"
    );
    let lowered = update(
        "low-ok",
        json!({ "creditLimit": "6.00", "externalRef": "card-7" }),
    )
    .await;
    assert_eq!(lowered["account"]["creditLimit"], "6.00", "{lowered}");
    assert_eq!(lowered["account"]["externalRef"], "card-7");
    assert_eq!(lowered["change"]["kind"], "UPDATE");
    assert_eq!(lowered["change"]["oldCreditLimit"], "10.00");
    assert_eq!(lowered["change"]["newCreditLimit"], "6.00");
    assert_eq!(lowered["change"]["oldExternalRef"], Value::Null);
    assert_eq!(lowered["change"]["newExternalRef"], "card-7");
    // The lowered limit binds the next payment.
    let over = app.pay("over", &card, &shop, "0.01", "USD").await;
    assert_eq!(reason_of(&over), "CREDIT_LIMIT_EXCEEDED", "{over}");
    // Absent keeps, null clears.
    let kept = update("keep-ref", json!({ "creditLimit": "8.00" })).await;
    assert_eq!(kept["account"]["externalRef"], "card-7", "{kept}");
    let cleared = update("clear-ref", json!({ "externalRef": null })).await;
    assert_eq!(cleared["account"]["externalRef"], Value::Null, "{cleared}");
    assert_eq!(cleared["account"]["creditLimit"], "8.00");
    // Refusals: nothing to change, a limit on a NON_NEGATIVE account, a taken ref, a
    // bad amount.
    app.graphql(
        "mutation { createAccount(input: { idempotencyKey: \"taken\", currency: \"USD\", balanceRule: NON_NEGATIVE, externalRef: \"taken-ref\" }) { account { id } } }",
        json!({}),
    )
    .await;
    for (key, fields, code) in [
        ("nothing", json!({}), "BAD_USER_INPUT"),
        (
            "taken",
            json!({ "externalRef": "taken-ref" }),
            "BAD_USER_INPUT",
        ),
        (
            "precise",
            json!({ "creditLimit": "1.001" }),
            "BAD_USER_INPUT",
        ),
        ("negative", json!({ "creditLimit": "-1" }), "BAD_USER_INPUT"),
    ] {
        let refused = update(&format!("bad-{key}"), fields).await;
        assert_eq!(error_code(&refused), Some(code), "{key}: {refused}");
    }
    let on_plain = change(
        &app,
        "updateAccount",
        json!({ "idempotencyKey": "plain", "accountId": shop, "creditLimit": "1.00" }),
    )
    .await;
    assert_eq!(error_code(&on_plain), Some("BAD_USER_INPUT"), "{on_plain}");
    // Replay and reuse.
    let again = update(
        "low-ok",
        json!({ "creditLimit": "6.00", "externalRef": "card-7" }),
    )
    .await;
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["change"], lowered["change"]);
    let reused = update("low-ok", json!({ "creditLimit": "6.00" })).await;
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    app.assert_ledger_sound().await;
}

/// A close racing payments into an empty account: each round, either the close wins
/// (the payments are DECLINED with ACCOUNT_CLOSED) or a payment does (the close is
/// ACCOUNT_NOT_EMPTY); a closed account never holds money.
async fn a_close_racing_payments_never_closes_a_balance(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    for round in 0..8 {
        let account = app.create_account("USD", "NON_NEGATIVE", None).await;
        let close_key = format!("close-{round}");
        let close = set_status(&app, "closeAccount", &close_key, &account);
        let keys: Vec<String> = (0..4).map(|n| format!("pay-{round}-{n}")).collect();
        let payments = join_all(
            keys.iter()
                .map(|key| app.pay_until_final(key, &funding, &account, "1.00", "USD")),
        );
        let (closed, payments) = futures::join!(close, payments);
        let posted = payments
            .iter()
            .filter(|response| status_of(response) == "POSTED")
            .count();
        if closed["account"]["status"] == "CLOSED" {
            assert_eq!(posted, 0, "round {round}: paid into a closed account");
            for response in &payments {
                assert_eq!(reason_of(response), "ACCOUNT_CLOSED", "{response}");
            }
            assert_eq!(app.balance(&account).await.0, "0.00");
        } else {
            assert_eq!(error_code(&closed), Some("ACCOUNT_NOT_EMPTY"), "{closed}");
            assert!(posted > 0, "round {round}: {payments:?}");
        }
    }
    app.assert_ledger_sound().await;
}

async fn the_database_and_the_audit_guard_account_settings(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&account, "1.00", "USD").await;
    let closed = app.create_account("USD", "NON_NEGATIVE", None).await;
    set_status(&app, "closeAccount", "close", &closed).await;
    let id = uuid_of(&account);
    let closed_id = uuid_of(&closed);
    // Settings without a recorded change, a closed account reopened or given money,
    // the identity: all refused.
    for (sql, target) in [
        ("UPDATE accounts SET status = 'FROZEN' WHERE id = ?", id),
        ("UPDATE accounts SET external_ref = 'x' WHERE id = ?", id),
        (
            "UPDATE accounts SET status = 'FROZEN', change_seq = change_seq + 1 WHERE id = ?",
            id,
        ),
        (
            "UPDATE accounts SET status = 'ACTIVE', change_seq = change_seq + 1 WHERE id = ?",
            closed_id,
        ),
        (
            "UPDATE accounts SET pending_minor = 1 WHERE id = ?",
            closed_id,
        ),
        ("UPDATE accounts SET currency = 'EUR' WHERE id = ?", id),
    ] {
        assert!(
            run(&app, sql, &[target]).await.is_err(),
            "not refused: {sql}"
        );
    }
    app.assert_ledger_sound().await;
    app.drop_guards().await;
    assert_eq!(
        run(
            &app,
            "UPDATE accounts SET status = 'FROZEN' WHERE id = ?",
            &[id]
        )
        .await
        .unwrap(),
        1
    );
    assert_audit_finds(
        &app,
        "an account's settings are what its last recorded change",
    )
    .await;
}

/// Account settings are cached in each instance's L1: a change made through one
/// instance reaches another's copy through the invalidation channel, and payments there
/// are decided from the locked row whatever the copy says.
async fn another_instance_sees_a_change_at_once(backend: Backend) {
    let options = AppOptions {
        redis: true,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let replica = app.spawn_replica().await;
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "5.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    let status_on_replica = || async {
        let read = app
            .graphql_at(
                &replica.address,
                "query($id: ID!) { account(id: $id) { status } }",
                json!({ "id": payee }),
            )
            .await;
        read["data"]["account"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The replica caches the settings while ACTIVE.
    assert_eq!(status_on_replica().await, "ACTIVE");
    set_status(&app, "freezeAccount", "freeze", &payee).await;
    // A payment through the replica is declined at once, whatever its cache holds.
    let declined = app
        .pay_at(
            &replica.address,
            "via-replica",
            &payer,
            &payee,
            "1.00",
            "USD",
        )
        .await;
    assert_eq!(reason_of(&declined), "ACCOUNT_FROZEN", "{declined}");
    let mut seen = String::new();
    for _ in 0..100 {
        seen = status_on_replica().await;
        if seen == "FROZEN" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(seen, "FROZEN", "the replica's copy was dropped");
    app.assert_ledger_sound().await;
}
