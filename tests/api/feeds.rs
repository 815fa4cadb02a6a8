//! Client-wide feeds: a poller that follows `endCursor` sees every item exactly once
//! while two instances commit payments concurrently, and the payment filters narrow
//! the feed without changing its order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    pollers_see_every_payment_and_entry_once_across_instances,
    payment_filters_narrow_the_feed,
    feeds_refuse_bad_arguments,
);

const PAYMENT_FEED: &str = "query($after: String, $account: ID) {
  payments(first: 25, after: $after, accountId: $account) {
    nodes { id } pageInfo { endCursor hasNextPage }
  }
}";

const ENTRY_FEED: &str = "query($after: String) {
  ledgerEntries(first: 25, after: $after) { nodes { id } pageInfo { endCursor hasNextPage } }
}";

/// Follows one feed as a dashboard does, alternating between `addresses` (instances
/// behind a load balancer): a page after the last `endCursor`, again and again. Once
/// `writers_done` is set it waits for the feed to settle, reads to the end, and
/// returns every id it saw, in the order it saw them.
async fn follow(
    app: &TestApp,
    addresses: &[&str],
    query: &str,
    field: &str,
    variables: Value,
    writers_done: &AtomicBool,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut settled = false;
    for request in 0.. {
        let mut variables = variables.clone();
        variables["after"] = json!(cursor);
        let address = addresses[request % addresses.len()];
        let response = app.graphql_at(address, query, variables).await;
        // A poller keeps its cursor and reads again later (docs/api.md).
        if crate::helpers::error_code(&response) == Some("RETRY_LATER") {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        }
        assert!(response["errors"].is_null(), "{response}");
        let page = &response["data"][field];
        for node in page["nodes"].as_array().expect("nodes") {
            seen.push(node["id"].as_str().expect("an id").to_owned());
        }
        if let Some(end) = page["pageInfo"]["endCursor"].as_str() {
            cursor = Some(end.to_owned());
        }
        if page["pageInfo"]["hasNextPage"] == true {
            continue;
        }
        if settled {
            return seen;
        }
        if writers_done.load(Ordering::SeqCst) {
            // Everything is written; what remains is to see it all listed.
            app.settle_feeds().await;
            settled = true;
        } else {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    unreachable!()
}

fn assert_each_once(seen: &[String], expected: &HashSet<String>, what: &str) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in seen {
        *counts.entry(id).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        repeated.is_empty(),
        "{what}: seen more than once: {repeated:?}"
    );
    let seen: HashSet<String> = seen.iter().cloned().collect();
    let missed: Vec<_> = expected.difference(&seen).collect();
    assert!(
        missed.is_empty(),
        "{what}: missed {} of {}: {missed:?}",
        missed.len(),
        expected.len()
    );
    let foreign: Vec<_> = seen.difference(expected).collect();
    assert!(foreign.is_empty(), "{what}: not expected: {foreign:?}");
}

async fn pollers_see_every_payment_and_entry_once_across_instances(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let replica = app.spawn_replica().await;
    let addresses = [app.address.as_str(), replica.address.as_str()];
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let mut accounts = Vec::new();
    for _ in 0..4 {
        accounts.push(app.create_account("USD", "NON_NEGATIVE", None).await);
    }
    let watched = accounts[0].clone();
    const PAYMENTS: usize = 160;

    let writers_done = AtomicBool::new(false);
    let writers = async {
        let outcomes = join_all((0..PAYMENTS).map(|index| {
            let (app, accounts, funding) = (&app, &accounts, &funding);
            let address = addresses[index % 2];
            async move {
                // A third are funding, the rest move money between the accounts, and
                // some of those are declined for want of funds.
                let (from, to) = if index % 3 == 0 {
                    (funding, &accounts[index % 4])
                } else {
                    (&accounts[index % 4], &accounts[(index / 4 + 1 + index) % 4])
                };
                let to = if to == from { funding } else { to };
                let response = app
                    .pay_until_final_at(address, &format!("feed-{index}"), from, to, "7.00", "USD")
                    .await;
                let payment = &response["data"]["createPayment"]["payment"];
                assert!(payment["id"].is_string(), "{response}");
                (
                    payment["id"].as_str().unwrap().to_owned(),
                    [from.clone(), to.clone()],
                    payment["status"] == "POSTED",
                )
            }
        }))
        .await;
        writers_done.store(true, Ordering::SeqCst);
        outcomes
    };
    let no_account = json!({});
    let (outcomes, payment_feed, entry_feed, account_feed) = tokio::join!(
        writers,
        follow(
            &app,
            &addresses,
            PAYMENT_FEED,
            "payments",
            no_account.clone(),
            &writers_done
        ),
        follow(
            &app,
            &addresses,
            ENTRY_FEED,
            "ledgerEntries",
            no_account,
            &writers_done
        ),
        follow(
            &app,
            &addresses,
            PAYMENT_FEED,
            "payments",
            json!({ "account": watched }),
            &writers_done
        ),
    );

    let all_payments: HashSet<String> = outcomes.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(all_payments.len(), PAYMENTS);
    assert_each_once(&payment_feed, &all_payments, "payments feed");
    let of_watched: HashSet<String> = outcomes
        .iter()
        .filter(|(_, sides, _)| sides.contains(&watched))
        .map(|(id, _, _)| id.clone())
        .collect();
    assert_each_once(&account_feed, &of_watched, "payments(accountId:) feed");
    let posted = outcomes.iter().filter(|(_, _, posted)| *posted).count();
    assert!(
        posted > 0 && posted < PAYMENTS,
        "some post, some decline: {posted}"
    );

    // Entries: as many as posted payments made, none twice, and exactly the client's.
    assert_eq!(entry_feed.len(), 2 * posted);
    assert_eq!(app.count("ledger_entries").await as usize, 2 * posted);
    let distinct: HashSet<&String> = entry_feed.iter().collect();
    assert_eq!(distinct.len(), entry_feed.len(), "an entry was seen twice");
    for id in entry_feed.iter().take(5) {
        let response = app
            .graphql(
                "query($id: ID!) { node(id: $id) { ... on LedgerEntry { id } } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(response["data"]["node"]["id"], id.as_str(), "{response}");
    }
    app.assert_ledger_sound().await;
}

async fn payment_filters_narrow_the_feed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let funding = app.create_account("EUR", "UNBOUNDED", None).await;
    let saver = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let spender = app.create_account("EUR", "NON_NEGATIVE", None).await;
    let mut expected = Vec::new();
    for index in 0..12 {
        // Even: fund the saver. Odd: the spender, who has nothing, tries to pay.
        let (from, to) = if index % 2 == 0 {
            (&funding, &saver)
        } else {
            (&spender, &saver)
        };
        let response = app
            .pay_until_final(&format!("filter-{index}"), from, to, "1.00", "EUR")
            .await;
        let payment = response["data"]["createPayment"]["payment"].clone();
        expected.push(payment);
    }
    app.settle_feeds().await;
    let list = |arguments: &str, account: Option<&str>| {
        let query = format!(
            "query($account: ID) {{
               payments(accountId: $account, first: 100{arguments}) {{ nodes {{ id }} }}
             }}"
        );
        let variables = json!({ "account": account });
        let app = &app;
        async move {
            let response = app.graphql(&query, variables).await;
            assert!(response["errors"].is_null(), "{response}");
            response["data"]["payments"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|node| node["id"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let ids_where = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        expected
            .iter()
            .filter(|payment| keep(payment))
            .map(|payment| payment["id"].as_str().unwrap().to_owned())
            .collect()
    };

    let everything = list("", None).await;
    assert_eq!(
        everything,
        ids_where(&|_| true),
        "sequential payments list in order"
    );
    let declined = list(", status: DECLINED", None).await;
    assert_eq!(
        declined,
        ids_where(&|payment| payment["status"] == "DECLINED")
    );
    assert_eq!(declined.len(), 6);
    let posted = list(", status: POSTED", None).await;
    assert_eq!(posted, ids_where(&|payment| payment["status"] == "POSTED"));
    let of_spender = list("", Some(&spender)).await;
    assert_eq!(of_spender, declined, "the spender only ever failed to pay");
    let declined_of_spender = list(", status: DECLINED", Some(&spender)).await;
    assert_eq!(declined_of_spender, declined);

    // The last page of one account's payments, read backwards, then the page before it.
    let response = app
        .graphql(
            "query($account: ID!) { payments(accountId: $account, last: 4) {
               nodes { id } pageInfo { startCursor hasPreviousPage } } }",
            json!({ "account": saver }),
        )
        .await;
    let last_four: Vec<String> = response["data"]["payments"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .iter()
        .map(|node| node["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(last_four, everything[8..]);
    assert_eq!(
        response["data"]["payments"]["pageInfo"]["hasPreviousPage"],
        true
    );
    let before = response["data"]["payments"]["pageInfo"]["startCursor"].clone();
    let response = app
        .graphql(
            "query($account: ID!, $before: String) { payments(accountId: $account, last: 4, before: $before) { nodes { id } } }",
            json!({ "account": saver, "before": before }),
        )
        .await;
    let nodes = response["data"]["payments"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    let ids: Vec<&str> = nodes
        .iter()
        .map(|node| node["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, everything[4..8]);

    // since is inclusive and until exclusive, on createdAt: split at one payment's time.
    let response = app
        .graphql(
            "query($id: ID!) { payment(id: $id) { createdAt } }",
            json!({ "id": expected[6]["id"] }),
        )
        .await;
    let split = response["data"]["payment"]["createdAt"].clone();
    assert!(split.is_string(), "{response}");
    let response = app
        .graphql(
            "query($at: DateTime) {
               since: payments(first: 100, since: $at) { nodes { id createdAt } }
               until: payments(first: 100, until: $at) { nodes { id createdAt } }
             }",
            json!({ "at": split }),
        )
        .await;
    assert!(response["errors"].is_null(), "{response}");
    let split_at: chrono::DateTime<chrono::Utc> = split.as_str().unwrap().parse().unwrap();
    let side = |name: &str| -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
        response["data"][name]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|node| {
                (
                    node["id"].as_str().unwrap().to_owned(),
                    node["createdAt"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect()
    };
    let (since, until) = (side("since"), side("until"));
    assert!(since.iter().all(|(_, at)| *at >= split_at));
    assert!(until.iter().all(|(_, at)| *at < split_at));
    assert!(
        since
            .iter()
            .any(|(id, _)| id == expected[6]["id"].as_str().unwrap())
    );
    assert_eq!(since.len() + until.len(), expected.len());

    // The same filters on Account.payments.
    let response = app
        .graphql(
            "query($account: ID!) { account(id: $account) { payments(first: 100, status: POSTED) { nodes { id } } } }",
            json!({ "account": saver }),
        )
        .await;
    assert_eq!(
        response["data"]["account"]["payments"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        6,
        "{response}"
    );
}

async fn feeds_refuse_bad_arguments(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.settle_feeds().await;
    let accounts = app
        .graphql(
            "{ accounts(first: 1) { pageInfo { endCursor } } }",
            json!({}),
        )
        .await;
    let account_cursor = accounts["data"]["accounts"]["pageInfo"]["endCursor"].clone();
    assert!(account_cursor.is_string(), "{accounts}");
    let entries = app
        .graphql(
            "query($id: ID!) { ledgerEntries(accountId: $id) { pageInfo { endCursor } } }",
            json!({ "id": account }),
        )
        .await;
    assert!(entries["errors"].is_null(), "{entries}");

    for (query, variables) in [
        // A cursor of another list.
        (
            "query($after: String) { payments(after: $after) { nodes { id } } }",
            json!({ "after": account_cursor }),
        ),
        (
            "query($after: String) { ledgerEntries(after: $after) { nodes { id } } }",
            json!({ "after": account_cursor }),
        ),
        // Not a time.
        (
            "{ payments(since: \"yesterday\") { nodes { id } } }",
            json!({}),
        ),
        // Not a status.
        ("{ payments(status: SETTLED) { nodes { id } } }", json!({})),
        // Not an account of this client's.
        (
            "{ payments(accountId: \"acc_0193a4c2e8b07c3d9e1f2a3b4c5d6e7f\") { nodes { id } } }",
            json!({}),
        ),
    ] {
        let response = app.graphql(query, variables).await;
        assert!(
            matches!(error_code(&response), Some("BAD_USER_INPUT" | "NOT_FOUND")),
            "{query}: {response}"
        );
    }
}

/// The race a feed must survive, made deterministic: a transaction that took its id
/// first commits last. Here the test holds one open (a declined payment with its key,
/// written by hand as the service would), while a payment through the API commits. A
/// poller must not be shown the newer payment yet, or its cursor would pass the older
/// one for good. PostgreSQL only: SQLite's single writer cannot interleave commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_that_commits_late_is_not_skipped() {
    use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let customer = app.create_account("USD", "NON_NEGATIVE", None).await;
    // The open transaction's foreign keys hold share locks on the first two accounts.
    let other_funding = app.create_account("USD", "UNBOUNDED", None).await;
    let other_customer = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.settle_feeds().await;
    let page = |after: Option<String>| {
        let app = &app;
        async move {
            let response = app.graphql(PAYMENT_FEED, json!({ "after": after })).await;
            assert!(response["errors"].is_null(), "{response}");
            let page = &response["data"]["payments"];
            let ids: Vec<String> = page["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|node| node["id"].as_str().unwrap().to_owned())
                .collect();
            (
                ids,
                page["pageInfo"]["endCursor"].as_str().map(str::to_owned),
            )
        }
    };
    let (before, _) = page(None).await;
    assert!(before.is_empty());

    let uuid = |id: &str| uuid::Uuid::parse_str(&id[4..]).unwrap();
    let late = uuid::Uuid::now_v7();
    let transaction = app.db.begin().await.unwrap();
    let statement = |sql: &str, values: Vec<sea_orm::Value>| {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    };
    transaction
        .execute_raw(statement(
            "INSERT INTO idempotency_keys
               (client_id, idempotency_key, operation, request_fingerprint, resource_id, created_at)
             SELECT client_id, 'late', 'createPayment', repeat('0', 64), $2, now()
             FROM accounts WHERE id = $1",
            vec![uuid(&customer).into(), late.into()],
        ))
        .await
        .unwrap();
    transaction
        .execute_raw(statement(
            "INSERT INTO payments (id, client_id, idempotency_key, from_account_id, to_account_id,
                                   amount_minor, currency, status, decline_reason, created_at)
             SELECT $3, client_id, 'late', $1, $2, 100, 'USD', 'DECLINED', 'INSUFFICIENT_FUNDS', now()
             FROM accounts WHERE id = $1",
            vec![uuid(&customer).into(), uuid(&funding).into(), late.into()],
        ))
        .await
        .unwrap();

    // A payment that starts after the open transaction commits before it.
    let response = app
        .pay("early", &other_funding, &other_customer, "1.00", "USD")
        .await;
    let early = response["data"]["createPayment"]["payment"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"))
        .to_owned();
    let (shown_early, cursor) = page(None).await;
    assert!(
        shown_early.is_empty(),
        "listed {shown_early:?} while an older transaction could still commit behind it"
    );

    transaction.commit().await.unwrap();
    app.settle_feeds().await;
    let (rest, _) = page(cursor).await;
    let mut seen = shown_early;
    seen.extend(rest);
    assert_eq!(seen, vec![format!("pay_{}", late.simple()), early]);
    app.assert_ledger_sound().await;
}
