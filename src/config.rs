//! Configuration: environment variables with matching command-line flags.
//!
//! A leaf: plain settings that depend on nothing else of the server's. Every default is
//! written once, as a constant that both the flag and `Default` use; `startup` turns
//! these settings into what the database, the caches and the ledger service take.

use std::net::SocketAddr;

use clap::Args;

pub const DATABASE_URL_DEFAULT: &str = "sqlite://ledger.db?mode=rwc";
pub const DATABASE_MAX_CONNECTIONS_DEFAULT: u32 = 16;
pub const DATABASE_ACQUIRE_TIMEOUT_SECONDS_DEFAULT: u64 = 5;
pub const WRITE_BATCH_MAX_DEFAULT: u16 = 64;
pub const POSTGRES_LOCK_TIMEOUT_MS_DEFAULT: u64 = 1_000;
pub const WRITE_BATCHES_IN_FLIGHT_DEFAULT: u16 = 1;
pub const PAYMENT_BATCH_MAX_DEFAULT: u16 = 1000;
pub const LISTEN_ADDR_DEFAULT: &str = "127.0.0.1:8080";
pub const REQUEST_TIMEOUT_SECONDS_DEFAULT: u64 = 30;
pub const API_KEY_CACHE_SECONDS_DEFAULT: u64 = 10;
pub const SHUTDOWN_DRAIN_SECONDS_DEFAULT: u64 = 5;
/// Seven days, as card authorizations usually live.
pub const HOLD_TTL_SECONDS_DEFAULT: u32 = 7 * 24 * 3600;
pub const CLIENT_CONCURRENT_REQUESTS_MAX_DEFAULT: u32 = 64;
pub const DATABASE_WRITE_CONNECTIONS_DEFAULT: u32 = 4;
pub const DATABASE_REPLICA_MAX_LAG_MS_DEFAULT: u64 = 1_000;
pub const LONG_POLLS_PER_CLIENT_MAX_DEFAULT: usize = 256;
pub const LONG_POLLS_MAX_DEFAULT: usize = 10_000;

/// Which GraphQL documents run (`documents`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DocumentPolicy {
    /// Documents sent in full, persisted (APQ) and trusted ones alike.
    #[default]
    Any,
    /// Only the documents of `GRAPHQL_TRUSTED_DOCUMENTS` (and the built-in dashboard's):
    /// a public frontend runs only the operations it shipped with.
    Trusted,
}

/// Who may introspect the schema (`__schema`, `__type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Introspection {
    /// Anyone, key or not, within the anonymous document budget: GraphiQL works before
    /// a key is entered.
    #[default]
    Public,
    /// Only callers with a valid API key.
    Authenticated,
    /// Nobody.
    Off,
}
pub const CACHE_L1_BALANCE_CAPACITY_DEFAULT: u64 = 100_000;
pub const CACHE_L1_BALANCE_TTL_MS_DEFAULT: u64 = 2_000;
pub const CACHE_L1_OBJECT_CAPACITY_DEFAULT: u64 = 20_000;
pub const CACHE_L2_BALANCE_TTL_MS_DEFAULT: u64 = 10_000;
pub const REDIS_TIMEOUT_MS_DEFAULT: u64 = 100;
pub const CACHE_NAMESPACE_DEFAULT: &str = "ledger";

/// The isolation level of PostgreSQL write transactions. Both keep every invariant:
/// each decision is made from account rows locked `FOR UPDATE` in id order and written
/// back under a version check, and exactly-once rests on a unique key. SERIALIZABLE adds
/// the database's own proof of that, at the price of false-positive serialization
/// failures when concurrent transactions insert into the same index pages
/// (docs/consistency.md, docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum WriteIsolation {
    #[default]
    Serializable,
    ReadCommitted,
}

/// What stands between the server and PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Pooler {
    /// Nothing, or a pooler in session mode: a connection is one server session.
    #[default]
    None,
    /// A pooler in transaction mode (pgbouncer `pool_mode = transaction`): consecutive
    /// transactions of one connection may run on different server sessions, so the
    /// server caches no prepared statement, sets nothing per session, and runs every
    /// write in a transaction that names its isolation (docs/operations.md).
    Transaction,
}

/// What the server does with pending migrations when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Migrations {
    /// Apply them (needs a role that owns the tables).
    #[default]
    Apply,
    /// Apply nothing; refuse to start while any is pending. For a server that runs as
    /// a role without DDL rights (docs/operations.md, "Database roles"), after
    /// `payments-ledger migrate` ran as the owner.
    Check,
}

/// Where the ledger is stored, and how writes run.
#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// `sqlite://…` (embedded default) or `postgres://…`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = DATABASE_URL_DEFAULT,
        global = true
    )]
    pub url: String,

    /// Upper bound on pooled database connections.
    #[arg(
        long = "database-max-connections",
        env = "DATABASE_MAX_CONNECTIONS",
        default_value_t = DATABASE_MAX_CONNECTIONS_DEFAULT,
        global = true
    )]
    pub max_connections: u32,

    /// Connections kept for writes, in a pool of their own besides
    /// DATABASE_MAX_CONNECTIONS (which reads use), so that no flood of reads can take
    /// the connections payments need. At least WRITE_BATCHES_IN_FLIGHT + 1 is used.
    #[arg(
        long = "database-write-connections",
        env = "DATABASE_WRITE_CONNECTIONS",
        default_value_t = DATABASE_WRITE_CONNECTIONS_DEFAULT,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub write_connections: u32,

    /// How long a request waits for a pooled connection before it answers RETRY_LATER.
    #[arg(
        long = "database-acquire-timeout-seconds",
        env = "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
        default_value_t = DATABASE_ACQUIRE_TIMEOUT_SECONDS_DEFAULT,
        global = true
    )]
    pub acquire_timeout_seconds: u64,

    /// Isolation of PostgreSQL write transactions (SQLite has one writer).
    #[arg(
        long = "postgres-write-isolation",
        env = "POSTGRES_WRITE_ISOLATION",
        value_enum,
        default_value_t = WriteIsolation::default(),
        global = true
    )]
    pub write_isolation: WriteIsolation,

    /// PostgreSQL: the longest a statement waits for a row lock (`lock_timeout`). A
    /// payment whose account stays locked longer answers RETRY_LATER (nothing
    /// happened) while the rest of its batch goes on. 0 waits forever.
    #[arg(
        long = "postgres-lock-timeout-ms",
        env = "POSTGRES_LOCK_TIMEOUT_MS",
        default_value_t = POSTGRES_LOCK_TIMEOUT_MS_DEFAULT,
        global = true
    )]
    pub lock_timeout_ms: u64,

    /// Group commit: the most payments one write transaction carries. Payments that
    /// arrive while a transaction runs go into the next one together. 1 turns grouping
    /// off (one transaction per payment; raise WRITE_BATCHES_IN_FLIGHT with it, or
    /// payments run one at a time).
    #[arg(
        long = "write-batch-max",
        env = "WRITE_BATCH_MAX",
        default_value_t = WRITE_BATCH_MAX_DEFAULT,
        value_parser = clap::value_parser!(u16).range(1..=1000),
        global = true
    )]
    pub write_batch_max: u16,

    /// Group commit: how many payment transactions one instance runs at once (SQLite:
    /// always 1, its single writer).
    #[arg(
        long = "write-batches-in-flight",
        env = "WRITE_BATCHES_IN_FLIGHT",
        default_value_t = WRITE_BATCHES_IN_FLIGHT_DEFAULT,
        value_parser = clap::value_parser!(u16).range(1..=64),
        global = true
    )]
    pub write_batches_in_flight: u16,

    /// `createPaymentBatch`: the most payments one request may carry. Such a request
    /// is one unit of group commit (one transaction), so this also bounds how many rows
    /// and account locks one transaction holds.
    #[arg(
        long = "payment-batch-max",
        env = "PAYMENT_BATCH_MAX",
        default_value_t = PAYMENT_BATCH_MAX_DEFAULT,
        value_parser = clap::value_parser!(u16).range(1..=10000),
        global = true
    )]
    pub payment_batch_max: u16,

    /// How long a hold (`pending: true`) lives when its request names no
    /// `holdExpiresAt`; at most 366 days.
    #[arg(
        long = "hold-ttl-seconds",
        env = "HOLD_TTL_SECONDS",
        default_value_t = HOLD_TTL_SECONDS_DEFAULT,
        value_parser = clap::value_parser!(u32).range(1..=366 * 24 * 3600),
        global = true
    )]
    pub hold_ttl_seconds: u32,

    /// Whether starting (serve, client, verify) applies pending migrations or only
    /// checks that none is pending. `payments-ledger migrate` always applies them.
    #[arg(
        long = "database-migrations",
        env = "DATABASE_MIGRATIONS",
        value_enum,
        default_value_t = Migrations::default(),
        global = true
    )]
    pub migrations: Migrations,

    /// What stands between the server and PostgreSQL: `none`, or `transaction` for a
    /// pooler in transaction mode such as pgbouncer's.
    #[arg(
        long = "database-pooler",
        env = "DATABASE_POOLER",
        value_enum,
        default_value_t = Pooler::default(),
        global = true
    )]
    pub pooler: Pooler,

    /// PostgreSQL streaming replicas (comma-separated `postgres://` URLs, one host each)
    /// for reads that may be a bounded time behind (docs/consistency.md, "Replicas").
    #[arg(
        long = "database-replica-urls",
        env = "DATABASE_REPLICA_URLS",
        value_delimiter = ',',
        global = true
    )]
    pub replica_urls: Vec<String>,

    /// A replica whose replay is further behind the primary than this serves nothing
    /// until it catches up; the primary serves instead.
    #[arg(
        long = "database-replica-max-lag-ms",
        env = "DATABASE_REPLICA_MAX_LAG_MS",
        default_value_t = DATABASE_REPLICA_MAX_LAG_MS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    pub replica_max_lag_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: DATABASE_URL_DEFAULT.to_owned(),
            max_connections: DATABASE_MAX_CONNECTIONS_DEFAULT,
            write_connections: DATABASE_WRITE_CONNECTIONS_DEFAULT,
            acquire_timeout_seconds: DATABASE_ACQUIRE_TIMEOUT_SECONDS_DEFAULT,
            write_isolation: WriteIsolation::default(),
            lock_timeout_ms: POSTGRES_LOCK_TIMEOUT_MS_DEFAULT,
            write_batch_max: WRITE_BATCH_MAX_DEFAULT,
            write_batches_in_flight: WRITE_BATCHES_IN_FLIGHT_DEFAULT,
            payment_batch_max: PAYMENT_BATCH_MAX_DEFAULT,
            hold_ttl_seconds: HOLD_TTL_SECONDS_DEFAULT,
            migrations: Migrations::default(),
            pooler: Pooler::default(),
            replica_urls: Vec::new(),
            replica_max_lag_ms: DATABASE_REPLICA_MAX_LAG_MS_DEFAULT,
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
        default_value = LISTEN_ADDR_DEFAULT,
        global = true
    )]
    pub listen_addr: SocketAddr,

    /// A request still running after this long is answered with a timeout.
    #[arg(
        long = "request-timeout-seconds",
        env = "REQUEST_TIMEOUT_SECONDS",
        default_value_t = REQUEST_TIMEOUT_SECONDS_DEFAULT,
        global = true
    )]
    pub request_timeout_seconds: u64,

    /// Browser origins whose pages may call the API, comma-separated
    /// (`https://app.example.com,http://localhost:3000`), or `*` for any. Default: none,
    /// so only pages this server serves itself can call it from a browser.
    #[arg(
        long = "cors-allowed-origins",
        env = "CORS_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_parser = parse_origin,
        global = true
    )]
    pub cors_allowed_origins: Vec<String>,

    /// How long an instance trusts what it learned about an API key (valid for a client,
    /// or unknown) before asking the database again: a revoked key stops working on
    /// every instance within this bound. 0 asks every time.
    #[arg(
        long = "api-key-cache-seconds",
        env = "API_KEY_CACHE_SECONDS",
        default_value_t = API_KEY_CACHE_SECONDS_DEFAULT,
        global = true
    )]
    pub api_key_cache_seconds: u64,

    /// After SIGTERM, how long `/readyz` answers 503 while requests are still served, so
    /// load balancers stop sending new ones before the server stops accepting them.
    /// Ctrl-C (SIGINT) skips it.
    #[arg(
        long = "shutdown-drain-seconds",
        env = "SHUTDOWN_DRAIN_SECONDS",
        default_value_t = SHUTDOWN_DRAIN_SECONDS_DEFAULT,
        global = true
    )]
    pub shutdown_drain_seconds: u64,

    /// Who may introspect the schema: `public`, `authenticated` (production) or `off`.
    #[arg(
        long = "graphql-introspection",
        env = "GRAPHQL_INTROSPECTION",
        value_enum,
        default_value_t = Introspection::default(),
        global = true
    )]
    pub introspection: Introspection,

    /// Requests one client may have running at once; one more answers 429 RETRY_LATER
    /// with a retry hint. 0: no limit.
    #[arg(
        long = "client-concurrent-requests-max",
        env = "CLIENT_CONCURRENT_REQUESTS_MAX",
        default_value_t = CLIENT_CONCURRENT_REQUESTS_MAX_DEFAULT,
        global = true
    )]
    pub client_concurrent_requests_max: u32,

    /// Which documents run: `any` (full, persisted and trusted) or `trusted` (only the
    /// manifest's; anything else is refused with DOCUMENT_NOT_TRUSTED).
    #[arg(
        long = "graphql-documents",
        env = "GRAPHQL_DOCUMENTS",
        value_enum,
        default_value_t = DocumentPolicy::default(),
        global = true
    )]
    pub documents: DocumentPolicy,

    /// A trusted-documents manifest loaded at start: graphql-codegen's
    /// `persisted-documents.json` (`{"<sha256 hex>": "<document>"}`) or Apollo's
    /// persisted-query manifest. A manifest that does not check out stops the start.
    #[arg(
        long = "graphql-trusted-documents",
        env = "GRAPHQL_TRUSTED_DOCUMENTS",
        global = true
    )]
    pub trusted_documents: Option<std::path::PathBuf>,

    /// Long polls one client may have parked on this instance; one more answers 429
    /// RETRY_LATER.
    #[arg(
        long = "long-polls-per-client-max",
        env = "LONG_POLLS_PER_CLIENT_MAX",
        default_value_t = LONG_POLLS_PER_CLIENT_MAX_DEFAULT,
        global = true
    )]
    pub long_polls_per_client_max: usize,

    /// Long polls this instance holds parked at once, all clients together.
    #[arg(
        long = "long-polls-max",
        env = "LONG_POLLS_MAX",
        default_value_t = LONG_POLLS_MAX_DEFAULT,
        global = true
    )]
    pub long_polls_max: usize,
}

/// An origin as browsers send it: `scheme://host[:port]`, lower case, nothing after.
fn parse_origin(text: &str) -> Result<String, String> {
    let origin = text.trim().to_ascii_lowercase();
    if origin == "*" {
        return Ok(origin);
    }
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))
        .ok_or_else(|| {
            format!("{text:?} is not an origin: it must start with http:// or https://")
        })?;
    let valid = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if valid {
        Ok(origin)
    } else {
        Err(format!(
            "{text:?} is not an origin: write scheme://host[:port], with no path or trailing slash"
        ))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen_addr: LISTEN_ADDR_DEFAULT
                .parse()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080))),
            request_timeout_seconds: REQUEST_TIMEOUT_SECONDS_DEFAULT,
            cors_allowed_origins: Vec::new(),
            api_key_cache_seconds: API_KEY_CACHE_SECONDS_DEFAULT,
            shutdown_drain_seconds: SHUTDOWN_DRAIN_SECONDS_DEFAULT,
            introspection: Introspection::default(),
            client_concurrent_requests_max: CLIENT_CONCURRENT_REQUESTS_MAX_DEFAULT,
            documents: DocumentPolicy::default(),
            trusted_documents: None,
            long_polls_per_client_max: LONG_POLLS_PER_CLIENT_MAX_DEFAULT,
            long_polls_max: LONG_POLLS_MAX_DEFAULT,
        }
    }
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
        default_value_t = CACHE_L1_BALANCE_CAPACITY_DEFAULT,
        global = true
    )]
    pub l1_balance_capacity: u64,

    /// Lifetime of an L1 balance: the staleness bound when invalidations are lost.
    #[arg(
        long = "cache-l1-balance-ttl-ms",
        env = "CACHE_L1_BALANCE_TTL_MS",
        default_value_t = CACHE_L1_BALANCE_TTL_MS_DEFAULT,
        global = true
    )]
    pub l1_balance_ttl_ms: u64,

    /// Immutable objects (account settings, payments, entries) kept in L1 per kind.
    #[arg(
        long = "cache-l1-object-capacity",
        env = "CACHE_L1_OBJECT_CAPACITY",
        default_value_t = CACHE_L1_OBJECT_CAPACITY_DEFAULT,
        global = true
    )]
    pub l1_object_capacity: u64,

    /// Lifetime of an L2 (Redis) balance that no write refreshes.
    #[arg(
        long = "cache-l2-balance-ttl-ms",
        env = "CACHE_L2_BALANCE_TTL_MS",
        default_value_t = CACHE_L2_BALANCE_TTL_MS_DEFAULT,
        global = true
    )]
    pub l2_balance_ttl_ms: u64,

    /// A Redis call slower than this is abandoned and the request goes on without L2.
    #[arg(
        long = "redis-timeout-ms",
        env = "REDIS_TIMEOUT_MS",
        default_value_t = REDIS_TIMEOUT_MS_DEFAULT,
        global = true
    )]
    pub redis_timeout_ms: u64,

    /// Prefix of Redis keys and channel; instances sharing a database must share it.
    #[arg(
        long = "cache-namespace",
        env = "CACHE_NAMESPACE",
        default_value = CACHE_NAMESPACE_DEFAULT,
        global = true
    )]
    pub namespace: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            l1_balance_capacity: CACHE_L1_BALANCE_CAPACITY_DEFAULT,
            l1_balance_ttl_ms: CACHE_L1_BALANCE_TTL_MS_DEFAULT,
            l1_object_capacity: CACHE_L1_OBJECT_CAPACITY_DEFAULT,
            l2_balance_ttl_ms: CACHE_L2_BALANCE_TTL_MS_DEFAULT,
            redis_timeout_ms: REDIS_TIMEOUT_MS_DEFAULT,
            namespace: CACHE_NAMESPACE_DEFAULT.to_owned(),
        }
    }
}

/// Everything `Application::build` needs.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub database: DatabaseConfig,
    pub server: ServerConfig,
    pub cache: CacheConfig,
}

impl Config {
    /// Defaults for everything but the database, listening on a free local port:
    /// what tests and tools embedding the server want.
    pub fn for_database(url: impl Into<String>) -> Self {
        let mut config = Self::default();
        config.database.url = url.into();
        config.server.listen_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, FromArgMatches, Parser};

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        database: DatabaseConfig,
        #[command(flatten)]
        server: ServerConfig,
        #[command(flatten)]
        cache: CacheConfig,
    }

    #[test]
    fn flag_defaults_are_the_default_config() {
        // Environment variables are detached so the machine's own settings cannot
        // leak in: what is compared is the flags' defaults alone.
        let command = Flags::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from(["payments-ledger"]);
        let flags = Flags::from_arg_matches(&matches).expect("defaults parse");
        let parsed = Config {
            database: flags.database,
            server: flags.server,
            cache: flags.cache,
        };
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn cors_origins_are_checked_when_parsed() {
        assert_eq!(
            parse_origin(" HTTPS://App.Example.com:8443 "),
            Ok("https://app.example.com:8443".to_owned())
        );
        assert_eq!(parse_origin("*"), Ok("*".to_owned()));
        for bad in [
            "",
            "app.example.com",
            "https://",
            "https://a.example/",
            "ftp://a",
            "https://a b",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?} was accepted");
        }
        let command = Flags::command().mut_args(|arg| arg.env(None::<&str>));
        let matches = command.get_matches_from([
            "payments-ledger",
            "--cors-allowed-origins",
            "http://localhost:3000,https://ops.example.com",
        ]);
        let flags = Flags::from_arg_matches(&matches).expect("origins parse");
        assert_eq!(
            flags.server.cors_allowed_origins,
            ["http://localhost:3000", "https://ops.example.com"]
        );
    }
}
