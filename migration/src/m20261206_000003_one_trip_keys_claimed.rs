//! A one-statement batch reports a taken idempotency key instead of failing on it
//! (PostgreSQL only).
//!
//! The one-round-trip statement used to insert its keys plainly, so a key someone had
//! already used failed the whole statement with a unique violation: an ERROR in
//! PostgreSQL's log for what is an expected event (a client's retry). It now looks its
//! keys up first and writes nothing when one is taken, answering which; only a key
//! claimed by a concurrent statement between that look-up and the insert is left, and
//! for it `ledger_batch_keys_claimed` fails the statement with SQLSTATE `LDG02`, which
//! undoes the keys it did insert (`ledger::service::batch`).

use sea_orm_migration::prelude::*;

use crate::on_postgres;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000003_one_trip_keys_claimed"
    }
}

/// The SQLSTATE of a one-statement batch that lost a key to a concurrent statement.
pub const KEYS_RACED_SQLSTATE: &str = "LDG02";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            "CREATE FUNCTION ledger_batch_keys_claimed(claimed boolean) RETURNS boolean \
             LANGUAGE plpgsql AS $$ BEGIN \
               IF claimed IS NOT TRUE THEN \
                 RAISE EXCEPTION 'an idempotency key of the batch was claimed by a concurrent statement' \
                   USING ERRCODE = 'LDG02'; \
               END IF; \
               RETURN true; \
             END $$",
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            "DROP FUNCTION IF EXISTS ledger_batch_keys_claimed(boolean)",
        )
        .await
    }
}
