//! Integration tests: the real server over HTTP, on SQLite and on PostgreSQL.

mod clusters;
mod helpers;
mod services;

mod hostile;

mod accounts;
mod append_only;
mod architecture;
mod bad_input;
mod browser;
mod bulk;
mod cache;
mod cli;
mod concurrency;
mod cors;
mod export;
mod feeds;
mod group_commit;
mod groups;
mod guards_sql;
mod history;
mod http;
mod idempotency;
mod keys;
mod lifecycle;
mod link;
mod loaders;
mod loadgen;
mod lost_connections;
mod metadata;
mod one_trip;
mod pagination;
mod payments;
mod polling;
mod replication;
mod roles;
mod schema;
mod shutdown;
pub mod stalls;
mod tenancy;
