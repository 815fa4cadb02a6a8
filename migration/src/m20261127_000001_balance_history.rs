//! Balance history: an account's balance at any moment is the `balance_after_minor` of
//! its last entry at or before that moment, found with one index lookup.
//!
//! - `ix_ledger_entries_account_time` on `(account_id, created_at, account_version)`:
//!   "the last entry at or before t" and "the entries between two times, from a cursor"
//!   are each one range of it, however long the account's history.
//! - That only answers right if an account's entries never go back in time as their
//!   versions go up. `accounts.last_entry_at` is the time of the account's last entry,
//!   moved with its balance; the service stamps a posting with the later of its
//!   instance's clock and a microsecond after the `last_entry_at` of each account it
//!   moves (read with the row lock), so a lagging clock cannot put an entry at or before
//!   its predecessor, and every entry's own time names it. The database refuses an
//!   entry not later than the one before it on its account, on both backends (entries
//!   written before this migration may share a time; the audit holds every entry to
//!   "never earlier").

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261127_000001_balance_history"
    }
}

/// Every trigger this migration creates (on one backend or the other), and its table.
pub const HISTORY_GUARD_TRIGGERS: [(&str, &str); 1] =
    [("ledger_entries_time_forward", "ledger_entries")];

/// The time of an `accounts` row's last entry.
const LAST_ENTRY_AT: &str = "(SELECT latest.created_at FROM ledger_entries AS latest \
     WHERE latest.account_id = accounts.id AND latest.account_version = accounts.version)";

/// The time of the entry before `{entry}` on its account: one probe of the unique
/// `(account_id, account_version)` index.
fn previous_time(entry: &str) -> String {
    format!(
        "(SELECT previous.created_at FROM ledger_entries AS previous
          WHERE previous.account_id = {entry}.account_id
            AND previous.account_version = {entry}.account_version - 1)"
    )
}

fn postgres_statements() -> Vec<String> {
    vec![
        format!(
            "CREATE OR REPLACE FUNCTION ledger_guard_entry_time() RETURNS trigger AS $$
             DECLARE culprit uuid;
             BEGIN
               SELECT entry.id INTO culprit FROM new_entries AS entry
               WHERE entry.created_at <= {}
               LIMIT 1;
               IF FOUND THEN
                 RAISE EXCEPTION 'ledger guard: entry % is not later than the entry before it on its account', culprit
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NULL;
             END $$ LANGUAGE plpgsql",
            previous_time("entry")
        ),
        "CREATE TRIGGER ledger_entries_time_forward AFTER INSERT ON ledger_entries \
         REFERENCING NEW TABLE AS new_entries \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_entry_time()"
            .to_owned(),
    ]
}

fn sqlite_statements() -> Vec<String> {
    vec![format!(
        "CREATE TRIGGER ledger_entries_time_forward BEFORE INSERT ON ledger_entries \
         WHEN NEW.created_at <= {} \
         BEGIN SELECT RAISE(ABORT, 'ledger guard: an entry is not later than the entry before it on its account'); END",
        previous_time("NEW")
    )]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("accounts"))
                    .add_column(timestamp_with_time_zone_null(Alias::new("last_entry_at")))
                    .to_owned(),
            )
            .await?;
        connection
            .execute_unprepared(&format!(
                "UPDATE accounts SET last_entry_at = {} WHERE version > 0",
                LAST_ENTRY_AT
            ))
            .await?;
        connection
            .execute_unprepared(
                "CREATE INDEX ix_ledger_entries_account_time \
                 ON ledger_entries (account_id, created_at, account_version)",
            )
            .await?;
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Postgres => postgres_statements(),
            _ => sqlite_statements(),
        };
        for statement in statements {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        let statements: &[&str] = match manager.get_database_backend() {
            DatabaseBackend::Postgres => &[
                "DROP TRIGGER IF EXISTS ledger_entries_time_forward ON ledger_entries",
                "DROP FUNCTION IF EXISTS ledger_guard_entry_time()",
            ],
            _ => &["DROP TRIGGER IF EXISTS ledger_entries_time_forward"],
        };
        for statement in statements {
            connection.execute_unprepared(statement).await?;
        }
        connection
            .execute_unprepared("DROP INDEX IF EXISTS ix_ledger_entries_account_time")
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("accounts"))
                    .drop_column(Alias::new("last_entry_at"))
                    .to_owned(),
            )
            .await
    }
}
