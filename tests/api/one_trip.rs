//! A batch of plain payments on accounts the instance knows goes to PostgreSQL as one
//! statement, decided against the rows as the instance last committed them; the
//! statement locks those rows and refuses to write if any moved. These tests make the
//! instance's knowledge stale on purpose (another instance pays, funds, freezes, or
//! takes the key first) and check that every payment is still decided on the
//! database's rows: a stale guess costs a fallback, never a wrong outcome. SQLite has
//! no round trips to save and never takes this path; the same outcomes hold there.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    payments_on_known_accounts_take_one_statement,
    a_stale_guess_never_decides_a_payment,
    a_key_taken_elsewhere_replays_after_one_trip_is_refused,
);

fn status(response: &Value) -> &str {
    response["data"]["createPayment"]["payment"]["status"]
        .as_str()
        .unwrap_or_else(|| panic!("a payment: {response}"))
}

fn decline_reason(response: &Value) -> &Value {
    &response["data"]["createPayment"]["payment"]["declineReason"]
}

/// A payer holding 10.00 and an empty payee (NON_NEGATIVE, USD), with `warm` payments
/// of 1.00 between them: the first locks both the long way, so the instance knows both
/// rows afterwards.
async fn known_pair(app: &TestApp, warm: usize) -> (String, String) {
    let payer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&payer, "10.00", "USD").await;
    let payee = app.create_account("USD", "NON_NEGATIVE", None).await;
    for index in 0..warm {
        let paid = app
            .pay(&format!("warm-{index}"), &payer, &payee, "1.00", "USD")
            .await;
        assert_eq!(status(&paid), "POSTED", "{paid}");
    }
    (payer, payee)
}

async fn one_trip_counts(app: &TestApp) -> (f64, f64) {
    (
        app.metric("ledger_write_one_trip_batches_total").await,
        app.metric("ledger_write_one_trip_fallbacks_total").await,
    )
}

async fn payments_on_known_accounts_take_one_statement(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (payer, payee) = known_pair(&app, 1).await;

    let (batches_before, fallbacks_before) = one_trip_counts(&app).await;
    let statements_before = app.metric("ledger_database_statements_total").await;
    for index in 0..5 {
        let paid = app
            .pay(&format!("known-{index}"), &payer, &payee, "1.00", "USD")
            .await;
        assert_eq!(status(&paid), "POSTED", "{paid}");
        let entries = paid["data"]["createPayment"]["payment"]["entries"]
            .as_array()
            .expect("entries");
        assert_eq!(entries[0]["balanceAfter"], format!("{}.00", 8 - index));
        assert_eq!(entries[0]["accountVersion"], 3 + index);
    }
    // More than the balance: declined, and stored as declined, in one statement too.
    let declined = app.pay("too-much", &payer, &payee, "5.00", "USD").await;
    assert_eq!(status(&declined), "DECLINED", "{declined}");
    assert_eq!(decline_reason(&declined), "INSUFFICIENT_FUNDS");
    let statements = app.metric("ledger_database_statements_total").await - statements_before;
    let (batches, fallbacks) = one_trip_counts(&app).await;
    match backend {
        Backend::Postgres => {
            assert_eq!(batches - batches_before, 6.0, "six batches of one payment");
            assert_eq!(fallbacks, fallbacks_before);
            assert_eq!(
                statements, 6.0,
                "one statement, no BEGIN or COMMIT, per payment"
            );
        }
        Backend::Sqlite => assert_eq!(batches, 0.0, "SQLite has no round trips to save"),
    }
    let replayed = app.pay("known-0", &payer, &payee, "1.00", "USD").await;
    assert_eq!(replayed["data"]["createPayment"]["replayed"], true);
    assert_eq!(app.balance(&payer).await, ("4.00".to_owned(), 7));
    assert_eq!(app.balance(&payee).await, ("6.00".to_owned(), 6));
    app.assert_ledger_sound().await;
}

/// Instance A knows the accounts; instance B changes them behind its back. Each of A's
/// next payments must come out as the database's rows say, not as A last saw them.
async fn a_stale_guess_never_decides_a_payment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let other = app.spawn_replica().await;
    let (payer, payee) = known_pair(&app, 2).await;
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let (_, fallbacks_before) = one_trip_counts(&app).await;

    // B drains the payer: A still believes it holds 8.00.
    let drained = app
        .pay_at(&other.address, "drain", &payer, &payee, "8.00", "USD")
        .await;
    assert_eq!(status(&drained), "POSTED", "{drained}");
    let refused = app.pay("after-drain", &payer, &payee, "5.00", "USD").await;
    assert_eq!(status(&refused), "DECLINED", "{refused}");
    assert_eq!(decline_reason(&refused), "INSUFFICIENT_FUNDS");

    // B refills it: A now believes it holds nothing, and a payment it would decline on
    // that belief must post.
    let refilled = app
        .pay_at(&other.address, "refill", &funding, &payer, "20.00", "USD")
        .await;
    assert_eq!(status(&refilled), "POSTED", "{refilled}");
    let posted = app.pay("after-refill", &payer, &payee, "3.00", "USD").await;
    assert_eq!(status(&posted), "POSTED", "{posted}");
    let entries = &posted["data"]["createPayment"]["payment"]["entries"];
    assert_eq!(entries[0]["balanceAfter"], "17.00", "{posted}");
    assert_eq!(entries[0]["accountVersion"], 6, "{posted}");

    // B freezes the payee: A's row still says ACTIVE.
    let frozen = app
        .graphql_at(
            &other.address,
            "mutation($input: ChangeAccountStatusInput!) { freezeAccount(input: $input) { account { status } } }",
            json!({ "input": { "idempotencyKey": "freeze", "accountId": payee } }),
        )
        .await;
    assert_eq!(
        frozen["data"]["freezeAccount"]["account"]["status"], "FROZEN",
        "{frozen}"
    );
    let to_frozen = app.pay("to-frozen", &payer, &payee, "1.00", "USD").await;
    assert_eq!(status(&to_frozen), "DECLINED", "{to_frozen}");
    assert_eq!(decline_reason(&to_frozen), "ACCOUNT_FROZEN");

    let (_, fallbacks) = one_trip_counts(&app).await;
    if backend == Backend::Postgres {
        assert_eq!(
            fallbacks - fallbacks_before,
            3.0,
            "each stale guess was refused by the database"
        );
    }
    assert_eq!(app.balance(&payer).await, ("17.00".to_owned(), 6));
    app.assert_ledger_sound().await;
}

/// B takes a key with a payment that moves nothing (declined); A, whose rows are still
/// current, sends the same request: its one statement meets the key and writes nothing,
/// and the request replays B's payment.
async fn a_key_taken_elsewhere_replays_after_one_trip_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let other = app.spawn_replica().await;
    let (payer, payee) = known_pair(&app, 1).await;
    let (_, fallbacks_before) = one_trip_counts(&app).await;

    let first = app
        .pay_at(&other.address, "shared", &payer, &payee, "500.00", "USD")
        .await;
    assert_eq!(status(&first), "DECLINED", "{first}");
    let again = app.pay("shared", &payer, &payee, "500.00", "USD").await;
    assert_eq!(again["data"]["createPayment"]["replayed"], true, "{again}");
    assert_eq!(
        again["data"]["createPayment"]["payment"]["id"],
        first["data"]["createPayment"]["payment"]["id"]
    );
    let reused = app.pay("shared", &payer, &payee, "2.00", "USD").await;
    assert_eq!(
        error_code(&reused),
        Some("IDEMPOTENCY_KEY_REUSED"),
        "{reused}"
    );
    if backend == Backend::Postgres {
        let (_, fallbacks) = one_trip_counts(&app).await;
        assert_eq!(
            fallbacks - fallbacks_before,
            1.0,
            "the key was the database's to judge"
        );
    }
    assert_eq!(app.balance(&payer).await, ("9.00".to_owned(), 2));
    app.assert_ledger_sound().await;
}
