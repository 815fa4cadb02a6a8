//! Configuration: environment variables with matching command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::cache::CacheSettings;
use crate::db::WriteIsolation;
use crate::ledger::service::WriteSettings;

/// Where the ledger is stored.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// `sqlite://…` (embedded default) or `postgres://…`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://ledger.db?mode=rwc",
        global = true
    )]
    pub url: String,

    /// Upper bound on pooled database connections.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub max_connections: u32,

    /// How long a request waits for a pooled connection before it answers RETRY_LATER.
    #[arg(
        long = "database-acquire-timeout-seconds",
        env = "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
        default_value_t = 5,
        global = true
    )]
    pub acquire_timeout_seconds: u64,

    /// Isolation of PostgreSQL write transactions (SQLite has one writer).
    #[arg(
        long = "postgres-write-isolation",
        env = "POSTGRES_WRITE_ISOLATION",
        value_enum,
        default_value_t = WriteIsolation::Serializable,
        global = true
    )]
    pub write_isolation: WriteIsolation,

    /// Group commit: the most payments one write transaction carries. Payments that
    /// arrive while a transaction runs go into the next one together. 1 turns grouping
    /// off (one transaction per payment; raise WRITE_BATCHES_IN_FLIGHT with it, or
    /// payments run one at a time).
    #[arg(
        long = "write-batch-max",
        env = "WRITE_BATCH_MAX",
        default_value_t = 64,
        value_parser = clap::value_parser!(u16).range(1..=1000),
        global = true
    )]
    pub write_batch_max: u16,

    /// Group commit: how many payment transactions one instance runs at once (SQLite:
    /// always 1, its single writer).
    #[arg(
        long = "write-batches-in-flight",
        env = "WRITE_BATCHES_IN_FLIGHT",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=64),
        global = true
    )]
    pub write_batches_in_flight: u16,
}

impl DatabaseConfig {
    pub fn write_settings(&self) -> WriteSettings {
        WriteSettings {
            isolation: self.write_isolation,
            batch_max: usize::from(self.write_batch_max),
            batches_in_flight: usize::from(self.write_batches_in_flight),
        }
    }
}

/// How the HTTP server listens and what it accepts.
#[derive(Debug, Clone, Args)]
pub struct ServerConfig {
    /// Address and port to listen on; port 0 picks a free port.
    #[arg(
        long = "listen-addr",
        env = "LISTEN_ADDR",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// A request still running after this long is answered with a timeout.
    #[arg(
        long = "request-timeout-seconds",
        env = "REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_seconds: u64,
}

/// The balance and object caches (docs/consistency.md states what they guarantee).
#[derive(Debug, Clone, Args)]
pub struct CacheConfig {
    /// Redis for the shared L2 cache and cross-instance invalidation (optional).
    #[arg(long = "redis-url", env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// Balances kept in the in-process L1 cache; 0 turns the L1 balance cache off.
    #[arg(
        long = "cache-l1-balance-capacity",
        env = "CACHE_L1_BALANCE_CAPACITY",
        default_value_t = 100_000,
        global = true
    )]
    pub l1_balance_capacity: u64,

    /// Lifetime of an L1 balance: the staleness bound when invalidations are lost.
    #[arg(
        long = "cache-l1-balance-ttl-ms",
        env = "CACHE_L1_BALANCE_TTL_MS",
        default_value_t = 2_000,
        global = true
    )]
    pub l1_balance_ttl_ms: u64,

    /// Immutable objects (account settings, payments, entries) kept in L1 per kind.
    #[arg(
        long = "cache-l1-object-capacity",
        env = "CACHE_L1_OBJECT_CAPACITY",
        default_value_t = 20_000,
        global = true
    )]
    pub l1_object_capacity: u64,

    /// Lifetime of an L2 (Redis) balance that no write refreshes.
    #[arg(
        long = "cache-l2-balance-ttl-ms",
        env = "CACHE_L2_BALANCE_TTL_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub l2_balance_ttl_ms: u64,

    /// A Redis call slower than this is abandoned and the request goes on without L2.
    #[arg(
        long = "redis-timeout-ms",
        env = "REDIS_TIMEOUT_MS",
        default_value_t = 100,
        global = true
    )]
    pub redis_timeout_ms: u64,

    /// Prefix of Redis keys and channel; instances sharing a database must share it.
    #[arg(
        long = "cache-namespace",
        env = "CACHE_NAMESPACE",
        default_value = "ledger",
        global = true
    )]
    pub namespace: String,
}

impl CacheConfig {
    pub fn settings(&self) -> CacheSettings {
        CacheSettings {
            l1_balance_capacity: self.l1_balance_capacity,
            l1_object_capacity: self.l1_object_capacity,
            l1_balance_ttl: Duration::from_millis(self.l1_balance_ttl_ms),
            l1_object_ttl: CacheSettings::default().l1_object_ttl,
            l2_balance_ttl: Duration::from_millis(self.l2_balance_ttl_ms),
            redis_url: self.redis_url.clone(),
            redis_timeout: Duration::from_millis(self.redis_timeout_ms),
            namespace: self.namespace.clone(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        let defaults = CacheSettings::default();
        let milliseconds =
            |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self {
            redis_url: None,
            l1_balance_capacity: defaults.l1_balance_capacity,
            l1_balance_ttl_ms: milliseconds(defaults.l1_balance_ttl),
            l1_object_capacity: defaults.l1_object_capacity,
            l2_balance_ttl_ms: milliseconds(defaults.l2_balance_ttl),
            redis_timeout_ms: milliseconds(defaults.redis_timeout),
            namespace: defaults.namespace,
        }
    }
}

/// Everything `Application::build` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub server: ServerConfig,
    pub cache: CacheConfig,
}

impl Config {
    /// Defaults for everything but the database, listening on a free local port:
    /// what tests and tools embedding the server want.
    pub fn for_database(url: impl Into<String>) -> Self {
        Self {
            database: DatabaseConfig {
                url: url.into(),
                max_connections: 16,
                acquire_timeout_seconds: 5,
                write_isolation: WriteIsolation::default(),
                write_batch_max: 64,
                write_batches_in_flight: 1,
            },
            server: ServerConfig {
                listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                request_timeout_seconds: 30,
            },
            cache: CacheConfig::default(),
        }
    }
}
