//! Building and running the server, the same way for `main`, tests and tools.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use tokio::net::TcpListener;

use crate::admission::Admission;
use crate::auth::{self, Authenticator};
use crate::cache::{CacheSettings, Caches, RedisL2};
use crate::changes::ClientChanges;
use crate::config::{CacheConfig, Config, DatabaseConfig, Migrations, Pooler};
use crate::db::{self, Backend, PoolRole};
use crate::documents::Documents;
use crate::entity::client;
use crate::graphql::{build_schema, build_schema_for_validated_documents};
use crate::http::{self, AppState};
use crate::ledger::Ledger;
use crate::ledger::service::WriteSettings;
use crate::metrics::Metrics;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    invalidation_subscriber: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Connects, applies migrations and binds the listener; serving starts with
    /// `run_until_stopped`.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::new());
        let db = connect_and_migrate(&config, &metrics).await?;
        // Writes get connections of their own, which reads cannot take.
        let write_connections = config
            .database
            .write_connections
            .max(u32::from(config.database.write_batches_in_flight) + 1);
        let write_db = connect(&config, write_connections, &metrics, PoolRole::Writes).await?;
        let replicas = db::connect_replicas(&config.database, &metrics, &db)
            .await
            .context("cannot use DATABASE_REPLICA_URLS")?;
        let changes = Arc::new(ClientChanges::new(
            config.server.long_polls_per_client_max,
            config.server.long_polls_max,
            metrics.long_polls_parked.clone(),
        ));
        let caches = Arc::new(Caches::new(
            &cache_settings(&config.cache),
            Arc::clone(&changes),
            Arc::clone(&metrics),
        )?);
        let documents = Documents::load(
            config.server.documents,
            config.server.trusted_documents.as_deref(),
            caches.l2_shared(),
        )?;
        if config.server.trusted_documents.is_some() {
            tracing::info!(
                documents = documents.trusted_count(),
                policy = ?config.server.documents,
                "trusted documents loaded"
            );
        }
        let invalidation_subscriber = RedisL2::spawn_subscriber(&caches);
        let listener = TcpListener::bind(config.server.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen_addr))?;
        let state = AppState {
            ledger: Ledger::new(
                db.clone(),
                write_db,
                replicas,
                write_settings(&config.database),
                Arc::clone(&caches),
                Arc::clone(&metrics),
            ),
            authenticator: Authenticator::new(
                db,
                Duration::from_secs(config.server.api_key_cache_seconds),
            ),
            schema: build_schema(),
            schema_for_validated: build_schema_for_validated_documents(),
            metrics,
            caches,
            parsed_queries: Arc::default(),
            draining: Arc::default(),
            admission: Arc::new(Admission::new(config.server.client_concurrent_requests_max)),
            documents: Arc::new(documents),
            changes,
            config: Arc::new(config),
        };
        Ok(Self {
            listener,
            state,
            invalidation_subscriber,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn database(&self) -> &DatabaseConnection {
        self.state.ledger.connection()
    }

    /// The write pool, for writes outside the ledger (a client, a key) made in a
    /// transaction: behind a transaction-mode pooler the read pool commits what a
    /// connection did only once the connection is back in the pool (`db::connect`).
    pub fn write_database(&self) -> &DatabaseConnection {
        self.state.ledger.write_connection()
    }

    /// Serves until ctrl-c or SIGTERM, then drains (SIGTERM only) and finishes in-flight
    /// requests.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` resolves. If it resolves to `Drain::Yes`, `/readyz`
    /// answers 503 for `SHUTDOWN_DRAIN_SECONDS` while every request is still served;
    /// then the server stops accepting connections, finishes what is in flight (queued
    /// payments included: each request waits for its batch) and returns.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = Drain> + Send + 'static,
    ) -> std::io::Result<()> {
        let draining = Arc::clone(&self.state.draining);
        let changes = Arc::clone(&self.state.changes);
        let drain_for = Duration::from_secs(self.state.config.server.shutdown_drain_seconds);
        let shutdown = async move {
            let drain = shutdown.await;
            draining.store(true, std::sync::atomic::Ordering::Relaxed);
            // Parked long polls answer now, and none parks from here on: shutdown
            // would otherwise wait out their waits.
            changes.close();
            if drain == Drain::Yes && !drain_for.is_zero() {
                tracing::info!(
                    seconds = drain_for.as_secs(),
                    "draining: /readyz answers 503 while requests are still served"
                );
                tokio::time::sleep(drain_for).await;
            }
            tracing::info!("shutting down: finishing in-flight requests");
        };
        let router = http::router(self.state);
        let served = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
        if let Some(subscriber) = self.invalidation_subscriber {
            subscriber.abort();
        }
        served
    }
}

/// The ledger service's write settings from the configuration.
pub fn write_settings(config: &DatabaseConfig) -> WriteSettings {
    WriteSettings {
        isolation: config.write_isolation,
        batch_max: usize::from(config.write_batch_max),
        batches_in_flight: usize::from(config.write_batches_in_flight),
        payment_batch_max: usize::from(config.payment_batch_max),
        hold_ttl: chrono::Duration::seconds(i64::from(config.hold_ttl_seconds)),
        one_statement_batches: config.pooler == Pooler::None,
    }
}

/// The caches' settings from the configuration.
pub fn cache_settings(config: &CacheConfig) -> CacheSettings {
    CacheSettings {
        l1_balance_capacity: config.l1_balance_capacity,
        l1_object_capacity: config.l1_object_capacity,
        l1_balance_ttl: Duration::from_millis(config.l1_balance_ttl_ms),
        l2_balance_ttl: Duration::from_millis(config.l2_balance_ttl_ms),
        redis_url: config.redis_url.clone(),
        redis_timeout: Duration::from_millis(config.redis_timeout_ms),
        namespace: config.namespace.clone(),
    }
}

pub async fn connect_and_migrate(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<DatabaseConnection> {
    let db = connect(
        config,
        config.database.max_connections,
        metrics,
        PoolRole::Reads,
    )
    .await?;
    match config.database.migrations {
        // Behind a transaction-mode pooler the read pool commits only once a
        // connection is back in the pool, so migrations run on a pool of their own.
        Migrations::Apply if config.database.pooler == Pooler::Transaction => {
            let writes = connect_for_writes(config, metrics).await?;
            let migrated = db::migrate(&writes).await;
            writes.close().await.ok();
            migrated.context("cannot apply migrations")?
        }
        Migrations::Apply => db::migrate(&db).await.context("cannot apply migrations")?,
        Migrations::Check => {
            let pending = db::pending_migrations(&db)
                .await
                .context("cannot read which migrations were applied")?;
            anyhow::ensure!(
                pending.is_empty(),
                "migrations {} are pending: run `payments-ledger migrate` as the database role that owns the tables, or start with DATABASE_MIGRATIONS=apply",
                pending.join(", ")
            );
        }
    }
    Ok(db)
}

/// One connection for tools that write (a client, a key, grants), in transactions only:
/// committed before the call returns, whatever stands in front of the database.
pub async fn connect_for_writes(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<DatabaseConnection> {
    connect(config, 1, metrics, PoolRole::Writes).await
}

/// A pool of `max_connections` on the configured database.
async fn connect(
    config: &Config,
    max_connections: u32,
    metrics: &Metrics,
    role: PoolRole,
) -> anyhow::Result<DatabaseConnection> {
    db::connect(&config.database, max_connections, metrics, role)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the database at {}",
                redact(&config.database.url)
            )
        })
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// On the very first start of an embedded (SQLite) ledger there is no client yet, so
/// one is created and its key printed: a newcomer is in GraphiQL within a minute. On
/// PostgreSQL, where an operator provisions clients, only the command is printed.
pub async fn greet_first_run(app: &Application) -> anyhow::Result<()> {
    let db = app.database();
    if client::Entity::find().count(db).await? > 0 {
        return Ok(());
    }
    let url = format!("http://{}", app.state.config.server.listen_addr);
    match Backend::of(db) {
        Backend::Sqlite => {
            let created = auth::create_client(db, "local").await?;
            println!(
                "\nFirst run: created client \"local\". Its API key (shown only this once):\n\n    {}\n\n\
                 GraphiQL: open {url}/ and set the header  Authorization: Bearer {}\n\
                 Dashboard: open {url}/dashboard and paste the key.\n\
                 More keys: payments-ledger client create <name>\n",
                created.api_key, created.api_key
            );
        }
        Backend::Postgres => println!(
            "No clients yet. Create one and its API key with: payments-ledger client create <name>"
        ),
    }
    Ok(())
}

/// Whether shutdown drains first (docs/operations.md, "Shutdown").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// SIGTERM: an orchestrator is replacing the instance; let load balancers notice.
    Yes,
    /// Ctrl-C: someone at a terminal wants it stopped now.
    No,
}

async fn shutdown_signal() -> Drain {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => Drain::No,
        () = terminate => Drain::Yes,
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://ledger:s3cret@db:5432/ledger"),
            "postgres://ledger:***@db:5432/ledger"
        );
        assert_eq!(
            redact("sqlite://ledger.db?mode=rwc"),
            "sqlite://ledger.db?mode=rwc"
        );
    }
}
