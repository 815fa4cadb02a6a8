//! Database connections, migrations, and the one switch between SQLite and PostgreSQL.
//!
//! Service code is the same on both backends; what differs (transaction mode, which
//! errors mean "try again", how many writers may run at once) is answered by `Backend`.
//! On PostgreSQL a pool may span several hosts (`hosts`, followed by `follow`) and reads
//! that may lag may go to replicas (`replicas`).

mod follow;
pub mod hosts;
pub mod replicas;

use std::sync::Arc;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::postgres::{PgConnectOptions, PgTransactionManager};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::sqlx::{ConnectOptions as _, Connection as _};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    IsolationLevel, RuntimeErr, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sqlx_core::transaction::TransactionManager as _;

use self::follow::{Candidates, RetireMark};
use self::hosts::HostList;
use self::replicas::ReplicaSet;
use crate::config::{DatabaseConfig, Pooler, WriteIsolation};
use crate::metrics::{Metrics, ReplicaLabels};

/// The database flavour, and everything that differs between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(connection: &impl ConnectionTrait) -> Self {
        match connection.get_database_backend() {
            DbBackend::Sqlite => Self::Sqlite,
            _ => Self::Postgres,
        }
    }

    /// How a transaction that writes money begins.
    pub fn write_transaction_options(self, isolation: WriteIsolation) -> TransactionOptions {
        match self {
            // The write pool's connections default to `isolation` (set when they
            // connect), so BEGIN needs no isolation clause; naming it anyway keeps a
            // transaction begun on another pool at the level writes need.
            Self::Postgres => TransactionOptions {
                isolation_level: match isolation {
                    WriteIsolation::Serializable => Some(IsolationLevel::Serializable),
                    WriteIsolation::ReadCommitted => None,
                },
                ..Default::default()
            },
            // SQLite has one writer; IMMEDIATE takes the write lock at BEGIN, so a
            // transaction never reads a snapshot it later cannot upgrade.
            Self::Sqlite => TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..Default::default()
            },
        }
    }

    /// Whether `error` means "the same transaction may succeed if run again".
    pub fn is_retryable(self, error: &DbErr) -> bool {
        let Some(code) = sql_state(error) else {
            return false;
        };
        match self {
            // serialization_failure, deadlock_detected
            Self::Postgres => code == "40001" || code == "40P01",
            // SQLITE_BUSY and SQLITE_LOCKED, with any extended code.
            Self::Sqlite => code
                .parse::<i32>()
                .is_ok_and(|code| matches!(code & 0xff, 5 | 6)),
        }
    }

    /// A statement gave up waiting for a row lock (`lock_timeout`, SQLSTATE 55P03): its
    /// transaction rolled back and nothing happened.
    pub fn is_lock_timeout(self, error: &DbErr) -> bool {
        self == Self::Postgres && sql_state(error).as_deref() == Some("55P03")
    }

    /// How many independent write lanes the in-process write gate has. SQLite has one
    /// writer, so one lane; PostgreSQL locks per account, so many.
    pub fn write_lanes(self) -> usize {
        match self {
            Self::Sqlite => 1,
            Self::Postgres => 1024,
        }
    }
}

const REPLICA_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a pool is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRole {
    /// Reads at READ COMMITTED, and the rare transaction that names its isolation.
    Reads,
    /// Write transactions, at `POSTGRES_WRITE_ISOLATION` by default.
    Writes,
}

/// A pooled connection idle at least this long is pinged before it is handed out.
const POOL_PING_AFTER_IDLE_SECONDS: u64 = 30;

/// Opens the pool. SQLite runs in WAL mode with full fsync: an acknowledged payment
/// survives a power cut. On PostgreSQL `isolation` is every connection's default, so a
/// statement sent outside a transaction (a payment batch in one round trip) runs at it;
/// a URL naming several hosts (`hosts`) connects to the first that qualifies and follows
/// the role when it moves (`follow`).
pub async fn connect(
    config: &DatabaseConfig,
    max_connections: u32,
    metrics: &Metrics,
    role: PoolRole,
) -> anyhow::Result<DatabaseConnection> {
    // Only PostgreSQL URLs name hosts; a SQLite path may hold a comma.
    let is_postgres =
        config.url.starts_with("postgres://") || config.url.starts_with("postgresql://");
    let hosts = if is_postgres {
        hosts::parse(&config.url)?
    } else {
        HostList::single(&config.url)
    };
    let isolation = match role {
        PoolRole::Reads => WriteIsolation::ReadCommitted,
        PoolRole::Writes => config.write_isolation,
    };
    let tune = postgres_session(config, isolation);
    let following = if hosts.needs_following() {
        let candidates = Candidates {
            options: hosts
                .urls
                .iter()
                .map(|url| Ok(tune(url.parse::<PgConnectOptions>()?)))
                .collect::<Result<_, sea_orm::SqlxError>>()?,
            labels: hosts.labels.clone(),
            attrs: hosts.session_attrs,
        };
        if !hosts.session_attrs.guarantees_writable() {
            tracing::warn!(
                target_session_attrs = %hosts.session_attrs,
                "DATABASE_URL names several hosts without target_session_attrs=read-write or primary: the server may land on a standby, where writes fail"
            );
        }
        let (current, probe) = follow::locate(&candidates).await?;
        Some((candidates, current, probe))
    } else {
        None
    };
    let url = match &following {
        Some((_, current, _)) => hosts.urls[*current].clone(),
        None => config.url.clone(),
    };
    let retire = Arc::new(RetireMark::default());
    let mut options = ConnectOptions::new(url);
    options.acquire_timeout(Duration::from_secs(config.acquire_timeout_seconds));
    let lend_in_transaction = role == PoolRole::Reads && config.pooler == Pooler::Transaction;
    let connection = open(
        options,
        max_connections,
        metrics,
        tune,
        Arc::clone(&retire),
        lend_in_transaction,
    )
    .await?;
    if let Some((candidates, current, probe)) = following {
        follow::spawn(
            connection.get_postgres_connection_pool().clone(),
            candidates,
            current,
            probe,
            retire,
            metrics.database_host_switches.clone(),
        );
    }
    Ok(connection)
}

/// Connects to each of `DATABASE_REPLICA_URLS` and starts judging how far behind
/// `primary` each is (`replicas`). A replica that is down when the server starts is
/// skipped until it answers: its pool connects when first used.
pub async fn connect_replicas(
    config: &DatabaseConfig,
    metrics: &Arc<Metrics>,
    primary: &DatabaseConnection,
) -> anyhow::Result<Option<Arc<ReplicaSet>>> {
    // An empty DATABASE_REPLICA_URLS (as a compose file may set it) names none.
    let urls: Vec<&String> = config
        .replica_urls
        .iter()
        .filter(|url| !url.trim().is_empty())
        .collect();
    if urls.is_empty() {
        return Ok(None);
    }
    anyhow::ensure!(
        Backend::of(primary) == Backend::Postgres,
        "DATABASE_REPLICA_URLS needs a PostgreSQL DATABASE_URL"
    );
    let mut replicas = Vec::new();
    for url in urls {
        let hosts = hosts::parse(url)?;
        anyhow::ensure!(
            hosts.urls.len() == 1 && url.starts_with("postgres"),
            "each of DATABASE_REPLICA_URLS is a postgres:// URL naming one host, not {:?}",
            hosts.labels
        );
        let mut options = ConnectOptions::new(hosts.urls[0].clone());
        // A replica that does not hand out a connection at once is skipped for the
        // primary rather than waited for.
        options
            .connect_lazy(true)
            .acquire_timeout(REPLICA_ACQUIRE_TIMEOUT);
        let connection = open(
            options,
            config.max_connections,
            metrics,
            postgres_session(config, WriteIsolation::ReadCommitted),
            Arc::new(RetireMark::default()),
            config.pooler == Pooler::Transaction,
        )
        .await?;
        replicas.push((hosts.labels[0].clone(), connection));
    }
    let set = Arc::new(ReplicaSet::new(
        Duration::from_millis(config.replica_max_lag_ms),
        replicas,
    ));
    let max_lag_ms = config.replica_max_lag_ms;
    let serving = metrics.database_replica_serving.clone();
    for label in set.labels() {
        serving
            .get_or_create(&ReplicaLabels {
                replica: label.to_owned(),
            })
            .set(0);
    }
    set.spawn_monitor(primary.clone(), move |replica, lag| {
        serving
            .get_or_create(&ReplicaLabels { replica: replica.to_owned() })
            .set(i64::from(lag.is_some()));
        match lag {
            Some(lag) => tracing::info!(replica, lag_ms = lag.as_millis(), "replica serves reads"),
            None => tracing::warn!(replica, max_lag_ms, "replica skipped: unreachable, not streaming from the primary, or further behind than DATABASE_REPLICA_MAX_LAG_MS; the primary serves its reads"),
        }
    });
    Ok(Some(set))
}

/// Opens one pool.
async fn open(
    mut options: ConnectOptions,
    max_connections: u32,
    metrics: &Metrics,
    tune: impl Fn(PgConnectOptions) -> PgConnectOptions + Send + Sync + 'static,
    retire: Arc<RetireMark>,
    lend_in_transaction: bool,
) -> Result<DatabaseConnection, DbErr> {
    options
        .max_connections(max_connections)
        // A connection kept open for the minimum would sit inside its transaction, and
        // hold a server session of the pooler, until first lent out.
        .min_connections(u32::from(!lend_in_transaction))
        // sea-orm pings every connection it hands out by default: one more round trip
        // in front of every statement outside a transaction (a payment batch sent as
        // one statement paid two) and every BEGIN. Only a connection idle long enough
        // to have been dropped by the server or a proxy is pinged now; one that breaks
        // anyway fails its statement, which every write already survives (reruns,
        // OUTCOME_UNKNOWN) and a read reports as an error.
        .test_before_acquire_if_idle_for(Duration::from_secs(POOL_PING_AFTER_IDLE_SECONDS))
        .sqlx_logging(false)
        .map_sqlx_postgres_opts(tune)
        .map_sqlx_postgres_before_acquire(move |connection, meta| {
            let keep = !retire.is_retired(meta.age);
            Box::pin(async move {
                // One opened for the pool's minimum began in `after_connect`.
                if keep && lend_in_transaction && !connection.is_in_transaction() {
                    PgTransactionManager::begin(connection, None).await?;
                }
                Ok(keep)
            })
        })
        .map_sqlx_postgres_pool_opts(move |pool| {
            if !lend_in_transaction {
                return pool;
            }
            // Behind a transaction-mode pooler a statement outside a transaction may
            // have its Parse and its Bind (sqlx sends them in two round trips) served by
            // different server sessions: the Bind then runs whatever another client
            // parsed there last. So a read connection is inside a transaction while it
            // is lent out (begun when it is handed out, `before_acquire` above and
            // `after_connect` here, and committed when it comes back), which keeps it
            // on one server session. A transaction begun on it becomes a savepoint,
            // committed only once the connection is back: so nothing is written
            // through this pool (migrations, clients and keys use a `PoolRole::Writes`
            // pool, which runs nothing but transactions).
            pool.after_connect(|connection, _| {
                Box::pin(async move { PgTransactionManager::begin(connection, None).await })
            })
            .after_release(|connection, _| {
                Box::pin(async move {
                    if connection.is_in_transaction() {
                        PgTransactionManager::commit(connection).await?;
                    }
                    Ok(true)
                })
            })
        })
        .map_sqlx_sqlite_opts(|options| {
            options
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    let mut connection = Database::connect(options).await?;
    let statements = metrics.database_statements.clone();
    connection.set_metric_callback(move |info| {
        statements.inc();
        tracing::trace!(elapsed = ?info.elapsed, failed = info.failed, sql = %info.statement, "statement");
    });
    Ok(connection)
}

/// What every PostgreSQL session of the server is opened with.
fn postgres_session(
    config: &DatabaseConfig,
    isolation: WriteIsolation,
) -> impl Fn(PgConnectOptions) -> PgConnectOptions + Clone + Send + Sync + 'static {
    let lock_timeout = format!("{}ms", config.lock_timeout_ms);
    let isolation = match isolation {
        WriteIsolation::Serializable => "serializable",
        WriteIsolation::ReadCommitted => "read committed",
    };
    let pooler = config.pooler;
    move |options: PgConnectOptions| {
        let options = options.disable_statement_logging();
        match pooler {
            // Sent once when a connection opens, so no statement pays for them: no
            // transaction depends on the server's default isolation, and no statement
            // waits for a row lock longer than the configured bound.
            Pooler::None => options.options([
                ("default_transaction_isolation", isolation.to_owned()),
                ("lock_timeout", lock_timeout.clone()),
            ]),
            // A transaction-mode pooler hands each transaction whichever server session
            // is free: a statement prepared in one is unknown in the next, and it refuses
            // startup parameters it does not know (`options`, `extra_float_digits`).
            // Writes name their isolation in their BEGIN instead (`Backend::
            // write_transaction_options`); `lock_timeout` is the role's
            // (docs/operations.md).
            Pooler::Transaction => options.statement_cache_capacity(0).extra_float_digits(None),
        }
    }
}

/// Applies pending migrations. On PostgreSQL they run under a transaction-scoped
/// advisory lock, so instances starting together migrate one after another instead of
/// racing; SQLite's file lock already serializes writers.
pub async fn migrate(connection: &DatabaseConnection) -> Result<(), DbErr> {
    /// An arbitrary constant that names "the ledger's migrations" among advisory locks.
    const MIGRATION_LOCK_KEY: i64 = 0x6c65_6467_6572;
    match Backend::of(connection) {
        Backend::Postgres => {
            let transaction = connection.begin().await?;
            transaction
                .execute_unprepared(&format!(
                    "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
                ))
                .await?;
            // A migration may wait for traffic of instances already running; the
            // lock bound is for payments.
            transaction
                .execute_unprepared("SET LOCAL lock_timeout = 0")
                .await?;
            Migrator::up(&transaction, None).await?;
            transaction.commit().await
        }
        Backend::Sqlite => Migrator::up(connection, None).await,
    }
}

/// PostgreSQL: lets `role` run the server and nothing more: read every table, append
/// rows, and move a balance and version (which the guard triggers check), but change no
/// account's identity, delete nothing, and, since it does not own the tables, disable
/// no trigger. Run as the role that owns the tables (the one that ran the migrations);
/// the server then runs as `role` with `DATABASE_MIGRATIONS=check`.
pub async fn grant_app_role(connection: &DatabaseConnection, role: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        Backend::of(connection) == Backend::Postgres,
        "database roles exist on PostgreSQL only"
    );
    let is_identifier = role.len() <= 63
        && role.starts_with(|first: char| first.is_ascii_lowercase() || first == '_')
        && role
            .chars()
            .all(|next| next.is_ascii_lowercase() || next.is_ascii_digit() || next == '_');
    anyhow::ensure!(
        is_identifier,
        "role {role:?}: use lowercase letters, digits and underscores, at most 63"
    );
    let transaction = connection.begin().await?;
    for statement in [
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!(
            "GRANT SELECT, INSERT ON clients, api_keys, accounts, payments, ledger_entries, \
             idempotency_keys, payment_settlements, live_holds, payment_metadata, payment_groups, \
             account_changes TO {role}"
        ),
        // Live holds are the one working set whose rows leave (when settled or
        // expired; a trigger checks which).
        format!("GRANT DELETE ON live_holds TO {role}"),
        format!(
            "GRANT UPDATE (balance_minor, version, last_entry_at, pending_minor, hold_seq, status, \
             credit_limit_minor, external_ref, change_seq) ON accounts TO {role}"
        ),
        format!("GRANT UPDATE (revoked_at) ON api_keys TO {role}"),
        format!("GRANT SELECT ON seaql_migrations TO {role}"),
    ] {
        transaction.execute_unprepared(&statement).await?;
    }
    transaction.commit().await?;
    Ok(())
}

/// The names of the migrations this build knows that the database has not applied.
/// Reads only `seaql_migrations`, so a role without DDL rights can ask.
pub async fn pending_migrations(connection: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let applied: std::collections::HashSet<String> = connection
        .query_all_raw(sea_orm::Statement::from_string(
            connection.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "version"))
        .collect::<Result<_, _>>()?;
    Ok(Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect())
}

/// Whether `error` is the connection failing rather than the database refusing a
/// statement: the socket broke, the server went away or shut the session down. The
/// transaction it was in can no longer commit; but if it was the COMMIT that got no
/// answer, the database may have committed it.
pub fn is_connection_lost(error: &DbErr) -> bool {
    let Some(error) = driver_error(error) else {
        return false;
    };
    match error {
        sea_orm::SqlxError::Io(_)
        | sea_orm::SqlxError::Tls(_)
        | sea_orm::SqlxError::Protocol(_)
        | sea_orm::SqlxError::PoolClosed
        | sea_orm::SqlxError::WorkerCrashed => true,
        // connection_exception (08…), admin_shutdown, crash_shutdown, cannot_connect_now
        sea_orm::SqlxError::Database(error) => error
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

/// Whether the server refused a write because it is read-only: a standby, or a primary
/// just demoted (SQLSTATE 25006). Nothing was written; the primary is elsewhere now, and
/// the pool follows it (`follow`).
pub fn is_read_only_refusal(error: &DbErr) -> bool {
    sql_state(error).as_deref() == Some("25006")
}

/// Whether the database itself answered `error` (a SQLSTATE or SQLite result code): it
/// judged the statement, so a COMMIT that failed this way did not commit.
pub fn has_database_answer(error: &DbErr) -> bool {
    sql_state(error).is_some() && !is_connection_lost(error)
}

fn driver_error(error: &DbErr) -> Option<&sea_orm::SqlxError> {
    let (DbErr::Exec(RuntimeErr::SqlxError(error))
    | DbErr::Query(RuntimeErr::SqlxError(error))
    | DbErr::Conn(RuntimeErr::SqlxError(error))) = error
    else {
        return None;
    };
    Some(&**error)
}

/// The database's own error code (SQLSTATE on PostgreSQL, the result code on SQLite).
fn sql_state(error: &DbErr) -> Option<String> {
    Some(
        driver_error(error)?
            .as_database_error()?
            .code()?
            .into_owned(),
    )
}
