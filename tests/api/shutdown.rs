//! Shutdown: on SIGTERM `/readyz` answers 503 for `SHUTDOWN_DRAIN_SECONDS` while
//! requests are still served; then the server stops accepting connections, finishes
//! what is in flight, and returns.

use std::time::Duration;

use ledger_client::{LedgerClient, PaymentInput};
use payments_ledger::startup::Drain;
use payments_ledger::{Application, Config, auth};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::helpers::{TestDatabase, account_pair, assert_pays};

/// A server on `database` that shuts down (draining or not) when the sender fires.
async fn stoppable(
    database: &TestDatabase,
    configure: impl FnOnce(&mut Config),
) -> (
    String,
    LedgerClient,
    sea_orm::DatabaseConnection,
    oneshot::Sender<Drain>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    payments_ledger::telemetry::init();
    let mut config = Config::for_database(database.url.clone());
    configure(&mut config);
    let application = Application::build(config).await.unwrap();
    let address = format!("http://127.0.0.1:{}", application.port());
    let db = application.database().clone();
    let client = auth::create_client(&db, "shutdown").await.unwrap();
    let (stop, stopped) = oneshot::channel::<Drain>();
    let server =
        tokio::spawn(application.run_until(async move { stopped.await.unwrap_or(Drain::No) }));
    let api = LedgerClient::new(&address, Some(&client.api_key));
    (address, api, db, stop, server)
}

async fn readiness(address: &str) -> Option<u16> {
    reqwest::get(format!("{address}/readyz"))
        .await
        .ok()
        .map(|response| response.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_while_still_serving_then_stops() {
    let database = TestDatabase::sqlite();
    let (address, api, _db, stop, server) = stoppable(&database, |config| {
        config.server.shutdown_drain_seconds = 2;
    })
    .await;
    let (from, to) = account_pair(&api, "USD").await;
    assert_eq!(readiness(&address).await, Some(200));

    stop.send(Drain::Yes).unwrap();
    let mut draining = false;
    for _ in 0..100 {
        if readiness(&address).await == Some(503) {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(draining, "/readyz answers 503 once shutdown begins");
    // Still served while load balancers take the instance out.
    assert_pays(
        &api,
        &PaymentInput::new("during-drain", &from, &to, "1.00", "USD"),
    )
    .await;

    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops after the drain")
        .unwrap()
        .unwrap();
    assert_eq!(
        readiness(&address).await,
        None,
        "no longer accepting connections"
    );
}

/// A payment still running when shutdown begins (here: waiting for a row lock held
/// elsewhere) is finished and answered before the server returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_in_flight_payment_is_answered_before_the_server_stops() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let (_address, api, db, stop, server) = stoppable(&database, |config| {
        config.database.lock_timeout_ms = 10_000;
    })
    .await;
    let (from, to) = account_pair(&api, "USD").await;
    let session = db.begin().await.unwrap();
    session
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id FROM accounts WHERE id = $1 FOR UPDATE",
            [Uuid::parse_str(&from[4..]).unwrap().into()],
        ))
        .await
        .unwrap();
    let payment = tokio::spawn({
        let api = api.clone();
        async move {
            api.create_payment(
                &PaymentInput::new("in-flight", &from, &to, "1.00", "USD"),
                false,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.send(Drain::No).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !server.is_finished(),
        "the server waits for the payment in flight"
    );
    session.rollback().await.unwrap();
    let paid = payment.await.unwrap().unwrap();
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{paid}"
    );
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops once nothing is in flight")
        .unwrap()
        .unwrap();
}
