//! A payments ledger GraphQL server: exactly-once payments between accounts, recorded
//! in an append-only double-entry ledger.

/// How much work the server takes on at once: per client, and in fields in flight.
pub mod admission;
/// The browser pages (GraphiQL, the dashboard) and their files, built in.
pub mod assets;
/// Clients (tenants), API keys and who a request is from.
pub mod auth;
/// Versioned L1 (moka) and L2 (Redis) caches.
pub mod cache;
/// Which clients' data changed: what wakes parked long polls.
pub mod changes;
/// The command line: `serve`, `migrate`, `grant-app-role`, `schema`, `client …`, `verify`.
pub mod cli;
/// Configuration from the environment and flags.
pub mod config;
/// Connection, migrations and the SQLite/PostgreSQL switch.
pub mod db;
/// Persisted (APQ) and trusted GraphQL documents.
pub mod documents;
/// sea-orm entities, one per table.
pub mod entity;
/// The error type and its GraphQL codes.
pub mod error;
/// The GraphQL schema, resolvers and loaders.
pub mod graphql;
/// GraphQL over HTTP, the pages, CORS and health endpoints.
pub mod http;
/// Idempotency keys, fingerprints and replays.
pub mod idempotency;
/// Typed public ids.
pub mod ids;
/// Money, balance rules, postings, the ledger service and its audit.
pub mod ledger;
/// Prometheus metrics.
pub mod metrics;
/// Relay keyset pagination.
pub mod pagination;
/// Building and running the application.
pub mod startup;
/// Logging.
pub mod telemetry;

pub use config::Config;
pub use startup::Application;
