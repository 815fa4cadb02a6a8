//! Posting and declining payments (design.md section 3).

use serde_json::json;

use crate::helpers::{Backend, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    a_payment_posts_two_balanced_entries,
    balance_rules_decline_payments
);

async fn a_payment_posts_two_balanced_entries(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "100.00", "USD").await;

    let response = app
        .pay("pay-1", &source, &destination, "12.34", "USD")
        .await;
    let payload = &response["data"]["createPayment"];
    assert_eq!(payload["replayed"], false, "{response}");
    let payment = &payload["payment"];
    assert_eq!(payment["status"], "POSTED");
    assert_eq!(payment["amount"], "12.34");
    assert!(payment["declineReason"].is_null());

    let entries = payment["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 2, "{response}");
    let (debit, credit) = (&entries[0], &entries[1]);
    assert_eq!(debit["direction"], "DEBIT");
    assert_eq!(debit["account"]["id"], source.as_str());
    assert_eq!(debit["balanceAfter"], "87.66");
    assert_eq!(debit["accountVersion"], 2);
    assert_eq!(credit["direction"], "CREDIT");
    assert_eq!(credit["account"]["id"], destination.as_str());
    assert_eq!(credit["balanceAfter"], "12.34");
    assert_eq!(credit["accountVersion"], 1);
    assert_eq!(
        debit["amount"], credit["amount"],
        "debit and credit sum to zero"
    );

    assert_eq!(app.balance(&source).await, ("87.66".to_owned(), 2));
    assert_eq!(app.balance(&destination).await, ("12.34".to_owned(), 1));

    // The account's own view agrees: its entries, in version order.
    let response = app
        .graphql(
            "query($id: ID!) { ledgerEntries(accountId: $id) { nodes { direction amount balanceAfter accountVersion } } }",
            json!({ "id": source }),
        )
        .await;
    assert_eq!(
        response["data"]["ledgerEntries"]["nodes"],
        json!([
            { "direction": "CREDIT", "amount": "100.00", "balanceAfter": "100.00", "accountVersion": 1 },
            { "direction": "DEBIT", "amount": "12.34", "balanceAfter": "87.66", "accountVersion": 2 },
        ])
    );
    assert_eq!(app.count("ledger_entries").await, 4);
    app.assert_ledger_sound().await;
}

async fn balance_rules_decline_payments(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let non_negative = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let credit = app
        .create_account("EUR", "CREDIT_LIMIT", Some("50.00"))
        .await;
    let unbounded = app.create_account("EUR", "UNBOUNDED", None).await;
    let sink = app.create_account("EUR", "NON_NEGATIVE", None).await;
    app.fund(&non_negative, "10.00", "EUR").await;

    let declined = app.pay("nn-1", &non_negative, &sink, "10.01", "EUR").await;
    let payment = &declined["data"]["createPayment"]["payment"];
    assert_eq!(payment["status"], "DECLINED", "{declined}");
    assert_eq!(payment["declineReason"], "INSUFFICIENT_FUNDS");
    assert_eq!(payment["entries"], json!([]));
    assert_eq!(app.balance(&non_negative).await, ("10.00".to_owned(), 1));
    assert_eq!(app.balance(&sink).await, ("0.00".to_owned(), 0));

    // Exactly down to zero is allowed.
    let posted = app.pay("nn-2", &non_negative, &sink, "10.00", "EUR").await;
    assert_eq!(
        posted["data"]["createPayment"]["payment"]["status"],
        "POSTED"
    );

    // CREDIT_LIMIT goes down to -limit and no further.
    let posted = app.pay("cl-1", &credit, &sink, "50.00", "EUR").await;
    assert_eq!(
        posted["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{posted}"
    );
    let declined = app.pay("cl-2", &credit, &sink, "0.01", "EUR").await;
    let payment = &declined["data"]["createPayment"]["payment"];
    assert_eq!(payment["status"], "DECLINED");
    assert_eq!(payment["declineReason"], "CREDIT_LIMIT_EXCEEDED");
    assert_eq!(app.balance(&credit).await, ("-50.00".to_owned(), 1));
    let response = app
        .graphql(
            "query($id: ID!) { account(id: $id) { creditLimit balance { amount available } } }",
            json!({ "id": credit }),
        )
        .await;
    assert_eq!(
        response["data"]["account"],
        json!({ "creditLimit": "50.00", "balance": { "amount": "-50.00", "available": "0.00" } })
    );

    // UNBOUNDED may go as negative as it likes.
    let posted = app
        .pay("ub-1", &unbounded, &sink, "1000000.00", "EUR")
        .await;
    assert_eq!(
        posted["data"]["createPayment"]["payment"]["status"],
        "POSTED"
    );
    assert_eq!(app.balance(&unbounded).await, ("-1000000.00".to_owned(), 1));

    assert_eq!(app.count("payments").await, 6);
    app.assert_ledger_sound().await;
}
