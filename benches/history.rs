//! The cost of balance history by history length: `balanceHistory` pages and
//! `balanceAt` lookups at random moments on an account with 10^3 entries and on one with
//! 10^6, against the release server on PostgreSQL, in one run.
//!
//!     cargo bench --bench history
//!
//! Reads `LEDGER_BENCH_DATABASE_URL` (an admin PostgreSQL URL; default
//! postgres://postgres@127.0.0.1:5432/postgres), `BENCH_SECONDS` per phase (default 5),
//! `BENCH_CONCURRENCY` (default 4) and `BENCH_LARGE_ENTRIES` (default 1000000). Creates and
//! drops its own database. The histories are written straight into the database in
//! bulk (as the table owner, with the guard triggers off for the load only) and then
//! checked by the ledger's audit, so the server reads a ledger it could have written.
//! Prints numbers; asserts nothing.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use hdrhistogram::Histogram;
use ledger_client::{AccountInput, LedgerClient, account_id_of};
use rand::Rng;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use serde_json::{Value, json};
use support::{Server, env_or, with_database};

const SMALL_ENTRIES: i64 = 1_000;
const PAGE_SIZE: i64 = 50;

/// An account whose history was loaded: its id, and the time of its first and last entry.
struct History {
    account: String,
    entries: i64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
}

/// Writes `entries` payments of 0.01 (with their keys) from `source` to `account` (both the client's, USD,
/// no entries yet), one millisecond apart: `account` then has `entries` entries, each
/// balance and version following the one before, and so does `source` the other way.
async fn load_history(
    db: &DatabaseConnection,
    client: &str,
    source: &str,
    account: &str,
    entries: i64,
    seed: u32,
) -> History {
    let uuid = |id: &str| id.split_once('_').map_or(id, |(_, raw)| raw).to_owned();
    let (source_uuid, account_uuid) = (uuid(source), uuid(account));
    let first = Utc::now() - TimeDelta::days(30);
    let at = |g: &str| {
        format!(
            "(TIMESTAMPTZ '{}' + {g} * INTERVAL '1 millisecond')",
            first.to_rfc3339()
        )
    };
    let id = |kind: u32, g: &str| {
        format!("('{seed:08x}-0000-7000-{kind:04x}-' || lpad(to_hex({g}), 12, '0'))::uuid")
    };
    let statements = [
        "SET LOCAL session_replication_role = replica".to_owned(),
        format!(
            "INSERT INTO payments (id, client_id, idempotency_key, from_account_id, to_account_id,
               amount_minor, currency, status, created_at)
             SELECT {}, '{client}', 'history-{seed}-' || g, '{source_uuid}', '{account_uuid}', 1,
                    'USD', 'POSTED', {}
             FROM generate_series(1, {entries}) AS g",
            id(0x8000, "g"),
            at("g")
        ),
        format!(
            "INSERT INTO idempotency_keys (client_id, idempotency_key, operation,
               request_fingerprint, resource_id, created_at)
             SELECT '{client}'::uuid, 'history-{seed}-' || g, 'createPayment', 'bulk', {}, {}
             FROM generate_series(1, {entries}) AS g",
            id(0x8000, "g"),
            at("g")
        ),
        format!(
            "INSERT INTO ledger_entries (id, client_id, account_id, payment_id, currency,
               direction, amount_minor, balance_after_minor, account_version, created_at)
             SELECT {}, '{client}'::uuid, '{source_uuid}'::uuid, {}, 'USD', 'DEBIT', 1, -g, g, {}
             FROM generate_series(1, {entries}) AS g
             UNION ALL
             SELECT {}, '{client}'::uuid, '{account_uuid}'::uuid, {}, 'USD', 'CREDIT', 1, g, g, {}
             FROM generate_series(1, {entries}) AS g",
            id(0x8001, "g"),
            id(0x8000, "g"),
            at("g"),
            id(0x8002, "g"),
            id(0x8000, "g"),
            at("g")
        ),
        format!(
            "UPDATE accounts SET balance_minor = CASE WHEN id = '{account_uuid}' THEN {entries}
                                                      ELSE -{entries} END,
                                 version = {entries}, last_entry_at = {}
             WHERE id IN ('{source_uuid}', '{account_uuid}')",
            at(&entries.to_string())
        ),
    ];
    // One transaction: the trigger setting is local to it.
    let transaction = db.begin().await.unwrap();
    for statement in statements {
        transaction
            .execute_unprepared(&statement)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    transaction.commit().await.unwrap();
    db.execute_unprepared("ANALYZE").await.unwrap();
    History {
        account: account.to_owned(),
        entries,
        first: first + TimeDelta::milliseconds(1),
        last: first + TimeDelta::milliseconds(entries),
    }
}

struct PhaseResult {
    name: String,
    requests_per_second: f64,
    latency: Histogram<u64>,
    errors: u64,
}

impl PhaseResult {
    fn mean_ms(&self) -> f64 {
        self.latency.mean() / 1000.0
    }
}

/// A closed loop of `query` at random moments of `history`, `concurrency` at once.
async fn run_phase(
    name: String,
    client: &LedgerClient,
    query: &'static str,
    history: &Arc<History>,
    concurrency: usize,
    duration: Duration,
) -> PhaseResult {
    let variables = |history: &History| {
        let span = (history.last - history.first).num_milliseconds().max(1);
        let offset = rand::rng().random_range(0..span);
        json!({
            "id": history.account,
            "time": (history.first + TimeDelta::milliseconds(offset)).to_rfc3339(),
            "first": PAGE_SIZE,
        })
    };
    for _ in 0..50 {
        answered(client.graphql(query, variables(history)).await);
    }
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, history) = (client.clone(), Arc::clone(history));
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut count, mut errors) = (0_u64, 0_u64);
            while started.elapsed() < duration {
                let sent = Instant::now();
                let response = answered(client.graphql(query, variables(&history)).await);
                latency.record(sent.elapsed().as_micros() as u64).ok();
                count += 1;
                errors += u64::from(response.get("errors").is_some());
            }
            (count, errors, latency)
        })
    });
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut count, mut errors) = (0, 0);
    for worker in futures::future::join_all(workers).await {
        let (worker_count, worker_errors, worker_latency) = worker.unwrap();
        count += worker_count;
        errors += worker_errors;
        latency.add(worker_latency).unwrap();
    }
    PhaseResult {
        name,
        requests_per_second: count as f64 / started.elapsed().as_secs_f64(),
        latency,
        errors,
    }
}

fn answered(response: Result<Value, reqwest::Error>) -> Value {
    response.expect("the server answers with JSON")
}

/// One page of `PAGE_SIZE` points from a random moment on.
const PAGE: &str = "query($id: ID!, $time: DateTime!, $first: Int!) {
  account(id: $id) {
    balanceHistory(since: $time, first: $first) {
      edges { cursor node { at amount change version } }
      pageInfo { hasNextPage endCursor }
    }
  }
}";

/// The balance at a random moment.
const AT: &str = "query($id: ID!, $time: DateTime!) {
  account(id: $id) { balanceAt(time: $time) { amount version } }
}";

fn main() {
    let admin_url = env_or(
        "LEDGER_BENCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let seconds: u64 = env_or("BENCH_SECONDS", "5").parse().unwrap_or(5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", "4").parse().unwrap_or(4);
    let large_entries: i64 = env_or("BENCH_LARGE_ENTRIES", "1000000")
        .parse()
        .unwrap_or(1_000_000);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = format!("ledger_bench_{}", uuid::Uuid::new_v4().simple());
    let database_url = with_database(&admin_url, &database);
    let db = runtime.block_on(async {
        let admin = Database::connect(&admin_url)
            .await
            .expect("PostgreSQL is reachable");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
        Database::connect(&database_url).await.unwrap()
    });
    let output = Command::new(support::server_bin())
        .args(["client", "create", "bench"])
        .env("DATABASE_URL", &database_url)
        .output()
        .expect("client create runs");
    let key = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .trim()
        .to_owned();

    let server = Server::start(&[("DATABASE_URL", &database_url)]);
    let client = LedgerClient::new(&server.address, Some(&key));
    let (results, histories, load_seconds, violations) = runtime.block_on(async {
        let create = |key: String, rule: &'static str| {
            let client = client.clone();
            async move {
                let response = answered(
                    client
                        .create_account(&AccountInput::new(&key, "USD", rule))
                        .await,
                );
                account_id_of(&response)
                    .unwrap_or_else(|| panic!("an account: {response}"))
                    .to_owned()
            }
        };
        let client_id: String = db
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT id::text AS id FROM clients",
            ))
            .await
            .unwrap()
            .expect("the bench client")
            .try_get("", "id")
            .unwrap();
        let started = Instant::now();
        let mut histories = Vec::new();
        for (seed, entries) in [(1_u32, SMALL_ENTRIES), (2, large_entries)] {
            let source = create(format!("source-{seed}"), "UNBOUNDED").await;
            let account = create(format!("account-{seed}"), "NON_NEGATIVE").await;
            histories.push(Arc::new(
                load_history(&db, &client_id, &source, &account, entries, seed).await,
            ));
        }
        let load_seconds = started.elapsed().as_secs_f64();
        let violations = payments_ledger::ledger::audit::find_violations(&db)
            .await
            .expect("the audit runs");
        let mut results = Vec::new();
        for (label, query) in [("balanceHistory page", PAGE), ("balanceAt", AT)] {
            for history in &histories {
                let name = format!("{label}, {} entries", history.entries);
                results.push(run_phase(name, &client, query, history, concurrency, duration).await);
            }
        }
        (results, histories, load_seconds, violations)
    });
    drop(server);
    runtime.block_on(async {
        drop(db);
        let admin = Database::connect(&admin_url).await.unwrap();
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await
            .ok();
    });

    println!(
        "\nhistories: {} entries loaded in {load_seconds:.1} s; audit: {} violations",
        histories.iter().map(|history| history.entries).sum::<i64>() * 2,
        violations.len()
    );
    for violation in violations.iter().take(3) {
        println!("  {violation}");
    }
    println!(
        "{seconds} s per phase, {concurrency} concurrent clients, pages of {PAGE_SIZE}, random moments, PostgreSQL, server and client on the same machine\n"
    );
    println!("| phase | requests/s | mean ms | p50 ms | p99 ms | errors |");
    println!("|---|---:|---:|---:|---:|---:|");
    for result in &results {
        let ms = |quantile: f64| result.latency.value_at_quantile(quantile) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.3} | {:.2} | {:.2} | {} |",
            result.name,
            result.requests_per_second,
            result.mean_ms(),
            ms(0.5),
            ms(0.99),
            result.errors
        );
    }
    println!();
    for pair in results.chunks(2) {
        if let [small, large] = pair {
            println!(
                "{} / {}: {:.2}x the mean cost (goal <= 1.2x)",
                large.name,
                small.name,
                large.mean_ms() / small.mean_ms()
            );
        }
    }
}
