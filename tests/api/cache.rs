//! The versioned caches (design.md section 6), against real Redis and real databases.

use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use payments_ledger::cache::{Caches, VersionedBalance};
use payments_ledger::config::CacheConfig;
use payments_ledger::metrics::{CacheLevel, CacheName, CacheResult, Metrics};
use payments_ledger::startup::cache_settings;
use rand::seq::SliceRandom;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{AppOptions, Backend, TestApp, skip, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    a_payment_on_one_instance_is_seen_on_another,
    redis_going_away_fails_no_request_and_l2_comes_back,
    a_hundred_balances_cost_two_statements_cold_and_none_warm,
    after_writes_stop_every_instance_converges_to_the_database,
);

const BALANCE: &str = "query($id: ID!, $consistency: Consistency!) {
  account(id: $id) { balance(consistency: $consistency) { amount version } }
}";

/// Short lifetimes, so tests can wait out the staleness bound.
fn short_lived() -> CacheConfig {
    CacheConfig {
        l1_balance_ttl_ms: 300,
        l2_balance_ttl_ms: 1_000,
        ..CacheConfig::default()
    }
}

/// The documented worst case for `short_lived`: an L2 entry no write refreshed, then
/// copied into L1 just before it expired.
const SHORT_LIVED_BOUND: Duration = Duration::from_millis(1_300);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_puts_keep_the_newest_version_in_l1_and_redis() {
    let Some(redis_url) = crate::services::redis_url() else {
        skip(crate::services::MISSING_REDIS);
        return;
    };
    let settings = cache_settings(&CacheConfig {
        redis_url: Some(redis_url),
        namespace: format!("ledger-test-{}", Uuid::new_v4().simple()),
        ..CacheConfig::default()
    });
    let caches = Arc::new(
        Caches::new(
            &settings,
            Arc::new(payments_ledger::changes::ClientChanges::new(
                1,
                1,
                Default::default(),
            )),
            Arc::new(Metrics::new()),
        )
        .unwrap(),
    );
    const VERSIONS: i64 = 200;
    let mut versions: Vec<i64> = (1..=VERSIONS).collect();
    versions.shuffle(&mut rand::rng());
    // States where sometimes only the holds moved: version n / 2, hold_seq n.
    let balance = |state: i64| VersionedBalance {
        pending_minor: state,
        ..VersionedBalance::posted(state * 100, state / 2, state)
    };

    let (l1_account, l2_account) = (Uuid::now_v7(), Uuid::now_v7());
    let l2 = caches.l2().expect("L2 is configured");
    join_all(versions.iter().map(|version| {
        let caches = Arc::clone(&caches);
        let version = *version;
        tokio::spawn(async move {
            caches.put_l1_balance(l1_account, balance(version)).await;
            caches
                .l2()
                .unwrap()
                .put_balances(&[(l2_account, balance(version))])
                .await;
        })
    }))
    .await;

    let from_l2 = l2.get_balances(&[l2_account]).await.expect("Redis answers");
    assert_eq!(from_l2, vec![Some(balance(VERSIONS))]);
    let from_l1 = caches
        .balances(&[l1_account], |_| async {
            panic!("L1 must hold the balance")
        })
        .await
        .unwrap();
    assert_eq!(from_l1[&l1_account], balance(VERSIONS));

    // A late, older write never wins afterwards either.
    l2.put_balances(&[(l2_account, balance(3))]).await;
    caches.put_l1_balance(l1_account, balance(3)).await;
    assert_eq!(
        l2.get_balances(&[l2_account]).await.unwrap(),
        vec![Some(balance(VERSIONS))]
    );
    let from_l1 = caches
        .balances(&[l1_account], |_| async { panic!() })
        .await
        .unwrap();
    assert_eq!(from_l1[&l1_account], balance(VERSIONS));
}

async fn a_payment_on_one_instance_is_seen_on_another(backend: Backend) {
    let options = AppOptions {
        redis: true,
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let replica = app.spawn_replica().await;
    let source = app.create_account("USD", "NON_NEGATIVE", None).await;
    let destination = app.create_account("USD", "NON_NEGATIVE", None).await;
    app.fund(&source, "10.00", "USD").await;
    // B has the old balance cached.
    assert_eq!(
        app.balance_at(&replica.address, &destination, "CACHED")
            .await,
        ("0.00".to_owned(), 0)
    );

    let paid_at = Instant::now();
    app.pay("cross-instance", &source, &destination, "2.50", "USD")
        .await;
    // STRONG on B sees it at once.
    assert_eq!(
        app.balance_at(&replica.address, &destination, "STRONG")
            .await,
        ("2.50".to_owned(), 1)
    );
    // The default read on B sees it within the bound (normally within milliseconds,
    // through the invalidation channel).
    let bound = Duration::from_millis(
        CacheConfig::default().l1_balance_ttl_ms + CacheConfig::default().l2_balance_ttl_ms,
    );
    loop {
        let seen = app
            .balance_at(&replica.address, &destination, "CACHED")
            .await;
        if seen == ("2.50".to_owned(), 1) {
            break;
        }
        assert!(
            paid_at.elapsed() < bound,
            "B still reads {seen:?} after {:?}",
            paid_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("seen on the other instance after {:?}", paid_at.elapsed());
    assert!(replica.metrics.invalidations_received.get() >= 1);
    assert!(app.metrics.invalidations_sent.get() >= 1);
}

/// A Redis server of this test's own, so stopping it disturbs no other test.
struct OwnRedis {
    port: u16,
    process: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Option<Self> {
        let process = crate::services::redis_server("redis-server", port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let mut redis = Self {
            port,
            process: Some(process),
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        redis.stop();
        None
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn redis_going_away_fails_no_request_and_l2_comes_back(backend: Backend) {
    if crate::services::redis_url().is_none() {
        skip(crate::services::MISSING_REDIS);
        return;
    }
    let port = free_port();
    let Some(mut redis) = OwnRedis::start(port) else {
        panic!("redis-server could not be started on port {port}");
    };
    let options = AppOptions {
        redis_url: Some(redis.url()),
        cache: Some(CacheConfig {
            l1_balance_ttl_ms: 50,
            redis_timeout_ms: 50,
            ..CacheConfig::default()
        }),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let wallet = app.create_account("USD", "NON_NEGATIVE", None).await;

    let mut payments = 0;
    let mut step = |label: &'static str| {
        payments += 1;
        let key = format!("{label}-{payments}");
        let (app, funding, wallet) = (&app, &funding, &wallet);
        async move {
            let response = app.pay(&key, funding, wallet, "1.00", "USD").await;
            assert_eq!(
                response["data"]["createPayment"]["payment"]["status"], "POSTED",
                "{label}: {response}"
            );
            // Past the L1 lifetime, so the read asks L2.
            tokio::time::sleep(Duration::from_millis(60)).await;
            let read = app
                .graphql(BALANCE, json!({ "id": wallet, "consistency": "CACHED" }))
                .await;
            assert!(read["errors"].is_null(), "{label}: {read}");
        }
    };
    for _ in 0..5 {
        step("before").await;
    }
    let l2_hits = |app: &TestApp| {
        app.metrics
            .cache_lookup_count(CacheName::Balance, CacheLevel::L2, CacheResult::Hit)
    };
    assert!(l2_hits(&app) > 0, "L2 serves reads while Redis is up");

    redis.stop();
    for _ in 0..10 {
        step("redis-down").await;
    }
    assert!(
        app.metrics.cache_l2_errors.get() > 0,
        "the outage was noticed"
    );

    let redis = OwnRedis::start(port).expect("redis-server restarts");
    let hits_before = l2_hits(&app);
    let restarted = Instant::now();
    while l2_hits(&app) == hits_before {
        assert!(
            restarted.elapsed() < Duration::from_secs(20),
            "L2 never came back"
        );
        step("redis-back").await;
    }
    // Converged: the cached read is the database's balance.
    let expected = app.balance(&wallet).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cached = app.balance_at(&app.address, &wallet, "CACHED").await;
    assert_eq!(cached, expected);
    drop(redis);
    app.assert_ledger_sound().await;
}

async fn a_hundred_balances_cost_two_statements_cold_and_none_warm(backend: Backend) {
    let options = AppOptions {
        cache: Some(CacheConfig {
            l1_balance_ttl_ms: 600_000,
            ..CacheConfig::default()
        }),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.push(app.create_account("EUR", "NON_NEGATIVE", None).await);
    }
    let query = "query($ids: [ID!]!) { nodes(ids: $ids) { ... on Account { id balance { amount version } } } }";
    // A new instance: its caches are cold.
    let replica = app.spawn_replica().await;
    let statements = || replica.metrics.database_statements.get();

    let before = statements();
    let response = app
        .graphql_at(&replica.address, query, json!({ "ids": ids }))
        .await;
    let cold = statements() - before;
    let nodes = response["data"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"));
    assert_eq!(nodes.len(), 100);
    assert!(nodes.iter().all(|node| node["balance"]["amount"] == "0.00"));

    let before = statements();
    let warm_response = app
        .graphql_at(&replica.address, query, json!({ "ids": ids }))
        .await;
    let warm = statements() - before;
    assert_eq!(warm_response, response);
    assert!(cold <= 2, "{cold} statements with cold caches");
    assert_eq!(warm, 0, "{warm} statements with warm caches");
}

async fn after_writes_stop_every_instance_converges_to_the_database(backend: Backend) {
    let options = AppOptions {
        redis: true,
        cache: Some(short_lived()),
        ..AppOptions::default()
    };
    let Some(app) = spawn_app_with(backend, options).await else {
        return;
    };
    let replica = app.spawn_replica().await;
    let instances = [app.address.clone(), replica.address.clone()];
    let funding = app.create_account("USD", "UNBOUNDED", None).await;
    let mut accounts = Vec::new();
    for _ in 0..6 {
        accounts.push(app.create_account("USD", "NON_NEGATIVE", None).await);
    }

    // Writes and reads interleaved on both instances.
    join_all((0..120).map(|index| {
        let (app, instances, funding, accounts) = (&app, &instances, &funding, &accounts);
        async move {
            let instance = &instances[index % 2];
            let account = &accounts[index % accounts.len()];
            if index % 3 == 0 {
                app.pay_until_final_at(
                    instance,
                    &format!("w-{index}"),
                    funding,
                    account,
                    "0.10",
                    "USD",
                )
                .await;
            } else {
                app.balance_at(instance, account, "CACHED").await;
            }
        }
    }))
    .await;

    tokio::time::sleep(SHORT_LIVED_BOUND).await;
    for account in &accounts {
        let truth = app.balance(account).await;
        for instance in &instances {
            assert_eq!(
                app.balance_at(instance, account, "CACHED").await,
                truth,
                "{instance}"
            );
        }
    }
}
