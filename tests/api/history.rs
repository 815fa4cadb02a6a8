//! Balance history: `Account.balanceAt` and `Account.balanceHistory`, and the rule they
//! stand on: an account's entries never go back in time, even when instances' clocks
//! disagree.

use chrono::{DateTime, Duration, Utc};
use payments_ledger::entity::account;
use payments_ledger::ledger::audit::find_violations;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, EntityTrait, Statement, TransactionTrait};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Backend, TestApp, spawn_app, uuid_of};
use crate::on_both_backends;

on_both_backends!(
    balance_at_each_entry_is_its_balance_after,
    balance_history_pages_by_time,
    entries_never_go_back_in_time_behind_a_clock_that_ran_ahead,
    the_audit_finds_an_entry_that_went_back_in_time,
);

const ENTRIES: &str = "query($id: ID!) {
  account(id: $id) {
    entries(first: 100) { edges { node { createdAt balanceAfter accountVersion } } }
  }
}";

const BALANCE_AT: &str = "query($id: ID!, $time: DateTime!) {
  account(id: $id) { balanceAt(time: $time) { amount pending available version currency } }
}";

const HISTORY: &str = "query($id: ID!, $since: DateTime, $until: DateTime, $first: Int,
                            $after: String, $last: Int, $before: String) {
  account(id: $id) {
    balanceHistory(since: $since, until: $until, first: $first, after: $after,
                   last: $last, before: $before) {
      edges { cursor node { at amount change version entry { accountVersion balanceAfter } } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
    }
  }
}";

/// `(createdAt, balanceAfter, accountVersion)` of each of the account's entries.
async fn entries(app: &TestApp, account: &str) -> Vec<(String, String, i64)> {
    let response = app.graphql(ENTRIES, json!({ "id": account })).await;
    response["data"]["account"]["entries"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .iter()
        .map(|edge| {
            let node = &edge["node"];
            (
                node["createdAt"].as_str().unwrap().to_owned(),
                node["balanceAfter"].as_str().unwrap().to_owned(),
                node["accountVersion"].as_i64().unwrap(),
            )
        })
        .collect()
}

async fn balance_at(app: &TestApp, account: &str, time: &str) -> Value {
    let response = app
        .graphql(BALANCE_AT, json!({ "id": account, "time": time }))
        .await;
    response["data"]["account"]["balanceAt"].clone()
}

fn parse_time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().to_utc()
}

/// A funded account with a few entries in and out, some a little apart in time.
async fn account_with_history(app: &TestApp) -> (String, String) {
    let account = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let other = app.create_account("EUR", "NON_NEGATIVE", None).await;
    app.fund(&account, "100.00", "EUR").await;
    for (index, amount) in ["10.00", "2.50", "30.00"].into_iter().enumerate() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let response = app
            .pay(&format!("out-{index}"), &account, &other, amount, "EUR")
            .await;
        assert_eq!(
            response["data"]["createPayment"]["payment"]["status"], "POSTED",
            "{response}"
        );
    }
    app.fund(&account, "0.25", "EUR").await;
    (account, other)
}

async fn balance_at_each_entry_is_its_balance_after(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (account, other) = account_with_history(&app).await;
    // Sent at once, these share batches: entries of one transaction on one account
    // still each have a time of their own.
    let burst = (0..12).map(|index| {
        let (app, account, other) = (&app, &account, &other);
        async move {
            app.pay_until_final(&format!("burst-{index}"), account, other, "0.10", "EUR")
                .await
        }
    });
    for response in futures::future::join_all(burst).await {
        assert_eq!(
            response["data"]["createPayment"]["payment"]["status"], "POSTED",
            "{response}"
        );
    }
    let entries = entries(&app, &account).await;
    assert_eq!(entries.len(), 17);
    for (created_at, balance_after, version) in &entries {
        let balance = balance_at(&app, &account, created_at).await;
        assert_eq!(balance["amount"], *balance_after, "at {created_at}");
        assert_eq!(balance["version"], *version, "at {created_at}");
        assert_eq!(balance["pending"], "0.00");
        assert_eq!(balance["available"], *balance_after);
        assert_eq!(balance["currency"], "EUR");
    }
    // Before the first entry: nothing yet.
    let first = parse_time(&entries[0].0);
    let before = (first - Duration::microseconds(1)).to_rfc3339();
    let balance = balance_at(&app, &account, &before).await;
    assert_eq!(
        (&balance["amount"], &balance["version"]),
        (&json!("0.00"), &json!(0))
    );
    // Between two entries: the earlier one's balance.
    let third = parse_time(&entries[2].0);
    let fourth = parse_time(&entries[3].0);
    assert!(third < fourth, "the payments were made apart in time");
    let between = (third + (fourth - third) / 2).to_rfc3339();
    assert_eq!(
        balance_at(&app, &account, &between).await["amount"],
        entries[2].1
    );
    // Long after: the balance now.
    let later = (Utc::now() + Duration::days(365)).to_rfc3339();
    assert_eq!(
        balance_at(&app, &account, &later).await["amount"],
        app.balance(&account).await.0
    );
    assert_eq!(app.balance(&account).await.0, "56.55");
}

/// The `balanceHistory` connection's points and page info.
async fn history(app: &TestApp, account: &str, arguments: Value) -> (Vec<Value>, Value) {
    let mut variables = arguments;
    variables["id"] = json!(account);
    let response = app.graphql(HISTORY, variables).await;
    let connection = &response["data"]["account"]["balanceHistory"];
    let edges = connection["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .clone();
    (edges, connection["pageInfo"].clone())
}

async fn balance_history_pages_by_time(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (account, _) = account_with_history(&app).await;
    let entries = entries(&app, &account).await;

    // Forward, two at a time: every entry once, in order, each point its entry's.
    let mut points = Vec::new();
    let mut after = Value::Null;
    loop {
        let (edges, page) = history(&app, &account, json!({ "first": 2, "after": after })).await;
        points.extend(edges);
        if page["hasNextPage"] != true {
            break;
        }
        after = page["endCursor"].clone();
    }
    assert_eq!(points.len(), entries.len());
    let mut previous_amount = 0.0;
    for (edge, (created_at, balance_after, version)) in points.iter().zip(&entries) {
        let node = &edge["node"];
        assert_eq!(node["at"], *created_at);
        assert_eq!(node["amount"], *balance_after);
        assert_eq!(node["version"], *version);
        assert_eq!(node["entry"]["accountVersion"], *version);
        let amount: f64 = balance_after.parse().unwrap();
        let change: f64 = node["change"].as_str().unwrap().parse().unwrap();
        assert!((previous_amount + change - amount).abs() < 1e-9, "{node}");
        previous_amount = amount;
    }

    // Backward from the end: the same points, last two first.
    let (edges, page) = history(&app, &account, json!({ "last": 2 })).await;
    assert_eq!(edges[0]["node"]["version"], 4);
    assert_eq!(edges[1]["node"]["version"], 5);
    assert_eq!(page["hasPreviousPage"], true);
    let (edges, _) = history(
        &app,
        &account,
        json!({ "last": 10, "before": page["startCursor"] }),
    )
    .await;
    assert_eq!(edges.len(), 3);

    // A time window: since is inclusive, until exclusive.
    let (edges, _) = history(
        &app,
        &account,
        json!({ "since": entries[1].0, "until": entries[3].0, "first": 10 }),
    )
    .await;
    let versions: Vec<&Value> = edges.iter().map(|edge| &edge["node"]["version"]).collect();
    assert_eq!(versions, [&json!(2), &json!(3)]);

    // A cursor from another list, and another client's account.
    let response = app
        .graphql(
            HISTORY,
            json!({ "id": account, "after": points[0]["cursor"].as_str().unwrap().replace('a', "b") }),
        )
        .await;
    assert!(response["errors"].is_array(), "{response}");
    let entry_cursor = app
        .graphql(
            "query($id: ID!) { account(id: $id) { entries(first: 1) { edges { cursor } } } }",
            json!({ "id": account }),
        )
        .await["data"]["account"]["entries"]["edges"][0]["cursor"]
        .clone();
    let response = app
        .graphql(HISTORY, json!({ "id": account, "after": entry_cursor }))
        .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"],
        "BAD_USER_INPUT"
    );
    let stranger = app.other_client_key().await;
    let response = app
        .graphql_as(Some(&stranger), HISTORY, json!({ "id": account }))
        .await;
    assert_eq!(response["data"]["account"], Value::Null, "{response}");
}

/// Writes a posting of `amount_minor` from `from` to `to` straight into the database,
/// stamped `at`, the way an instance whose clock reads `at` would: its key, the
/// payment, its two entries and both accounts moved, in one transaction (one statement
/// on PostgreSQL, whose guards judge each statement whole).
async fn post_directly(
    app: &TestApp,
    from: Uuid,
    to: Uuid,
    amount_minor: i64,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = |id| async move {
        account::Entity::find_by_id(id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
    };
    let (source, destination) = (row(from).await, row(to).await);
    let payment = Uuid::now_v7();
    let values: Vec<sea_orm::Value> = vec![
        source.client_id.into(),                           // $1
        format!("direct-{payment}").into(),                // $2
        payment.into(),                                    // $3
        from.into(),                                       // $4
        to.into(),                                         // $5
        amount_minor.into(),                               // $6
        source.currency.clone().into(),                    // $7
        Uuid::now_v7().into(),                             // $8: the debit
        at.into(),                                         // $9
        (source.balance_minor - amount_minor).into(),      // $10
        (source.version + 1).into(),                       // $11
        Uuid::now_v7().into(),                             // $12: the credit
        (destination.balance_minor + amount_minor).into(), // $13
        (destination.version + 1).into(),                  // $14
    ];
    let key = "INSERT INTO idempotency_keys (client_id, idempotency_key, operation,
                 request_fingerprint, resource_id, created_at)
               VALUES ($1, $2, 'createPayment', 'direct', $3, $9)";
    let move_accounts = "UPDATE accounts
        SET balance_minor = CASE WHEN id = $4 THEN $10 ELSE $13 END,
            version = CASE WHEN id = $4 THEN $11 ELSE $14 END,
            last_entry_at = $9
        WHERE id = $4 OR id = $5";
    let transaction = app.db.begin().await?;
    match app.db.get_database_backend() {
        DbBackend::Postgres => {
            let sql = format!(
                "WITH key AS ({key}),
                 paid AS (INSERT INTO payments (id, client_id, idempotency_key, from_account_id,
                            to_account_id, amount_minor, currency, status, created_at)
                          VALUES ($3, $1, $2, $4, $5, $6, $7, 'POSTED', $9)),
                 halves AS (INSERT INTO ledger_entries (id, client_id, account_id, payment_id,
                              currency, direction, amount_minor, balance_after_minor,
                              account_version, created_at)
                            VALUES ($8, $1, $4, $3, $7, 'DEBIT', $6, $10, $11, $9),
                                   ($12, $1, $5, $3, $7, 'CREDIT', $6, $13, $14, $9))
                 {move_accounts}"
            );
            transaction
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    sql,
                    values,
                ))
                .await?;
        }
        _ => {
            // Feed positions past every row so far, shared by the payment and its entries.
            let statements = [
                key.to_owned(),
                "INSERT INTO payments (id, client_id, idempotency_key, from_account_id,
                   to_account_id, amount_minor, currency, status, created_at, feed_seq)
                 VALUES ($3, $1, $2, $4, $5, $6, $7, 'POSTED', $9, 1000000)"
                    .to_owned(),
                "INSERT INTO ledger_entries (id, client_id, account_id, payment_id, currency,
                   direction, amount_minor, balance_after_minor, account_version, created_at,
                   feed_seq)
                 VALUES ($8, $1, $4, $3, $7, 'DEBIT', $6, $10, $11, $9, 1000000),
                        ($12, $1, $5, $3, $7, 'CREDIT', $6, $13, $14, $9, 1000000)"
                    .to_owned(),
                move_accounts.to_owned(),
            ];
            for sql in statements {
                transaction
                    .execute_raw(Statement::from_sql_and_values(
                        DbBackend::Sqlite,
                        sql,
                        values.clone(),
                    ))
                    .await?;
            }
        }
    }
    transaction.commit().await
}

async fn entries_never_go_back_in_time_behind_a_clock_that_ran_ahead(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    let other = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&account, "5.00", "USD").await;
    // Another instance, its clock an hour ahead, funds the account.
    let ahead = payments_ledger::entity::stored_now() + Duration::hours(1);
    post_directly(&app, uuid_of(&funding), uuid_of(&account), 1000, ahead)
        .await
        .expect("a posting ahead in time is a valid posting");

    // This instance's clock is behind that entry: its payment must not go back in time.
    let response = app
        .pay("after-ahead", &account, &other, "1.00", "USD")
        .await;
    assert_eq!(
        response["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{response}"
    );
    let history = entries(&app, &account).await;
    assert_eq!(history.len(), 3);
    let times: Vec<DateTime<Utc>> = history.iter().map(|entry| parse_time(&entry.0)).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "{history:?}"
    );
    assert_eq!(times[2], ahead + Duration::microseconds(1), "{history:?}");
    // The payee had no entry ahead: its entry is stamped like the payer's, once.
    let payee = entries(&app, &other).await;
    assert_eq!(payee[0].0, history[2].0);
    // So the balance at any moment is still found by time.
    for (created_at, balance_after, _) in &history {
        assert_eq!(
            balance_at(&app, &account, created_at).await["amount"],
            *balance_after
        );
    }

    // The database refuses an entry stamped before the one ahead of it on its account.
    let error = post_directly(
        &app,
        uuid_of(&funding),
        uuid_of(&account),
        1,
        Utc::now() - Duration::hours(1),
    )
    .await
    .expect_err("an entry going back in time was accepted");
    assert!(error.to_string().contains("ledger guard"), "{error}");
    assert_eq!(entries(&app, &account).await.len(), 3);
    app.assert_ledger_sound().await;
}

async fn the_audit_finds_an_entry_that_went_back_in_time(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&account, "5.00", "USD").await;
    app.drop_guards().await;
    post_directly(
        &app,
        uuid_of(&funding),
        uuid_of(&account),
        100,
        Utc::now() - Duration::hours(1),
    )
    .await
    .expect("without the guards the database takes it");
    let violations = find_violations(&app.db).await.unwrap();
    assert!(
        !violations.is_empty()
            && violations.iter().all(
                |violation| violation.invariant == "an account's entries never go back in time"
            ),
        "{violations:?}"
    );
}
