//! Configuration: environment variables with matching command-line flags.

use std::net::SocketAddr;

use clap::Args;

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

    /// Redis for the shared L2 cache and cross-instance invalidation (optional).
    #[arg(long = "redis-url", env = "REDIS_URL", global = true)]
    pub redis_url: Option<String>,

    /// A request still running after this long is answered with a timeout.
    #[arg(
        long = "request-timeout-seconds",
        env = "REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30,
        global = true
    )]
    pub request_timeout_seconds: u64,
}

/// Everything `Application::build` needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub server: ServerConfig,
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
            },
            server: ServerConfig {
                listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                redis_url: None,
                request_timeout_seconds: 30,
            },
        }
    }
}
