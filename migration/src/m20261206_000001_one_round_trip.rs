//! One round trip for a payment batch (PostgreSQL only).
//!
//! A batch whose accounts the instance already knows is decided in the server from the
//! account rows as it last wrote them, and sent as one statement that locks those rows
//! in id order, checks that each still has the version, hold sequence and change
//! sequence it was decided on, and writes everything, or nothing
//! (`ledger::service::one_trip`). `ledger_accounts_unchanged` is that check: it fails
//! the whole statement with SQLSTATE `LDG01` when a row moved, and the server then
//! runs the batch the long way (lock, decide, write). SQLite runs in process and has
//! nothing to gain, so it gets nothing.

use sea_orm_migration::prelude::*;

use crate::on_postgres;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000001_one_round_trip"
    }
}

/// The SQLSTATE of a one-statement batch whose accounts moved since they were read.
pub const ACCOUNTS_MOVED_SQLSTATE: &str = "LDG01";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // VOLATILE (the default), so the planner never folds a call away or runs it
        // early: it runs when the statement reaches it, after the rows are locked.
        on_postgres(
            manager,
            &format!(
                "CREATE FUNCTION ledger_accounts_unchanged(unchanged boolean) RETURNS boolean \
                 LANGUAGE plpgsql AS $$ BEGIN \
                   IF unchanged IS NOT TRUE THEN \
                     RAISE EXCEPTION 'an account of the batch moved since it was read' \
                       USING ERRCODE = '{ACCOUNTS_MOVED_SQLSTATE}'; \
                   END IF; \
                   RETURN true; \
                 END $$"
            ),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            "DROP FUNCTION IF EXISTS ledger_accounts_unchanged(boolean)",
        )
        .await
    }
}
