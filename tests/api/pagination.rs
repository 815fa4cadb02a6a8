//! Relay keyset pagination: both directions, stable cursors, bounded pages, and a
//! poller that never misses or repeats an entry while payments commit.

use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, error_code, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    pages_go_both_ways_with_stable_cursors,
    a_poller_sees_every_entry_once_while_payments_commit,
    page_sizes_and_cursors_are_checked,
);

const ACCOUNTS_PAGE: &str = "query($first: Int, $after: String, $last: Int, $before: String) {
  accounts(first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { id } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}";

fn ids(page: &Value) -> Vec<String> {
    page["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{page}"))
        .iter()
        .map(|edge| edge["node"]["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn accounts_page(app: &TestApp, variables: Value) -> Value {
    let response = app.graphql(ACCOUNTS_PAGE, variables).await;
    assert!(response["errors"].is_null(), "{response}");
    response["data"]["accounts"].clone()
}

async fn pages_go_both_ways_with_stable_cursors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut created = Vec::new();
    for _ in 0..7 {
        created.push(app.create_account("USD", "NON_NEGATIVE", None).await);
    }
    app.settle_feeds().await;

    // Forward in pages of 3: 3 + 3 + 1, in creation order.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = accounts_page(&app, json!({ "first": 3, "after": after })).await;
        seen.extend(ids(&page));
        pages += 1;
        assert_eq!(page["pageInfo"]["hasPreviousPage"], pages > 1);
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, created);

    // Backward from the end in pages of 3: 3 + 3 + 1, each page in ascending order.
    let mut seen_backward = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = accounts_page(&app, json!({ "last": 3, "before": before })).await;
        let mut page_ids = ids(&page);
        page_ids.extend(seen_backward);
        seen_backward = page_ids;
        if page["pageInfo"]["hasPreviousPage"] == false {
            break;
        }
        before = page["pageInfo"]["startCursor"].as_str().map(str::to_owned);
    }
    assert_eq!(seen_backward, created);

    // A cursor keeps meaning the same place: the page after the 2nd account, twice.
    let first_two = accounts_page(&app, json!({ "first": 2 })).await;
    let cursor = first_two["pageInfo"]["endCursor"].clone();
    let again = accounts_page(&app, json!({ "first": 2, "after": cursor })).await;
    assert_eq!(ids(&again), created[2..4]);
    assert_eq!(
        ids(&accounts_page(&app, json!({ "first": 2, "after": cursor })).await),
        created[2..4]
    );
    // Between two cursors.
    let between = accounts_page(
        &app,
        json!({ "first": 10, "after": first_two["edges"][0]["cursor"], "before": again["pageInfo"]["endCursor"] }),
    )
    .await;
    assert_eq!(ids(&between), created[1..3]);
}

async fn a_poller_sees_every_entry_once_while_payments_commit(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let watched = app.create_account("USD", "NON_NEGATIVE", None).await;
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    const PAYMENTS: usize = 60;

    let writers = async {
        join_all((0..PAYMENTS).map(|index| {
            let (app, watched, funding) = (&app, &watched, &funding);
            async move {
                tokio::time::sleep(Duration::from_millis((index % 12) as u64 * 5)).await;
                app.pay_until_final(&format!("poll-{index}"), funding, watched, "1.00", "USD")
                    .await
            }
        }))
        .await
    };
    let poller = async {
        let mut versions = Vec::new();
        let mut after: Option<String> = None;
        // Bounded, so a missed entry fails the test instead of hanging it.
        for _ in 0..10_000 {
            if versions.len() >= PAYMENTS {
                break;
            }
            let response = app
                .graphql(
                    "query($id: ID!, $after: String) { ledgerEntries(accountId: $id, first: 7, after: $after) {
                       edges { cursor node { accountVersion } } pageInfo { endCursor } } }",
                    json!({ "id": watched, "after": after }),
                )
                .await;
            let page = &response["data"]["ledgerEntries"];
            for edge in page["edges"]
                .as_array()
                .unwrap_or_else(|| panic!("{response}"))
            {
                versions.push(edge["node"]["accountVersion"].as_i64().unwrap());
            }
            if let Some(cursor) = page["pageInfo"]["endCursor"].as_str() {
                after = Some(cursor.to_owned());
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        versions
    };
    let (_, versions) = tokio::join!(writers, poller);
    assert_eq!(
        versions,
        (1..=PAYMENTS as i64).collect::<Vec<_>>(),
        "every entry once, in order"
    );

    // Backward over the same list gives the same entries.
    let response = app
        .graphql(
            "query($id: ID!) { ledgerEntries(accountId: $id, last: 100) { nodes { accountVersion } pageInfo { hasNextPage hasPreviousPage } } }",
            json!({ "id": watched }),
        )
        .await;
    let page = &response["data"]["ledgerEntries"];
    assert_eq!(page["nodes"].as_array().unwrap().len(), PAYMENTS);
    assert_eq!(
        page["pageInfo"],
        json!({ "hasNextPage": false, "hasPreviousPage": false })
    );
    app.assert_ledger_sound().await;
}

async fn page_sizes_and_cursors_are_checked(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let account = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.settle_feeds().await;
    for variables in [
        json!({ "first": 101 }),
        json!({ "last": 101 }),
        json!({ "first": -1 }),
        json!({ "first": 1, "last": 1 }),
        json!({ "after": "not-a-cursor" }),
        json!({ "before": "YTp4eXo" }),
    ] {
        let response = app.graphql(ACCOUNTS_PAGE, variables.clone()).await;
        assert_eq!(
            error_code(&response),
            Some("BAD_USER_INPUT"),
            "{variables}: {response}"
        );
        let message = response["errors"][0]["message"].as_str().unwrap();
        assert!(
            message.contains("first") || message.contains("last") || message.contains("cursor"),
            "{message}"
        );
    }
    assert_eq!(
        ids(&accounts_page(&app, json!({ "first": 100 })).await),
        vec![account.clone()]
    );
    assert_eq!(
        ids(&accounts_page(&app, json!({ "first": 0 })).await),
        Vec::<String>::new()
    );

    // A cursor from one list is refused by another.
    let accounts = accounts_page(&app, json!({})).await;
    let response = app
        .graphql(
            "query($id: ID!, $after: String) { ledgerEntries(accountId: $id, after: $after) { nodes { id } } }",
            json!({ "id": account, "after": accounts["pageInfo"]["endCursor"] }),
        )
        .await;
    assert_eq!(error_code(&response), Some("BAD_USER_INPUT"), "{response}");
}
