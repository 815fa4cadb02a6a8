//! Test harness: a real server on port 0 over a fresh database per test, spoken to
//! over HTTP.
//!
//! SQLite tests use a temporary file. PostgreSQL tests use the server `services` finds or
//! starts (an admin connection); migrations run once into a template database and each
//! test clones it with `CREATE DATABASE … TEMPLATE …`, dropping its clone when it ends.
//! Without PostgreSQL, PostgreSQL tests print a SKIP line and pass.

use std::io::Write;
use std::path::PathBuf;

use std::sync::Arc;

use ledger_client::{AccountInput, LedgerClient, PaymentInput};
pub use ledger_client::{CREATE_PAYMENT as PAY, error_code};
use payments_ledger::metrics::Metrics;
use payments_ledger::{Application, Config, auth};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::services;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Generates a `sqlite` and a `postgres` test from one `async fn(Backend)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )+};
}

/// Prints a SKIP line past the test harness's capture, so it shows on a passing run.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("test").to_owned();
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {reason}");
}

/// What a test needs besides a database.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Use Redis (`LEDGER_TEST_REDIS_URL`) as L2, in a namespace of this test's own.
    pub redis: bool,
    /// Overrides the Redis URL (a test's own Redis server).
    pub redis_url: Option<String>,
    /// Overrides cache settings (capacities, lifetimes).
    pub cache: Option<payments_ledger::config::CacheConfig>,
    pub write_isolation: payments_ledger::config::WriteIsolation,
    /// `CORS_ALLOWED_ORIGINS`.
    pub cors_allowed_origins: Vec<String>,
    /// `REQUEST_TIMEOUT_SECONDS` and `POSTGRES_LOCK_TIMEOUT_MS`, when not the defaults.
    pub request_timeout_seconds: Option<u64>,
    pub lock_timeout_ms: Option<u64>,
    /// PostgreSQL: the server reaches its database through this address (a
    /// `link::FaultyLink`) instead of directly, with TLS off.
    pub database_via: Option<std::net::SocketAddr>,
    /// `API_KEY_CACHE_SECONDS`, when not the default.
    pub api_key_cache_seconds: Option<u64>,
    /// `DATABASE_MAX_CONNECTIONS` (the read pool) and
    /// `DATABASE_ACQUIRE_TIMEOUT_SECONDS`, when not the defaults.
    pub max_connections: Option<u32>,
    pub acquire_timeout_seconds: Option<u64>,
    /// `GRAPHQL_INTROSPECTION` and `CLIENT_CONCURRENT_REQUESTS_MAX`, when not the
    /// defaults.
    pub introspection: Option<payments_ledger::config::Introspection>,
    pub client_concurrent_requests_max: Option<u32>,
    /// PostgreSQL: a database someone else owns and removes (a test's own clusters),
    /// with `DATABASE_REPLICA_URLS`, `DATABASE_REPLICA_MAX_LAG_MS` and `DATABASE_POOLER`.
    pub database_url: Option<String>,
    pub replica_urls: Vec<String>,
    pub replica_max_lag_ms: Option<u64>,
    pub pooler: payments_ledger::config::Pooler,
    /// `LONG_POLLS_PER_CLIENT_MAX` and `LONG_POLLS_MAX`, when not the defaults.
    pub long_polls_per_client_max: Option<usize>,
    pub long_polls_max: Option<usize>,
    /// `GRAPHQL_DOCUMENTS` and `GRAPHQL_TRUSTED_DOCUMENTS`.
    pub documents: payments_ledger::config::DocumentPolicy,
    pub trusted_documents: Option<PathBuf>,
}

/// Starts the app, or returns `None` (after printing SKIP) when its backend is not
/// configured. Use as `let Some(app) = spawn_app(backend).await else { return };`.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, AppOptions::default()).await
}

pub async fn spawn_app_with(backend: Backend, options: AppOptions) -> Option<TestApp> {
    payments_ledger::telemetry::init();
    let redis_url = match (&options.redis_url, options.redis) {
        (Some(url), _) => Some(url.clone()),
        (None, true) => match services::redis_url() {
            Some(url) => Some(url),
            None => {
                skip(services::MISSING_REDIS);
                return None;
            }
        },
        (None, false) => None,
    };
    let database = match (backend, &options.database_url) {
        (Backend::Sqlite, _) => TestDatabase::sqlite(),
        (Backend::Postgres, Some(url)) => TestDatabase {
            url: url.clone(),
            cleanup: Cleanup::Owner,
        },
        (Backend::Postgres, None) => TestDatabase::postgres().await?,
    };
    let mut config = Config::for_database(match options.database_via {
        Some(address) => via_address(&database.url, address),
        None => database.url.clone(),
    });
    if let Some(cache) = options.cache {
        config.cache = cache;
    }
    config.cache.redis_url = redis_url;
    config.database.write_isolation = options.write_isolation;
    config.server.cors_allowed_origins = options.cors_allowed_origins;
    if let Some(seconds) = options.request_timeout_seconds {
        config.server.request_timeout_seconds = seconds;
    }
    if let Some(introspection) = options.introspection {
        config.server.introspection = introspection;
    }
    if let Some(most) = options.client_concurrent_requests_max {
        config.server.client_concurrent_requests_max = most;
    }
    if let Some(connections) = options.max_connections {
        config.database.max_connections = connections;
    }
    if let Some(seconds) = options.acquire_timeout_seconds {
        config.database.acquire_timeout_seconds = seconds;
    }
    if let Some(seconds) = options.api_key_cache_seconds {
        config.server.api_key_cache_seconds = seconds;
    }
    if let Some(milliseconds) = options.lock_timeout_ms {
        config.database.lock_timeout_ms = milliseconds;
    }
    config.database.replica_urls = options.replica_urls;
    if let Some(milliseconds) = options.replica_max_lag_ms {
        config.database.replica_max_lag_ms = milliseconds;
    }
    config.database.pooler = options.pooler;
    if let Some(most) = options.long_polls_per_client_max {
        config.server.long_polls_per_client_max = most;
    }
    if let Some(most) = options.long_polls_max {
        config.server.long_polls_max = most;
    }
    config.server.documents = options.documents;
    config.server.trusted_documents = options.trusted_documents;
    config.cache.namespace = format!("ledger-test-{}", Uuid::new_v4().simple());
    let application = Application::build(config.clone())
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let db = application.database().clone();
    let writes = application.write_database().clone();
    let metrics = Arc::clone(&application.state().metrics);
    tokio::spawn(application.run_until_stopped());
    let client = auth::create_client(&writes, "test client")
        .await
        .expect("a client is created");
    let ledger_client = LedgerClient::new(&address, Some(&client.api_key));
    Some(TestApp {
        http: ledger_client.http().clone(),
        client: ledger_client,
        address,
        db,
        api_key: client.api_key,
        client_id: client.id.0,
        metrics,
        config,
        database,
    })
}

pub struct TestApp {
    /// Base URL of the first server instance.
    pub address: String,
    pub db: DatabaseConnection,
    pub api_key: String,
    /// The test client's id.
    pub client_id: Uuid,
    /// GraphQL over HTTP to the first instance, as the test client.
    pub client: LedgerClient,
    /// For requests that are not GraphQL-shaped (wrong methods, bodies, headers).
    pub http: reqwest::Client,
    /// The first instance's metrics.
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub database: TestDatabase,
}

/// A running extra instance.
pub struct Replica {
    pub address: String,
    pub metrics: Arc<Metrics>,
}

impl TestApp {
    /// Returns once every write that finished before the call is in the client-wide
    /// feeds. On PostgreSQL a feed lists a transaction's rows once no older transaction
    /// is still running anywhere in the cluster (docs/consistency.md), and other tests
    /// run transactions beside this one; SQLite lists rows as they commit.
    pub async fn settle_feeds(&self) {
        use sea_orm::{ConnectionTrait, DbBackend, Statement};
        if self.db.get_database_backend() != DbBackend::Postgres {
            return;
        }
        let query = |sql: &str| Statement::from_string(DbBackend::Postgres, sql.to_owned());
        let number = |row: Option<sea_orm::QueryResult>| -> i64 {
            row.expect("a row").try_get("", "xid").expect("an xid")
        };
        // A transaction id taken now is newer than any write that has already finished.
        let marker = number(
            self.db
                .query_one_raw(query("SELECT pg_current_xact_id()::text::bigint AS xid"))
                .await
                .expect("an xid is assigned"),
        );
        for _ in 0..6000 {
            let horizon = number(
                self.db
                    .query_one_raw(query(
                        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xid",
                    ))
                    .await
                    .expect("the snapshot is read"),
            );
            if horizon > marker {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        panic!("the feed horizon did not pass transaction {marker} in 30 s");
    }

    /// Starts another server instance on the same database, as a second replica
    /// behind a load balancer would be; returns its base URL.
    pub async fn spawn_replica(&self) -> Replica {
        let application = Application::build(self.config.clone())
            .await
            .expect("the replica builds");
        let replica = Replica {
            address: format!("http://127.0.0.1:{}", application.port()),
            metrics: Arc::clone(&application.state().metrics),
        };
        tokio::spawn(application.run_until_stopped());
        replica
    }

    /// POSTs a GraphQL request to the instance at `address` as the test client.
    pub async fn graphql_at(&self, address: &str, query: &str, variables: Value) -> Value {
        answered(self.client.at(address).graphql(query, variables).await)
    }

    /// Like `pay`, against the instance at `address`.
    pub async fn pay_at(
        &self,
        address: &str,
        key: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> Value {
        let payment = PaymentInput::new(key, from, to, amount, currency);
        answered(self.client.at(address).create_payment(&payment, true).await)
    }

    /// POSTs a GraphQL request as the test client; returns the whole JSON response.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        answered(self.client.graphql(query, variables).await)
    }

    pub async fn graphql_as(&self, api_key: Option<&str>, query: &str, variables: Value) -> Value {
        answered(
            self.client
                .with_key(api_key)
                .graphql(query, variables)
                .await,
        )
    }

    /// A second tenant on the same server.
    pub async fn other_client_key(&self) -> String {
        auth::create_client(&self.db, "other client")
            .await
            .expect("a client is created")
            .api_key
    }

    /// Creates an account and returns its id.
    pub async fn create_account(
        &self,
        currency: &str,
        rule: &str,
        credit_limit: Option<&str>,
    ) -> String {
        self.create_account_as(&self.api_key, currency, rule, credit_limit)
            .await
    }

    pub async fn create_account_as(
        &self,
        api_key: &str,
        currency: &str,
        rule: &str,
        credit_limit: Option<&str>,
    ) -> String {
        let mut account = AccountInput::new(&Uuid::new_v4().to_string(), currency, rule);
        account.credit_limit = credit_limit.map(str::to_owned);
        let response = answered(
            self.client
                .with_key(Some(api_key))
                .create_account(&account)
                .await,
        );
        ledger_client::account_id_of(&response)
            .unwrap_or_else(|| panic!("account created: {response}"))
            .to_owned()
    }

    /// Sends `createPayment` and returns the whole response.
    pub async fn pay(
        &self,
        key: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> Value {
        self.pay_at(&self.address, key, from, to, amount, currency)
            .await
    }

    /// Pays and insists on an outcome (POSTED or DECLINED), resending the same key on
    /// RETRY_LATER as a client should.
    pub async fn pay_until_final(
        &self,
        key: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> Value {
        self.pay_until_final_at(&self.address, key, from, to, amount, currency)
            .await
    }

    pub async fn pay_until_final_at(
        &self,
        address: &str,
        key: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
    ) -> Value {
        for _ in 0..50 {
            let response = self.pay_at(address, key, from, to, amount, currency).await;
            if error_code(&response) == Some("RETRY_LATER") {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            return response;
        }
        panic!("payment {key} never reached an outcome");
    }

    /// Funds `account` from a fresh UNBOUNDED account of the same currency.
    pub async fn fund(&self, account: &str, amount: &str, currency: &str) {
        let funding = self.create_account(currency, "UNBOUNDED", None).await;
        let response = self
            .pay(
                &Uuid::new_v4().to_string(),
                &funding,
                account,
                amount,
                currency,
            )
            .await;
        assert_eq!(
            response["data"]["createPayment"]["payment"]["status"], "POSTED",
            "{response}"
        );
    }

    /// Balance amount and version, read STRONG.
    pub async fn balance(&self, account: &str) -> (String, i64) {
        self.balance_at(&self.address, account, "STRONG").await
    }

    /// Balance amount and version as the instance at `address` reads it.
    pub async fn balance_at(
        &self,
        address: &str,
        account: &str,
        consistency: &str,
    ) -> (String, i64) {
        let response = self
            .graphql_at(
                address,
                "query($id: ID!, $consistency: Consistency!) {
                   account(id: $id) { balance(consistency: $consistency) { amount version } } }",
                json!({ "id": account, "consistency": consistency }),
            )
            .await;
        let balance = &response["data"]["account"]["balance"];
        (
            balance["amount"]
                .as_str()
                .unwrap_or_else(|| panic!("{response}"))
                .to_owned(),
            balance["version"].as_i64().unwrap(),
        )
    }

    /// Asserts that every ledger invariant holds, from the stored rows.
    pub async fn assert_ledger_sound(&self) {
        let violations = payments_ledger::ledger::audit::find_violations(&self.db)
            .await
            .expect("the audit runs");
        assert!(
            violations.is_empty(),
            "ledger invariants violated: {violations:#?}"
        );
    }

    /// The value of one sample on the first instance's `/metrics`, by its full name
    /// and labels as exposed (e.g. `ledger_payments_total{outcome="posted"}`); 0 when
    /// the sample is absent (a counter never touched).
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .expect("the server answers")
            .text()
            .await
            .expect("metrics are text");
        text.lines()
            .find_map(|line| {
                line.strip_prefix(sample)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0.0)
    }

    /// Drops the guard triggers (migration `guards`) from this test's own database, so
    /// the test can corrupt rows on purpose and show what else catches it.
    pub async fn drop_guards(&self) {
        let backend = self.db.get_database_backend();
        for (trigger, table) in migration::GUARD_TRIGGERS
            .into_iter()
            .chain(migration::HOLD_GUARD_TRIGGERS)
            .chain(migration::HISTORY_GUARD_TRIGGERS)
            .chain(migration::GROUP_GUARD_TRIGGERS)
            .chain(migration::ACCOUNT_GUARD_TRIGGERS)
        {
            let statement = match backend {
                sea_orm::DbBackend::Postgres => {
                    format!("DROP TRIGGER IF EXISTS {trigger} ON {table}")
                }
                _ => format!("DROP TRIGGER IF EXISTS {trigger}"),
            };
            self.db
                .execute_unprepared(&statement)
                .await
                .expect("a guard trigger is dropped");
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                format!("SELECT COUNT(*) AS n FROM {table}"),
            ))
            .await
            .expect("count runs")
            .expect("one row");
        row.try_get::<i64>("", "n").expect("a count")
    }
}

/// A response the server gave: transport failures fail the test.
fn answered(response: Result<Value, reqwest::Error>) -> Value {
    response.expect("the server answers with JSON")
}

/// The test's database, removed when the test ends (also when it panics).
pub struct TestDatabase {
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    SqliteFile(PathBuf),
    PostgresDatabase {
        admin_url: String,
        name: String,
    },
    /// Whoever made the database removes it.
    Owner,
}

enum Template {
    Migrated,
    Empty,
}

static POSTGRES_TEMPLATE: OnceCell<String> = OnceCell::const_new();

impl TestDatabase {
    pub fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("ledger-test-{}.db", Uuid::new_v4().simple()));
        Self {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            cleanup: Cleanup::SqliteFile(path),
        }
    }

    pub async fn postgres() -> Option<Self> {
        Self::postgres_from(Template::Migrated).await
    }

    /// A PostgreSQL database with no tables at all.
    pub async fn postgres_empty() -> Option<Self> {
        Self::postgres_from(Template::Empty).await
    }

    async fn postgres_from(template: Template) -> Option<Self> {
        let Some(admin_url) = services::postgres_admin_url() else {
            skip(services::MISSING_POSTGRES);
            return None;
        };
        let template = match template {
            Template::Migrated => POSTGRES_TEMPLATE
                .get_or_init(|| create_template(admin_url.clone()))
                .await
                .as_str(),
            Template::Empty => "template0",
        };
        let name = format!("ledger_test_{}", Uuid::new_v4().simple());
        let admin = Database::connect(&admin_url)
            .await
            .expect("PostgreSQL is reachable");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .expect("the test database is created");
        admin.close().await.ok();
        Some(Self {
            url: with_database(&admin_url, &name),
            cleanup: Cleanup::PostgresDatabase { admin_url, name },
        })
    }
}

/// Migrates a template database once per migration source, so tests clone it instead
/// of migrating each time. Its name carries a hash of the migrations: a changed
/// migration gets a new template.
async fn create_template(admin_url: String) -> String {
    let migrations = [
        include_str!("../../migration/src/lib.rs"),
        include_str!("../../migration/src/m20261124_000001_create_ledger.rs"),
        include_str!("../../migration/src/m20261124_000002_feeds.rs"),
        include_str!("../../migration/src/m20261125_000001_guards.rs"),
        include_str!("../../migration/src/m20261125_000002_api_keys.rs"),
        include_str!("../../migration/src/m20261126_000001_holds_refunds.rs"),
        include_str!("../../migration/src/m20261127_000001_balance_history.rs"),
        include_str!("../../migration/src/m20261127_000002_metadata.rs"),
        include_str!("../../migration/src/m20261128_000001_payment_groups.rs"),
        include_str!("../../migration/src/m20261128_000002_account_lifecycle.rs"),
        include_str!("../../migration/src/m20261206_000001_one_round_trip.rs"),
        include_str!("../../migration/src/m20261206_000002_entry_references_by_guard.rs"),
    ];
    let hash = hex::encode(&Sha256::digest(migrations.concat().as_bytes())[..6]);
    let name = format!("ledger_test_template_{hash}");
    let admin = Database::connect(&admin_url)
        .await
        .expect("PostgreSQL is reachable");
    let exists = admin
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!("SELECT 1 AS one FROM pg_database WHERE datname = '{name}'"),
        ))
        .await
        .expect("pg_database is readable")
        .is_some();
    if !exists {
        let building = format!("{name}_building_{}", Uuid::new_v4().simple());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {building}"))
            .await
            .expect("the template database is created");
        let template_db = Database::connect(with_database(&admin_url, &building))
            .await
            .expect("the template database is reachable");
        payments_ledger::db::migrate(&template_db)
            .await
            .expect("migrations apply");
        template_db
            .close()
            .await
            .expect("the template connection closes");
        // Renamed only when complete, so a crash never leaves a half-built template.
        if let Err(error) = admin
            .execute_unprepared(&format!("ALTER DATABASE {building} RENAME TO {name}"))
            .await
        {
            // Another test process finished first; use its template.
            eprintln!("template {name} already built elsewhere: {error}");
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {building}"))
                .await
                .ok();
        }
    }
    admin.close().await.ok();
    name
}

/// `url` (PostgreSQL) reaching its server at `address`, with TLS off.
fn via_address(url: &str, address: std::net::SocketAddr) -> String {
    let scheme_end = url.find("://").expect("a URL") + 3;
    let rest = &url[scheme_end..];
    let host_start = rest.find('@').map_or(0, |at| at + 1);
    let host_end = rest[host_start..]
        .find(['/', '?'])
        .map_or(rest.len(), |end| host_start + end);
    let separator = if rest.contains('?') { '&' } else { '?' };
    format!(
        "{}{}{address}{}{separator}sslmode=disable",
        &url[..scheme_end],
        &rest[..host_start],
        &rest[host_end..]
    )
}

/// `url` pointing at database `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|index| index + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{name}?{query}"),
        None => format!("{base}/{name}"),
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::SqliteFile(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    std::fs::remove_file(file).ok();
                }
            }
            Cleanup::PostgresDatabase { admin_url, name } => {
                run_as_admin(
                    admin_url,
                    vec![format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")],
                );
            }
            Cleanup::Owner => {}
        }
    }
}

/// Runs `statements` on the admin connection from a thread of its own, ignoring
/// failures: for cleanup in `Drop`, which runs inside the test's runtime and cannot
/// block on it.
pub fn run_as_admin(admin_url: &str, statements: Vec<String>) {
    let admin_url = admin_url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            if let Ok(admin) = Database::connect(&admin_url).await {
                for statement in statements {
                    admin.execute_unprepared(&statement).await.ok();
                }
                admin.close().await.ok();
            }
        });
    })
    .join()
    .ok();
}

/// An UNBOUNDED and a NON_NEGATIVE account in `currency`, created through `api`.
pub async fn account_pair(api: &LedgerClient, currency: &str) -> (String, String) {
    let mut ids = Vec::new();
    for rule in ["UNBOUNDED", "NON_NEGATIVE"] {
        let account = AccountInput::new(&Uuid::new_v4().to_string(), currency, rule);
        let created = api
            .create_account(&account)
            .await
            .expect("the server answers");
        ids.push(
            ledger_client::account_id_of(&created)
                .unwrap_or_else(|| panic!("account created: {created}"))
                .to_owned(),
        );
    }
    (ids.remove(0), ids.remove(0))
}

/// Pays through `api` and insists the payment posted, with no error anywhere.
pub async fn assert_pays(api: &LedgerClient, payment: &PaymentInput) {
    let paid = api
        .create_payment(payment, false)
        .await
        .expect("the server answers");
    assert_eq!(
        paid["data"]["createPayment"]["payment"]["status"], "POSTED",
        "{paid}"
    );
    assert_eq!(error_code(&paid), None, "{paid}");
}

/// The UUID inside a public id (`acc_…`, `pay_…`).
pub fn uuid_of(id: &str) -> Uuid {
    let hex = id.split_once('_').map_or(id, |(_, hex)| hex);
    Uuid::try_parse(hex).expect("an id carries a uuid")
}

/// Runs `sql` (with `?` for each of `values`) straight against the database.
pub async fn run(app: &TestApp, sql: &str, values: &[Uuid]) -> Result<u64, sea_orm::DbErr> {
    let backend = app.db.get_database_backend();
    let mut text = String::new();
    for (index, part) in sql.split('?').enumerate() {
        if index > 0 {
            match backend {
                sea_orm::DbBackend::Postgres => text.push_str(&format!("${index}")),
                _ => text.push('?'),
            }
        }
        text.push_str(part);
    }
    let values: Vec<sea_orm::Value> = values.iter().map(|value| (*value).into()).collect();
    app.db
        .execute_raw(sea_orm::Statement::from_sql_and_values(
            backend, text, values,
        ))
        .await
        .map(|done| done.rows_affected())
}

pub async fn assert_audit_finds(app: &TestApp, invariant: &str) {
    let violations = payments_ledger::ledger::audit::find_violations(&app.db)
        .await
        .unwrap();
    assert!(
        violations
            .iter()
            .any(|violation| violation.invariant.starts_with(invariant)),
        "the audit must find {invariant:?}: {violations:?}"
    );
}
