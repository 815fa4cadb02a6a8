//! The database itself guards the ledger: entries and payments are append-only, balance
//! rules are CHECK constraints, and the audit finds each invariant's violation.

use chrono::Utc;
use payments_ledger::entity::ledger_entry::EntryDirection;
use payments_ledger::entity::payment::PaymentStatus;
use payments_ledger::entity::{account, ledger_entry, payment};
use payments_ledger::ledger::audit::find_violations;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    entries_and_payments_reject_update_and_delete,
    balance_rules_are_database_constraints,
    the_audit_catches_each_broken_invariant,
);

/// A small ledger: one funded account and one payment out of it.
async fn small_ledger(app: &TestApp) -> (Uuid, Uuid) {
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "10.00", "USD").await;
    app.pay("p1", &source, &destination, "4.00", "USD").await;
    let uuid = |id: &str| Uuid::parse_str(&id[4..]).unwrap();
    (uuid(&source), uuid(&destination))
}

async fn entries_and_payments_reject_update_and_delete(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    small_ledger(&app).await;
    let entries = app.count("ledger_entries").await;
    let payments = app.count("payments").await;
    let mut statements = vec![
        "UPDATE ledger_entries SET amount_minor = amount_minor + 1",
        "UPDATE ledger_entries SET balance_after_minor = 0",
        "DELETE FROM ledger_entries",
        "UPDATE payments SET status = 'DECLINED', decline_reason = 'X'",
        "DELETE FROM payments",
        "DELETE FROM idempotency_keys",
    ];
    if backend == Backend::Postgres {
        statements.push("TRUNCATE ledger_entries CASCADE");
    }
    for statement in statements {
        let error = app
            .db
            .execute_unprepared(statement)
            .await
            .expect_err(statement);
        assert!(
            error.to_string().contains("append-only"),
            "{statement} was rejected for the wrong reason: {error}"
        );
    }
    assert_eq!(app.count("ledger_entries").await, entries);
    assert_eq!(app.count("payments").await, payments);
    app.assert_ledger_sound().await;
}

async fn balance_rules_are_database_constraints(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (source, _) = small_ledger(&app).await;
    let credit = app
        .create_account("USD", "CREDIT_LIMIT", Some("1.00"))
        .await;
    let credit = Uuid::parse_str(&credit[4..]).unwrap();
    for (id, balance) in [(source, -1_i64), (credit, -101)] {
        let result = account::Entity::update_many()
            .col_expr(account::Column::BalanceMinor, Expr::value(balance))
            .filter(account::Column::Id.eq(id))
            .exec(&app.db)
            .await;
        assert!(
            result.is_err(),
            "a balance of {balance} broke no constraint"
        );
    }
    app.assert_ledger_sound().await;
}

async fn the_audit_catches_each_broken_invariant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, destination) = small_ledger(&app).await;
    assert_eq!(find_violations(&app.db).await.unwrap(), vec![]);

    // Invariant 2: a balance that is not the sum of its entries.
    account::Entity::update_many()
        .col_expr(
            account::Column::BalanceMinor,
            Expr::col(account::Column::BalanceMinor).add(1),
        )
        .filter(account::Column::Id.eq(destination))
        .exec(&app.db)
        .await
        .unwrap();
    let violations = find_violations(&app.db).await.unwrap();
    assert!(
        violations.iter().any(
            |violation| violation.invariant.starts_with("balance equals")
                && violation.detail.contains(&destination.simple().to_string())
        ),
        "{violations:?}"
    );
    account::Entity::update_many()
        .col_expr(
            account::Column::BalanceMinor,
            Expr::col(account::Column::BalanceMinor).sub(1),
        )
        .filter(account::Column::Id.eq(destination))
        .exec(&app.db)
        .await
        .unwrap();
    assert_eq!(find_violations(&app.db).await.unwrap(), vec![]);

    // Invariant 1: an entry that creates money (with its account kept consistent, so
    // only conservation and the payment's shape are broken).
    let some_payment = payment::Entity::find()
        .filter(payment::Column::IdempotencyKey.eq("p1"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let row = account::Entity::find_by_id(destination)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    ledger_entry::Entity::insert(ledger_entry::ActiveModel {
        id: Set(Uuid::now_v7()),
        client_id: Set(row.client_id),
        account_id: Set(destination),
        payment_id: Set(some_payment.id),
        currency: Set("USD".to_owned()),
        direction: Set(EntryDirection::Credit),
        amount_minor: Set(100),
        balance_after_minor: Set(row.balance_minor + 100),
        account_version: Set(row.version + 1),
        created_at: Set(Utc::now()),
        // The column default, as the service's PostgreSQL statements leave it.
        ..Default::default()
    })
    .exec_without_returning(&app.db)
    .await
    .unwrap();
    account::Entity::update_many()
        .col_expr(
            account::Column::BalanceMinor,
            Expr::value(row.balance_minor + 100),
        )
        .col_expr(account::Column::Version, Expr::value(row.version + 1))
        .filter(account::Column::Id.eq(destination))
        .exec(&app.db)
        .await
        .unwrap();
    let violations = find_violations(&app.db).await.unwrap();
    let invariants: Vec<&str> = violations
        .iter()
        .map(|violation| violation.invariant)
        .collect();
    assert!(
        invariants.contains(&"money is conserved per currency"),
        "{violations:?}"
    );
    assert!(
        invariants
            .iter()
            .any(|invariant| invariant.starts_with("every entry belongs")),
        "{violations:?}"
    );
    // Written by another transaction than its payment, it also sits elsewhere in the
    // feeds than the payment does.
    assert!(
        invariants
            .iter()
            .any(|invariant| invariant.starts_with("a payment's entries sit")),
        "{violations:?}"
    );

    // Invariant 4: a payment that is not the effect of its idempotency key.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (source_2, destination_2) = small_ledger(&app).await;
    let row = account::Entity::find_by_id(source_2)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    payment::Entity::insert(payment::ActiveModel {
        id: Set(Uuid::now_v7()),
        client_id: Set(row.client_id),
        idempotency_key: Set("never-claimed".to_owned()),
        from_account_id: Set(source_2),
        to_account_id: Set(destination_2),
        amount_minor: Set(1),
        currency: Set("USD".to_owned()),
        status: Set(PaymentStatus::Declined),
        decline_reason: Set(Some("INSUFFICIENT_FUNDS".to_owned())),
        description: Set(None),
        created_at: Set(Utc::now()),
        // The column default, as the service's PostgreSQL statements leave it.
        ..Default::default()
    })
    .exec_without_returning(&app.db)
    .await
    .unwrap();
    let violations = find_violations(&app.db).await.unwrap();
    assert!(
        violations.iter().any(|violation| violation
            .invariant
            .starts_with("each (client, idempotency key)")),
        "{violations:?}"
    );
}
