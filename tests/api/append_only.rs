//! The database itself guards the ledger: entries and payments are append-only, balance
//! rules are CHECK constraints, accounts keep their identity and move only with the
//! entries that justify them (the guards migration), and the audit finds each
//! invariant's violation when the guards are gone.

use chrono::Utc;
use payments_ledger::entity::ledger_entry::EntryDirection;
use payments_ledger::entity::payment::StoredStatus;
use payments_ledger::entity::{account, ledger_entry, payment};
use payments_ledger::ledger::audit::find_violations;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryTrait, Statement, TransactionTrait,
};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    entries_and_payments_reject_update_and_delete,
    balance_rules_are_database_constraints,
    guards_refuse_changing_an_account_without_its_entries,
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

/// The small ledger's payment "p1", and `account` as stored now.
async fn payment_p1_and_account(app: &TestApp, account: Uuid) -> (payment::Model, account::Model) {
    let p1 = payment::Entity::find()
        .filter(payment::Column::IdempotencyKey.eq("p1"))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let row = account::Entity::find_by_id(account)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    (p1, row)
}

/// Runs `statements` in one transaction and insists the database refuses it with a
/// guard's error.
async fn assert_guard_refuses(app: &TestApp, what: &str, statements: Vec<Statement>) {
    assert_refused_with(app, what, statements, "ledger guard").await;
}

/// Runs `statements` in one transaction and insists the database refuses it with an
/// error that says `reason`.
async fn assert_refused_with(app: &TestApp, what: &str, statements: Vec<Statement>, reason: &str) {
    let transaction = app.db.begin().await.unwrap();
    let mut refused = None;
    for statement in statements {
        if let Err(error) = transaction.execute_raw(statement).await {
            refused = Some(error);
            break;
        }
    }
    let error = match refused {
        Some(error) => error,
        None => transaction
            .commit()
            .await
            .expect_err(&format!("{what} was accepted")),
    };
    assert!(
        error.to_string().contains(reason),
        "{what} was refused for the wrong reason: {error}"
    );
}

/// A ledger entry row for `account`, as a hand-written INSERT would add it.
fn entry_insert(
    backend: DbBackend,
    account: &account::Model,
    payment: Uuid,
    amount_minor: i64,
    version: i64,
) -> Statement {
    Statement::from_sql_and_values(
        backend,
        "INSERT INTO ledger_entries (id, client_id, account_id, payment_id, currency, direction,
           amount_minor, balance_after_minor, account_version, created_at, feed_seq)
         VALUES ($1, $2, $3, $4, $5, 'CREDIT', $6, $7, $8, $9, 1)",
        [
            Uuid::now_v7().into(),
            account.client_id.into(),
            account.id.into(),
            payment.into(),
            account.currency.clone().into(),
            amount_minor.into(),
            (account.balance_minor + amount_minor).into(),
            version.into(),
            Utc::now().into(),
        ],
    )
}

async fn guards_refuse_changing_an_account_without_its_entries(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (source, destination) = small_ledger(&app).await;
    let credit = app
        .create_account("USD", "CREDIT_LIMIT", Some("5.00"))
        .await;
    let unused = app.create_account("USD", "NON_NEGATIVE", None).await;
    let uuid = |id: &str| Uuid::parse_str(&id[4..]).unwrap();
    let db_backend = app.db.get_database_backend();
    let plain = |sql: String| Statement::from_string(db_backend, sql);
    let before = account::Entity::find().all(&app.db).await.unwrap();
    let entries = app.count("ledger_entries").await;

    let update = |id: Uuid, changes: Vec<(account::Column, sea_orm::sea_query::SimpleExpr)>| {
        let mut query = account::Entity::update_many().filter(account::Column::Id.eq(id));
        for (column, value) in changes {
            query = query.col_expr(column, value);
        }
        db_backend.build(&query.into_query())
    };
    let balance = || Expr::col(account::Column::BalanceMinor).add(100);
    let other_client = payments_ledger::auth::create_client(&app.db, "other client")
        .await
        .unwrap()
        .id
        .0;
    use account::Column::{
        BalanceMinor, BalanceRule, ClientId, CreditLimitMinor, Currency, ExternalRef, Version,
    };
    for (what, statement) in [
        (
            "the issue's example",
            update(
                destination,
                vec![(BalanceMinor, balance()), (Currency, Expr::value("EUR"))],
            ),
        ),
        (
            "a balance alone",
            update(destination, vec![(BalanceMinor, balance())]),
        ),
        (
            "a version alone",
            update(destination, vec![(Version, Expr::col(Version).add(1))]),
        ),
        (
            "a version backwards",
            update(
                destination,
                vec![(Version, Expr::value(0)), (BalanceMinor, Expr::value(0))],
            ),
        ),
        (
            "the currency",
            update(destination, vec![(Currency, Expr::value("EUR"))]),
        ),
        (
            "the balance rule",
            update(destination, vec![(BalanceRule, Expr::value("UNBOUNDED"))]),
        ),
        (
            "the credit limit",
            update(
                uuid(&credit),
                vec![(CreditLimitMinor, Expr::value(100_000_000_i64))],
            ),
        ),
        (
            "the externalRef",
            update(destination, vec![(ExternalRef, Expr::value("stolen"))]),
        ),
        (
            "the owner",
            update(destination, vec![(ClientId, Expr::value(other_client))]),
        ),
        (
            "a deletion",
            db_backend.build(
                &account::Entity::delete_many()
                    .filter(account::Column::Id.eq(uuid(&unused)))
                    .into_query(),
            ),
        ),
    ] {
        assert_guard_refuses(&app, what, vec![statement]).await;
    }

    // A whole fake posting, entry and balance consistent with each other, added to a
    // payment that already has its two entries: money from nowhere.
    let (p1, row) = payment_p1_and_account(&app, destination).await;
    let fake_entry = entry_insert(db_backend, &row, p1.id, 100, row.version + 1);
    let fake_move = Statement::from_sql_and_values(
        db_backend,
        "UPDATE accounts SET balance_minor = $1, version = $2 WHERE id = $3",
        [
            (row.balance_minor + 100).into(),
            (row.version + 1).into(),
            row.id.into(),
        ],
    );
    assert_guard_refuses(&app, "a fake posting", vec![fake_entry, fake_move]).await;
    if backend == Backend::Postgres {
        // Without deferred triggers SQLite cannot refuse these two (docs/operations.md);
        // `payments-ledger verify` finds them.
        let lonely = entry_insert(db_backend, &row, p1.id, 100, row.version + 1);
        assert_guard_refuses(&app, "an entry no account move follows", vec![lonely]).await;
        let posted_alone = Statement::from_sql_and_values(
            db_backend,
            "INSERT INTO payments (id, client_id, idempotency_key, from_account_id,
               to_account_id, amount_minor, currency, status, created_at)
             VALUES ($1, $2, 'no-entries', $3, $4, 1, 'USD', 'POSTED', now())",
            [
                Uuid::now_v7().into(),
                row.client_id.into(),
                source.into(),
                destination.into(),
            ],
        );
        assert_guard_refuses(&app, "a POSTED payment without entries", vec![posted_alone]).await;
        // No foreign key checks an entry's account or payment here: the double-entry
        // guard does (the entry references migration).
        let nowhere = account::Model {
            id: Uuid::now_v7(),
            ..row.clone()
        };
        let on_no_account = entry_insert(db_backend, &nowhere, p1.id, 100, 1);
        assert_refused_with(
            &app,
            "an entry on an account that does not exist",
            vec![on_no_account],
            "is not on an account that moved over it",
        )
        .await;
        // With its account's move in the same statement, so only the payment is amiss.
        let of_no_payment = Statement::from_sql_and_values(
            db_backend,
            "WITH moved AS (UPDATE accounts SET balance_minor = $5, version = $6 WHERE id = $2)
             INSERT INTO ledger_entries (id, client_id, account_id, payment_id, currency,
               direction, amount_minor, balance_after_minor, account_version, created_at)
             VALUES ($1, $3, $2, $4, 'USD', 'CREDIT', 100, $5, $6, now())",
            [
                Uuid::now_v7().into(),
                row.id.into(),
                row.client_id.into(),
                Uuid::now_v7().into(),
                (row.balance_minor + 100).into(),
                (row.version + 1).into(),
            ],
        );
        assert_refused_with(
            &app,
            "an entry of a payment that does not exist",
            vec![of_no_payment],
            "is not one POSTED payment with its two entries",
        )
        .await;
        let truncate = plain("TRUNCATE accounts CASCADE".to_owned());
        assert_guard_refuses(&app, "a truncation", vec![truncate]).await;
    }

    assert_eq!(account::Entity::find().all(&app.db).await.unwrap(), before);
    assert_eq!(app.count("ledger_entries").await, entries);
    app.assert_ledger_sound().await;
}

async fn the_audit_catches_each_broken_invariant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, destination) = small_ledger(&app).await;
    assert_eq!(find_violations(&app.db).await.unwrap(), vec![]);
    // The guard triggers refuse every corruption below (`guards_refuse_…`); without them
    // the audit must still find each one.
    app.drop_guards().await;

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
    let (some_payment, row) = payment_p1_and_account(&app, destination).await;
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
            .any(|invariant| invariant.starts_with("a payment that posted")),
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

    if backend == Backend::Postgres {
        // With the guards gone nothing refuses an entry of no payment on no account
        // there (SQLite's foreign keys still do).
        let orphan = Uuid::now_v7();
        ledger_entry::Entity::insert(ledger_entry::ActiveModel {
            id: Set(orphan),
            client_id: Set(row.client_id),
            account_id: Set(Uuid::now_v7()),
            payment_id: Set(Uuid::now_v7()),
            currency: Set("USD".to_owned()),
            direction: Set(EntryDirection::Debit),
            amount_minor: Set(100),
            balance_after_minor: Set(-100),
            account_version: Set(1),
            created_at: Set(Utc::now()),
            ..Default::default()
        })
        .exec_without_returning(&app.db)
        .await
        .unwrap();
        let violations = find_violations(&app.db).await.unwrap();
        assert!(
            violations.iter().any(|violation| violation.invariant
                == "an entry is on an account and of a payment that exist"
                && violation.detail.contains(&orphan.simple().to_string())),
            "{violations:?}"
        );
    }

    // Invariant 4: a payment that is not the effect of its idempotency key.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (source_2, destination_2) = small_ledger(&app).await;
    app.drop_guards().await;
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
        status: Set(StoredStatus::Declined),
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
