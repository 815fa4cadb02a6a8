//! Balance-read throughput by cache level, against the release server on PostgreSQL and
//! Redis, next to a trivial `{ __typename }` query on the same server, in one run.
//!
//!     cargo bench --bench reads
//!
//! Reads `LEDGER_BENCH_DATABASE_URL` (an admin PostgreSQL URL; default
//! postgres://postgres@127.0.0.1:5432/postgres) and `LEDGER_BENCH_REDIS_URL` (default
//! redis://127.0.0.1:6379), `BENCH_SECONDS` per phase (default 5) and `BENCH_CONCURRENCY`
//! (default 32), and `LEDGER_BENCH_SERVER_BIN` to measure another build's server (say,
//! the previous commit's) with the same driver. Creates and drops its own database.
//! Prints numbers; asserts nothing.

#[path = "support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ledger_client::{AccountInput, LedgerClient, PaymentInput, account_id_of};
use serde_json::{Value, json};
use support::{Server, env_or, with_database};

const ACCOUNTS: usize = 100;

struct PhaseResult {
    name: &'static str,
    requests_per_second: f64,
    latency: Histogram<u64>,
    errors: u64,
    rss_mib: f64,
}

/// A closed loop: `concurrency` workers each send the next request as soon as the last
/// one answered, for `duration`.
async fn run_phase(
    name: &'static str,
    server: &Server,
    key: &str,
    query: &'static str,
    accounts: &Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> PhaseResult {
    let client = LedgerClient::new(&server.address, Some(key));
    // Warm-up: every account once, so "warm" means warm.
    for account in accounts.iter() {
        answered(client.graphql(query, json!({ "id": account })).await);
    }
    let started = Instant::now();
    let workers = (0..concurrency).map(|worker| {
        let (client, accounts) = (client.clone(), Arc::clone(accounts));
        tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut count, mut errors) = (0_u64, 0_u64);
            let mut index = worker;
            while started.elapsed() < duration {
                let account = &accounts[index % accounts.len()];
                index += concurrency;
                let sent = Instant::now();
                let response = answered(client.graphql(query, json!({ "id": account })).await);
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
        rss_mib: server.rss_mib(),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("model name")
                    .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .next()
                .map(|line| line.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kib| kib.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!(
        "{} cores, {cpu}, {memory:.0} GiB",
        std::thread::available_parallelism().map_or(0, usize::from)
    )
}

async fn setup(server: &Server, key: &str) -> Vec<String> {
    let client = LedgerClient::new(&server.address, Some(key));
    let create = |key: String, rule: &str| {
        let client = client.clone();
        let account = AccountInput::new(&key, "USD", rule);
        async move {
            let response = answered(client.create_account(&account).await);
            account_id_of(&response)
                .unwrap_or_else(|| panic!("an account: {response}"))
                .to_owned()
        }
    };
    let funding = create("funding".to_owned(), "UNBOUNDED").await;
    let mut accounts = Vec::new();
    for index in 0..ACCOUNTS {
        let account = create(format!("a{index}"), "NON_NEGATIVE").await;
        let payment = PaymentInput::new(&format!("f{index}"), &funding, &account, "100.00", "USD");
        answered(client.create_payment(&payment, false).await);
        accounts.push(account);
    }
    accounts
}

fn answered(response: Result<Value, reqwest::Error>) -> Value {
    response.expect("the server answers with JSON")
}

fn main() {
    let admin_url = env_or(
        "LEDGER_BENCH_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let redis_url = env_or("LEDGER_BENCH_REDIS_URL", "redis://127.0.0.1:6379");
    let seconds: u64 = env_or("BENCH_SECONDS", "5").parse().unwrap_or(5);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", "32").parse().unwrap_or(32);
    let duration = Duration::from_secs(seconds);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = format!("ledger_bench_{}", uuid::Uuid::new_v4().simple());
    runtime.block_on(async {
        let admin = sea_orm::Database::connect(&admin_url)
            .await
            .expect("PostgreSQL is reachable");
        sea_orm::ConnectionTrait::execute_unprepared(
            &admin,
            &format!("CREATE DATABASE {database}"),
        )
        .await
        .unwrap();
    });
    let database_url = with_database(&admin_url, &database);

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

    let results = runtime.block_on(async {
        const TYPENAME: &str = "{ __typename }";
        const CACHED: &str = "query($id: ID!) { account(id: $id) { balance { amount version } } }";
        const STRONG: &str = "query($id: ID!) { account(id: $id) { balance(consistency: STRONG) { amount version } } }";
        let server = Server::start(&[("DATABASE_URL", &database_url), ("REDIS_URL", &redis_url)]);
        let accounts = Arc::new(setup(&server, &key).await);
        let mut results = vec![
            run_phase("{ __typename }", &server, &key, TYPENAME, &accounts, concurrency, duration).await,
            run_phase("balance, warm L1", &server, &key, CACHED, &accounts, concurrency, duration).await,
            run_phase("balance, STRONG (uncached)", &server, &key, STRONG, &accounts, concurrency, duration).await,
        ];
        drop(server);
        let l2_only = Server::start(&[
            ("DATABASE_URL", &database_url),
            ("REDIS_URL", &redis_url),
            ("CACHE_L1_BALANCE_CAPACITY", "0"),
        ]);
        results.push(run_phase("balance, L2 only (L1 off)", &l2_only, &key, CACHED, &accounts, concurrency, duration).await);
        results
    });

    runtime.block_on(async {
        let admin = sea_orm::Database::connect(&admin_url).await.unwrap();
        sea_orm::ConnectionTrait::execute_unprepared(
            &admin,
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        )
        .await
        .ok();
    });

    println!("\nmachine: {}", machine());
    println!(
        "{seconds} s per phase, {concurrency} concurrent clients, {ACCOUNTS} accounts, server and client on the same machine\n"
    );
    println!(
        "| phase | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | server RSS MiB |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for result in &results {
        let ms = |quantile: f64| result.latency.value_at_quantile(quantile) as f64 / 1000.0;
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} |",
            result.name,
            result.requests_per_second,
            ms(0.5),
            ms(0.9),
            ms(0.99),
            result.latency.max() as f64 / 1000.0,
            result.errors,
            result.rss_mib
        );
    }
    let rate = |name: &str| {
        results
            .iter()
            .find(|result| result.name == name)
            .map_or(0.0, |result| result.requests_per_second)
    };
    let warm = rate("balance, warm L1");
    println!();
    println!(
        "warm L1 / {{ __typename }}: {:.2}x (goal >= 0.8x)",
        warm / rate("{ __typename }")
    );
    println!(
        "warm L1 / STRONG:         {:.2}x (goal >= 8x)",
        warm / rate("balance, STRONG (uncached)")
    );
    println!(
        "L2 only / STRONG:         {:.2}x",
        rate("balance, L2 only (L1 off)") / rate("balance, STRONG (uncached)")
    );
}
