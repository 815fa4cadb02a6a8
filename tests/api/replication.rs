//! PostgreSQL beyond one server, with real clusters of the test's own (`clusters`): the
//! primary followed through a promotion with nothing acknowledged lost, replicas that
//! serve only within their lag bound, and pgbouncer in transaction mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ledger_client::{LedgerClient, PaymentInput};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::clusters::{Cluster, MISSING_BINARIES, Pgbouncer};
use crate::helpers::{
    AppOptions, Backend, TestApp, account_pair, error_code, skip, spawn_app_with,
};

/// Sends one payment until it has an outcome, as a client should: the same key again
/// after RETRY_LATER, OUTCOME_UNKNOWN or no answer at all. Returns the payment's id.
async fn pay_until_acknowledged(api: &LedgerClient, payment: &PaymentInput) -> String {
    for _ in 0..600 {
        match api.create_payment(payment, false).await {
            Ok(answer) => {
                let made = &answer["data"]["createPayment"]["payment"];
                if made["status"] == "POSTED" {
                    return made["id"].as_str().expect("a payment id").to_owned();
                }
                let code = error_code(&answer);
                assert!(
                    matches!(code, Some("RETRY_LATER" | "OUTCOME_UNKNOWN")),
                    "{answer}"
                );
            }
            Err(error) => assert!(!error.is_decode(), "{error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("payment {} never settled", payment.idempotency_key);
}

/// Payments from `writers` tasks until `stop`: key -> payment id of each acknowledged.
fn spawn_writers(
    app: &TestApp,
    writers: usize,
    from: &str,
    to: &str,
    stop: &Arc<AtomicBool>,
    acknowledged: &Arc<Mutex<BTreeMap<String, String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|_| {
            let (api, from, to) = (app.client.clone(), from.to_owned(), to.to_owned());
            let (stop, acknowledged) = (Arc::clone(stop), Arc::clone(acknowledged));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let key = Uuid::new_v4().to_string();
                    let payment = PaymentInput::new(&key, &from, &to, "1.00", "EUR");
                    let id = pay_until_acknowledged(&api, &payment).await;
                    acknowledged.lock().await.insert(key, id);
                }
            })
        })
        .collect()
}

async fn acknowledged_count(acknowledged: &Mutex<BTreeMap<String, String>>) -> usize {
    acknowledged.lock().await.len()
}

async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..600 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen in 30 s");
}

/// The payments the new primary holds for `client`, by key.
async fn payments_on(url: &str, client: Uuid) -> BTreeMap<String, Vec<String>> {
    let connection = Database::connect(url)
        .await
        .expect("the new primary answers");
    let rows = connection
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT idempotency_key, id FROM payments WHERE client_id = $1",
            [client.into()],
        ))
        .await
        .expect("payments are read");
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in rows {
        let key: String = row.try_get("", "idempotency_key").expect("a key");
        let id: Uuid = row.try_get("", "id").expect("an id");
        by_key
            .entry(key)
            .or_default()
            .push(format!("pay_{}", id.simple()));
    }
    let violations = payments_ledger::ledger::audit::find_violations(&connection)
        .await
        .expect("the audit runs");
    assert!(violations.is_empty(), "{violations:#?}");
    connection.close().await.ok();
    by_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_synchronous_standby_is_followed_and_nothing_acknowledged_is_lost() {
    let Some(primary) = Cluster::primary(Some("standby1")) else {
        skip(MISSING_BINARIES);
        return;
    };
    let standby = Cluster::standby_of(&primary, "standby1");
    primary.await_standby("standby1", "sync");
    primary.sql("postgres", "CREATE DATABASE ledger");
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/ledger?target_session_attrs=read-write",
        primary.port, standby.port
    );
    let options = AppOptions {
        database_url: Some(url.clone()),
        acquire_timeout_seconds: Some(1),
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let (from, to) = account_pair(&app.client, "EUR").await;
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
    let writers = spawn_writers(&app, 4, &from, &to, &stop, &acknowledged);
    wait_for("40 payments before the crash", async || {
        acknowledged_count(&acknowledged).await >= 40
    })
    .await;

    primary.kill();
    let at_crash = acknowledged_count(&acknowledged).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    standby.promote();
    wait_for("40 payments after the promotion", async || {
        acknowledged_count(&acknowledged).await >= at_crash + 40
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer finishes");
    }

    let acknowledged = acknowledged.lock().await.clone();
    let stored = payments_on(&standby.url("ledger"), app.client_id).await;
    for (key, id) in &acknowledged {
        assert_eq!(
            stored.get(key),
            Some(&vec![id.clone()]),
            "acknowledged payment {key} is on the new primary exactly once"
        );
    }
    // Every payment the writers sent was resent until acknowledged: nothing else exists.
    assert_eq!(stored.len(), acknowledged.len());
    assert!(app.metric("ledger_database_host_switches_total").await >= 1.0);
    // Tools take the same URL (`verify`, `export`, loadgen's audit): the dead host
    // is passed over, the new primary found.
    let violations = payments_ledger::ledger::audit::audit_database(&url)
        .await
        .expect("the audit finds the new primary");
    assert!(violations.is_empty(), "{violations:#?}");
    // Each pool finds the new primary on its own probe (within a second of the other),
    // and until then a read answers RETRY_LATER, which a client retries.
    let mut balance = Value::Null;
    for _ in 0..100 {
        balance = app
            .graphql(
                "query($id: ID!) { account(id: $id) { balance(consistency: STRONG) { amount } } }",
                json!({ "id": to }),
            )
            .await;
        if error_code(&balance) != Some("RETRY_LATER") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        balance["data"]["account"]["balance"]["amount"],
        format!("{}.00", acknowledged.len()),
        "{balance}"
    );
}

async fn read_balance(app: &TestApp, account: &str, consistency: &str) -> Value {
    let answer = app
        .graphql(
            "query($id: ID!, $c: Consistency!) {
               account(id: $id) { balance(consistency: $c) { amount version } } }",
            json!({ "id": account, "c": consistency }),
        )
        .await;
    answer["data"]["account"]["balance"].clone()
}

async fn served_by(app: &TestApp, who: &str) -> f64 {
    app.metric(&format!(
        "ledger_database_replica_eligible_reads_total{{served_by=\"{who}\"}}"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_serve_within_their_lag_bound_and_a_stale_or_dead_one_is_skipped() {
    let Some(primary) = Cluster::primary(None) else {
        skip(MISSING_BINARIES);
        return;
    };
    let replica = Cluster::standby_of(&primary, "replica1");
    primary.await_standby("replica1", "async");
    primary.sql("postgres", "CREATE DATABASE ledger");
    let label = format!("127.0.0.1:{}", replica.port);
    let serving = format!("ledger_database_replica_serving{{replica=\"{label}\"}}");
    // Balances leave L1 at once, so reads reach the database (a replica or the primary).
    let cache = payments_ledger::config::CacheConfig {
        l1_balance_ttl_ms: 1,
        ..Default::default()
    };
    let options = |max_lag_ms| AppOptions {
        database_url: Some(primary.url("ledger")),
        replica_urls: vec![replica.url("ledger")],
        replica_max_lag_ms: Some(max_lag_ms),
        cache: Some(cache.clone()),
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options(1_000)).await else {
        return;
    };
    // A second instance with a wide bound, to see a lagging replica serve.
    let Some(lenient) = spawn_app_with(Backend::Postgres, options(60_000)).await else {
        return;
    };
    let (from, to) = account_pair(&app.client, "EUR").await;
    let pay = async |key: &str| {
        let payment = PaymentInput::new(key, &from, &to, "1.00", "EUR");
        pay_until_acknowledged(&app.client, &payment).await
    };
    pay(&Uuid::new_v4().to_string()).await;
    wait_for("the replica to serve", async || {
        app.metric(&serving).await == 1.0 && lenient.metric(&serving).await == 1.0
    })
    .await;
    // Caught up: a CACHED read served by the replica agrees with the primary.
    let strong = read_balance(&app, &to, "STRONG").await;
    wait_for("a CACHED read served by the replica", async || {
        let before = served_by(&app, &label).await;
        read_balance(&app, &to, "CACHED").await == strong && served_by(&app, &label).await > before
    })
    .await;

    // Replay paused: the replica falls behind for good and is skipped once past the
    // bound; no CACHED read contradicts a later STRONG one.
    replica.sql("postgres", "SELECT pg_wal_replay_pause()");
    for _ in 0..3 {
        pay(&Uuid::new_v4().to_string()).await;
    }
    wait_for("the paused replica to be skipped", async || {
        app.metric(&serving).await == 0.0
    })
    .await;
    let from_primary = served_by(&app, "primary").await;
    let cached = read_balance(&app, &to, "CACHED").await;
    assert_eq!(cached, read_balance(&app, &to, "STRONG").await);
    assert_eq!(cached["amount"], "4.00", "{cached}");
    assert!(served_by(&app, "primary").await > from_primary);

    // Within a wide bound the paused replica still serves, and what it lacks (a payment
    // just made) is found on the primary: a write is always read back.
    assert_eq!(lenient.metric(&serving).await, 1.0);
    let key = Uuid::new_v4().to_string();
    let payment = PaymentInput::new(&key, &from, &to, "1.00", "EUR");
    let made = pay_until_acknowledged(&app.client, &payment).await;
    let asked_replica = served_by(&lenient, &label).await;
    let found = lenient
        .client
        .with_key(Some(&app.api_key))
        .graphql(
            "query($id: ID!) { payment(id: $id) { id amount } }",
            json!({ "id": made }),
        )
        .await
        .expect("the lenient instance answers");
    assert_eq!(found["data"]["payment"]["id"], made.as_str(), "{found}");
    assert!(served_by(&lenient, &label).await > asked_replica);

    // Replay resumed: the replica serves again.
    replica.sql("postgres", "SELECT pg_wal_replay_resume()");
    wait_for("the resumed replica to serve", async || {
        app.metric(&serving).await == 1.0
    })
    .await;

    // Dead: skipped, and reads go on.
    replica.kill();
    wait_for("the dead replica to be skipped", async || {
        app.metric(&serving).await == 0.0
    })
    .await;
    let cached = read_balance(&app, &to, "CACHED").await;
    assert_eq!(cached, read_balance(&app, &to, "STRONG").await);
    assert_eq!(cached["amount"], "5.00", "{cached}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_through_pgbouncer_in_transaction_mode_keep_every_guarantee() {
    let Some(primary) = Cluster::primary(None) else {
        skip(MISSING_BINARIES);
        return;
    };
    primary.sql("postgres", "CREATE DATABASE ledger");
    primary.sql("postgres", "ALTER DATABASE ledger SET lock_timeout = '1s'");
    // Two server sessions for many client connections: consecutive transactions of one
    // client connection run on different sessions.
    let Some(bouncer) = Pgbouncer::transaction_mode(primary.port, "ledger", 2) else {
        skip("pgbouncer is not installed (apt-get install pgbouncer)");
        return;
    };
    let options = AppOptions {
        database_url: Some(format!(
            "postgres://postgres@127.0.0.1:{}/ledger",
            bouncer.port
        )),
        pooler: payments_ledger::config::Pooler::Transaction,
        ..Default::default()
    };
    let Some(app) = spawn_app_with(Backend::Postgres, options).await else {
        return;
    };
    let (from, to) = account_pair(&app.client, "EUR").await;
    // 8 senders, each key sent twice at once: one payment per key.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (api, from, to) = (app.client.clone(), from.clone(), to.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                let payment =
                    PaymentInput::new(&Uuid::new_v4().to_string(), &from, &to, "1.00", "EUR");
                let (first, second) = tokio::join!(
                    pay_until_acknowledged(&api, &payment),
                    pay_until_acknowledged(&api, &payment)
                );
                assert_eq!(first, second);
            }
        }));
    }
    for task in tasks {
        task.await.expect("a sender finishes");
    }
    // A hold and its capture.
    let hold = app
        .graphql(
            "mutation($input: CreatePaymentInput!) { createPayment(input: $input) { payment { id status } } }",
            json!({ "input": { "idempotencyKey": "hold-1", "fromAccountId": from, "toAccountId": to,
                                "amount": "5.00", "currency": "EUR", "pending": true } }),
        )
        .await;
    let hold_id = hold["data"]["createPayment"]["payment"]["id"].clone();
    assert_eq!(
        hold["data"]["createPayment"]["payment"]["status"], "PENDING",
        "{hold}"
    );
    let captured = app
        .graphql(
            "mutation($input: CapturePaymentInput!) { capturePayment(input: $input) { payment { status } } }",
            json!({ "input": { "idempotencyKey": "capture-1", "paymentId": hold_id } }),
        )
        .await;
    assert_eq!(error_code(&captured), None, "{captured}");
    app.assert_ledger_sound().await;
    let balance = read_balance(&app, &to, "STRONG").await;
    assert_eq!(balance["amount"], "125.00", "{balance}");
    assert_eq!(app.count("payments").await, 121);
    // The pooler restarts: the server's broken connections are replaced, and payments go on.
    bouncer.stop();
    bouncer.start();
    let payment = PaymentInput::new("after-restart", &from, &to, "1.00", "EUR");
    pay_until_acknowledged(&app.client, &payment).await;
    assert_eq!(read_balance(&app, &to, "STRONG").await["amount"], "126.00");
}
