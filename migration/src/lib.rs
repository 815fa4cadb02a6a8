//! Database migrations for the payments ledger.
//!
//! Tables are created through sea-query so one definition serves SQLite and PostgreSQL;
//! the few backend-specific pieces (append-only and guard triggers, feed defaults) are raw
//! SQL chosen by backend.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_ledger;
mod m20261124_000002_feeds;
mod m20261125_000001_guards;
mod m20261125_000002_api_keys;
mod m20261126_000001_holds_refunds;
mod m20261127_000001_balance_history;
mod m20261127_000002_metadata;
mod m20261128_000001_payment_groups;
mod m20261128_000002_account_lifecycle;
mod m20261206_000001_one_round_trip;
mod m20261206_000002_entry_references_by_guard;

pub use m20261125_000001_guards::GUARD_TRIGGERS;
pub use m20261126_000001_holds_refunds::HOLD_GUARD_TRIGGERS;
pub use m20261127_000001_balance_history::HISTORY_GUARD_TRIGGERS;
pub use m20261128_000001_payment_groups::GROUP_GUARD_TRIGGERS;
pub use m20261128_000002_account_lifecycle::ACCOUNT_GUARD_TRIGGERS;
pub use m20261206_000001_one_round_trip::ACCOUNTS_MOVED_SQLSTATE;

/// Runs `sql` on PostgreSQL and does nothing on SQLite: for the migrations whose whole
/// point is a PostgreSQL statement (SQLite runs in process and has nothing to gain).
pub(crate) async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != sea_orm_migration::sea_orm::DatabaseBackend::Postgres {
        return Ok(());
    }
    manager
        .get_connection()
        .execute_unprepared(sql)
        .await
        .map(drop)
}

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_ledger::Migration),
            Box::new(m20261124_000002_feeds::Migration),
            Box::new(m20261125_000001_guards::Migration),
            Box::new(m20261125_000002_api_keys::Migration),
            Box::new(m20261126_000001_holds_refunds::Migration),
            Box::new(m20261127_000001_balance_history::Migration),
            Box::new(m20261127_000002_metadata::Migration),
            Box::new(m20261128_000001_payment_groups::Migration),
            Box::new(m20261128_000002_account_lifecycle::Migration),
            Box::new(m20261206_000001_one_round_trip::Migration),
            Box::new(m20261206_000002_entry_references_by_guard::Migration),
        ]
    }
}
