//! A ledger entry's account and payment are checked once per statement, not once per
//! row (PostgreSQL only).
//!
//! `ledger_entries_double_entry` (the guards migration) already refuses, per statement,
//! any new entry whose account row is missing (or has another currency, another client,
//! or a version behind the entry) and any entry whose payment row is missing (or did
//! not post exactly its two entries). The foreign keys `fk_ledger_entries_account` and
//! `fk_ledger_entries_payment` checked the first half of that again, one `SELECT … FOR
//! KEY SHARE` per entry: two per entry, four per payment, 15 % of PostgreSQL's time in a
//! batch of payments (docs/benchmarks.md, issue 13). Their other half, refusing to
//! delete a referenced row, is the append-only triggers' (payments) and
//! `accounts_never_deleted`'s (accounts): neither row can ever go. So they go, and
//! `payments-ledger verify` checks the same fact for a database whose guards were
//! turned off. SQLite keeps both: its row-by-row guards do not check existence.

use sea_orm_migration::prelude::*;

use crate::on_postgres;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261206_000002_entry_references_by_guard"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            "ALTER TABLE ledger_entries DROP CONSTRAINT fk_ledger_entries_account, \
             DROP CONSTRAINT fk_ledger_entries_payment",
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(
            manager,
            "ALTER TABLE ledger_entries \
             ADD CONSTRAINT fk_ledger_entries_account FOREIGN KEY (account_id) REFERENCES accounts (id), \
             ADD CONSTRAINT fk_ledger_entries_payment FOREIGN KEY (payment_id) REFERENCES payments (id)",
        )
        .await
    }
}
