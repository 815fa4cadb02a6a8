//! The database connection breaks at the worst moments: before the COMMIT reaches
//! PostgreSQL, after it committed but before its answer came back, and with the
//! database then unreachable; and the same for a payment sent as one statement that
//! commits on its own. Each answer must be true (docs/api.md, "Error codes"):
//! a payment that committed is this request's own (`replayed: false`, counted as
//! posted), one that did not is run again, and only a write that cannot be settled
//! answers OUTCOME_UNKNOWN, never "nothing happened".

use serde_json::Value;

use crate::helpers::{AppOptions, Backend, TestApp, error_code, spawn_app_with};
use crate::link::{COMMIT, Fault, FaultyLink};

const POSTED: &str = "ledger_payments_total{outcome=\"posted\"}";
const REPLAYED: &str = "ledger_payments_total{outcome=\"replayed\"}";

/// A server whose database connections run through `link`, with a funded USD source
/// and an empty destination.
async fn app_through(link: &FaultyLink) -> (TestApp, String, String) {
    let options = AppOptions {
        database_via: Some(link.address),
        ..AppOptions::default()
    };
    let app = spawn_app_with(Backend::Postgres, options)
        .await
        .expect("a PostgreSQL server for tests");
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "100.00", "USD").await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    (app, source, destination)
}

/// Like `app_through`, after one payment of 1.00 between the two accounts: the
/// instance knows both rows, so the next payment goes as one statement.
async fn app_with_known_accounts(link: &FaultyLink) -> (TestApp, String, String) {
    let (app, source, destination) = app_through(link).await;
    let warm = app.pay("warm", &source, &destination, "1.00", "USD").await;
    assert_eq!(payment(&warm)["payment"]["status"], "POSTED", "{warm}");
    (app, source, destination)
}

fn payment(response: &Value) -> &Value {
    &response["data"]["createPayment"]
}

/// The payment committed and only the answer to its COMMIT was lost: the server finds
/// out by running it again, and answers with its own payment, not a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_whose_commit_answer_is_lost_is_answered_as_posted_once() {
    let Some(link) = FaultyLink::to_test_database().await else {
        return;
    };
    let (app, source, destination) = app_through(&link).await;
    let posted_before = app.metric(POSTED).await;

    link.arm(Fault::DropAnswerTo(COMMIT));
    let response = app
        .pay("commit-answer-lost", &source, &destination, "30.00", "USD")
        .await;
    assert!(link.fired(), "the COMMIT's answer was dropped");
    assert_eq!(
        payment(&response)["payment"]["status"],
        "POSTED",
        "{response}"
    );
    assert_eq!(
        payment(&response)["replayed"],
        false,
        "this request's own commit is not a replay: {response}"
    );
    assert_eq!(app.metric(POSTED).await - posted_before, 1.0);
    assert_eq!(app.metric(REPLAYED).await, 0.0);

    let again = app
        .pay("commit-answer-lost", &source, &destination, "30.00", "USD")
        .await;
    assert_eq!(payment(&again)["replayed"], true, "{again}");
    assert_eq!(
        payment(&again)["payment"]["id"],
        payment(&response)["payment"]["id"]
    );
    assert_eq!(app.balance(&source).await, ("70.00".to_owned(), 2));
    assert_eq!(app.balance(&destination).await, ("30.00".to_owned(), 1));
    app.assert_ledger_sound().await;
}

/// The connection broke before the COMMIT reached PostgreSQL: nothing happened, and
/// the server runs the payment again on another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_whose_commit_never_arrives_is_run_again() {
    let Some(link) = FaultyLink::to_test_database().await else {
        return;
    };
    let (app, source, destination) = app_through(&link).await;

    link.arm(Fault::NeverDeliver(COMMIT));
    let response = app
        .pay("commit-never-sent", &source, &destination, "12.50", "USD")
        .await;
    assert!(link.fired());
    assert_eq!(
        payment(&response)["payment"]["status"],
        "POSTED",
        "{response}"
    );
    assert_eq!(payment(&response)["replayed"], false, "{response}");
    assert_eq!(
        app.count("payments").await,
        2,
        "the funding and this payment"
    );
    assert_eq!(app.balance(&destination).await, ("12.50".to_owned(), 1));
    app.assert_ledger_sound().await;
}

/// The COMMIT went through, its answer was lost, and then the database could not be
/// reached: the server cannot know the outcome and must not say "nothing happened".
/// Sent again once the database is back, the same key finds the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_that_cannot_be_settled_answers_outcome_unknown() {
    let Some(link) = FaultyLink::to_test_database().await else {
        return;
    };
    let (app, source, destination) = app_through(&link).await;

    link.arm(Fault::GoDarkAfter(COMMIT));
    let response = app
        .pay("commit-unsettled", &source, &destination, "40.00", "USD")
        .await;
    assert!(link.fired());
    assert_eq!(error_code(&response), Some("OUTCOME_UNKNOWN"), "{response}");
    assert!(response["data"]["createPayment"].is_null(), "{response}");

    link.heal();
    let again = app
        .pay_until_final("commit-unsettled", &source, &destination, "40.00", "USD")
        .await;
    assert_eq!(payment(&again)["payment"]["status"], "POSTED", "{again}");
    assert_eq!(app.count("payments").await, 2, "paid once");
    assert_eq!(app.balance(&source).await, ("60.00".to_owned(), 2));
    app.assert_ledger_sound().await;
}

/// A payment on accounts the server knows goes as one statement that commits on its
/// own. Its answer lost, the server cannot tell whether it committed; it runs the
/// payment the long way, whose key claim finds the payment, and answers with it as its
/// own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_statement_payment_whose_answer_is_lost_is_answered_as_posted_once() {
    let Some(link) = FaultyLink::to_test_database().await else {
        return;
    };
    let (app, source, destination) = app_with_known_accounts(&link).await;
    let one_trips_before = app.metric("ledger_write_one_trip_batches_total").await;

    // The key travels in the statement's parameters, so the fault finds its message.
    link.arm(Fault::DropAnswerTo(b"one-trip-answer-lost"));
    let response = app
        .pay(
            "one-trip-answer-lost",
            &source,
            &destination,
            "30.00",
            "USD",
        )
        .await;
    assert!(link.fired(), "the statement's answer was dropped");
    assert_eq!(
        payment(&response)["payment"]["status"],
        "POSTED",
        "{response}"
    );
    assert_eq!(payment(&response)["replayed"], false, "{response}");
    assert_eq!(
        app.metric("ledger_write_one_trip_fallbacks_total").await,
        1.0,
        "the lost answer sent the payment the long way"
    );
    assert_eq!(
        app.metric("ledger_write_one_trip_batches_total").await,
        one_trips_before
    );
    assert_eq!(app.count("payments").await, 3, "funding, warm-up, this one");
    assert_eq!(app.balance(&source).await, ("69.00".to_owned(), 3));
    app.assert_ledger_sound().await;
}

/// The one statement committed, its answer was lost, and the database then went dark:
/// the answer is OUTCOME_UNKNOWN, never "nothing happened"; the same key later finds
/// the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_statement_payment_that_cannot_be_settled_answers_outcome_unknown() {
    let Some(link) = FaultyLink::to_test_database().await else {
        return;
    };
    let (app, source, destination) = app_with_known_accounts(&link).await;

    link.arm(Fault::GoDarkAfter(b"one-trip-unsettled"));
    let response = app
        .pay("one-trip-unsettled", &source, &destination, "40.00", "USD")
        .await;
    assert!(link.fired());
    assert_eq!(error_code(&response), Some("OUTCOME_UNKNOWN"), "{response}");

    link.heal();
    let again = app
        .pay_until_final("one-trip-unsettled", &source, &destination, "40.00", "USD")
        .await;
    assert_eq!(payment(&again)["payment"]["status"], "POSTED", "{again}");
    assert_eq!(app.count("payments").await, 3, "paid once");
    assert_eq!(app.balance(&source).await, ("59.00".to_owned(), 3));
    app.assert_ledger_sound().await;
}
