//! Many payments at once among few accounts, through two server instances (design.md
//! section 5): afterwards every invariant holds, checked from the database, and every
//! acknowledged payment is there.

use std::collections::HashMap;

use futures::future::join_all;
use payments_ledger::entity::{account, ledger_entry, payment};
use rand::Rng;
use sea_orm::{ActiveEnum, EntityTrait};
use uuid::Uuid;

use payments_ledger::config::WriteIsolation;

use crate::helpers::{AppOptions, Backend, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(three_hundred_concurrent_payments_keep_every_invariant);

/// The same on PostgreSQL with READ COMMITTED write transactions: row locks alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hundred_concurrent_payments_under_read_committed() {
    let options = AppOptions {
        write_isolation: WriteIsolation::ReadCommitted,
        ..AppOptions::default()
    };
    concurrent_payments(Backend::Postgres, options).await;
}

const ACCOUNTS: usize = 10;
const PAYMENTS: usize = 300;

async fn three_hundred_concurrent_payments_keep_every_invariant(backend: Backend) {
    concurrent_payments(backend, AppOptions::default()).await;
}

async fn concurrent_payments(backend: Backend, options: AppOptions) {
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let mut accounts = vec![funding.clone()];
    for index in 1..ACCOUNTS {
        let rule = if index % 3 == 0 {
            "CREDIT_LIMIT"
        } else {
            "NON_NEGATIVE"
        };
        let limit = (rule == "CREDIT_LIMIT").then_some("5.00");
        let id = app.create_account("USD", rule, limit).await;
        // Nearly empty: most payments out of these accounts race for the last cents.
        app.pay(&format!("seed-{index}"), &funding, &id, "3.00", "USD")
            .await;
        accounts.push(id);
    }

    let planned: Vec<(String, String, String, String)> = {
        let mut rng = rand::rng();
        (0..PAYMENTS)
            .map(|_| {
                let from = rng.random_range(0..ACCOUNTS);
                let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                let cents = rng.random_range(1..=250);
                (
                    Uuid::new_v4().to_string(),
                    accounts[from].clone(),
                    accounts[to].clone(),
                    format!("{}.{:02}", cents / 100, cents % 100),
                )
            })
            .collect()
    };
    // Two instances on one database, as behind a load balancer: their in-process write
    // queues know nothing of each other, so only the database keeps this correct.
    let replica = app.spawn_replica().await;
    let instances = [app.address.clone(), replica.address];
    let responses = join_all(
        planned
            .iter()
            .enumerate()
            .map(|(index, (key, from, to, amount))| {
                app.pay_until_final_at(&instances[index % 2], key, from, to, amount, "USD")
            }),
    )
    .await;

    // Every acknowledged payment is stored, with the status the client was told.
    let stored: HashMap<Uuid, payment::Model> = payment::Entity::find()
        .all(&app.db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.id, row))
        .collect();
    let mut posted = 0;
    for ((key, _, _, _), response) in planned.iter().zip(&responses) {
        let payment = &response["data"]["createPayment"]["payment"];
        let id = payment["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"));
        let uuid = Uuid::parse_str(id.trim_start_matches("pay_")).unwrap();
        let row = stored
            .get(&uuid)
            .unwrap_or_else(|| panic!("acknowledged payment {id} is missing"));
        assert_eq!(&row.idempotency_key, key);
        assert_eq!(
            payment["status"].as_str(),
            Some(row.status.to_value().as_str())
        );
        posted += usize::from(row.status.to_value() == "POSTED");
    }
    assert_eq!(stored.len(), PAYMENTS + ACCOUNTS - 1);
    assert!(posted > 0, "some payments posted");

    // The invariants, recomputed here from the raw rows...
    let entries = ledger_entry::Entity::find().all(&app.db).await.unwrap();
    let accounts = account::Entity::find().all(&app.db).await.unwrap();
    let signed = |entry: &ledger_entry::Model| match entry.direction.to_value().as_str() {
        "CREDIT" => entry.amount_minor,
        _ => -entry.amount_minor,
    };
    assert_eq!(
        entries.iter().map(signed).sum::<i64>(),
        0,
        "money is conserved"
    );
    for account in &accounts {
        let mine: Vec<&ledger_entry::Model> = entries
            .iter()
            .filter(|entry| entry.account_id == account.id)
            .collect();
        assert_eq!(
            account.balance_minor,
            mine.iter().map(|entry| signed(entry)).sum::<i64>()
        );
        assert_eq!(account.version, mine.len() as i64);
        let mut versions: Vec<i64> = mine.iter().map(|entry| entry.account_version).collect();
        versions.sort_unstable();
        assert_eq!(
            versions,
            (1..=account.version).collect::<Vec<_>>(),
            "no gaps, no repeats"
        );
        match account.balance_rule.to_value().as_str() {
            "NON_NEGATIVE" => assert!(account.balance_minor >= 0),
            "CREDIT_LIMIT" => {
                assert!(account.balance_minor >= -account.credit_limit_minor.unwrap())
            }
            _ => {}
        }
    }
    assert_eq!(
        entries.len(),
        2 * stored
            .values()
            .filter(|row| row.status.to_value() == "POSTED")
            .count()
    );
    // ...and by the audit every other tool uses.
    app.assert_ledger_sound().await;
}
