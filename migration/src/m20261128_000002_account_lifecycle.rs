//! Account lifecycle: an account is ACTIVE, FROZEN or CLOSED, and its settings (status,
//! credit limit, external ref) change only through a recorded change.
//!
//! - `accounts.status` and `accounts.change_seq` (how many changes it has had).
//! - `account_changes`: one append-only row per change, numbered per account from 1,
//!   with the old and new status, credit limit and external ref, the key that made it
//!   and when.
//! - The guards migration's `accounts_identity_frozen` refused any change of the credit
//!   limit and external ref; it is replaced by `accounts_identity_kept` (the rest of the
//!   identity still never changes) and `accounts_settings_recorded`: settings move only
//!   to what the account's next change (`change_seq + 1`) records, from what it recorded
//!   as old, never out of CLOSED; and a CLOSED account holds nothing (no balance, no
//!   pending), whatever else changes.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000002_account_lifecycle"
    }
}

/// Every guard trigger this migration creates (on one backend or the other), and its
/// table.
pub const ACCOUNT_GUARD_TRIGGERS: [(&str, &str); 3] = [
    ("accounts_identity_kept", "accounts"),
    ("accounts_settings_recorded", "accounts"),
    ("accounts_closed_empty", "accounts"),
];

/// An account's identity now: what `accounts_identity_frozen` guarded, less the
/// settings a recorded change may move.
const IDENTITY_COLUMNS: [&str; 6] = [
    "id",
    "client_id",
    "currency",
    "balance_rule",
    "created_at",
    "feed_seq",
];

#[derive(DeriveIden)]
enum AccountChanges {
    Table,
    Id,
    ClientId,
    AccountId,
    ChangeSeq,
    Kind,
    IdempotencyKey,
    OldStatus,
    NewStatus,
    OldCreditLimitMinor,
    NewCreditLimitMinor,
    OldExternalRef,
    NewExternalRef,
    CreatedAt,
}

/// True when `{new}`'s settings differ from `{old}`'s; `differ` is the backend's
/// null-safe inequality.
fn settings_changed(old: &str, new: &str, differ: &str) -> String {
    ["status", "credit_limit_minor", "external_ref", "change_seq"]
        .iter()
        .map(|column| format!("{new}.{column} {differ} {old}.{column}"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// True when no recorded change justifies moving `{old}`'s settings to `{new}`'s.
fn unrecorded(old: &str, new: &str, same: &str) -> String {
    format!(
        "{old}.status = 'CLOSED' OR {new}.change_seq <> {old}.change_seq + 1 \
         OR NOT EXISTS (SELECT 1 FROM account_changes AS change \
           WHERE change.account_id = {new}.id AND change.change_seq = {new}.change_seq \
             AND change.old_status = {old}.status AND change.new_status = {new}.status \
             AND change.old_credit_limit_minor {same} {old}.credit_limit_minor \
             AND change.new_credit_limit_minor {same} {new}.credit_limit_minor \
             AND change.old_external_ref {same} {old}.external_ref \
             AND change.new_external_ref {same} {new}.external_ref)"
    )
}

const CLOSED_NOT_EMPTY: &str =
    "NEW.status = 'CLOSED' AND (NEW.balance_minor <> 0 OR NEW.pending_minor <> 0)";

fn postgres_statements() -> Vec<String> {
    let identity = |row: &str| {
        IDENTITY_COLUMNS
            .iter()
            .map(|column| format!("{row}.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        "DROP TRIGGER IF EXISTS accounts_identity_frozen ON accounts".to_owned(),
        format!(
            "CREATE TRIGGER accounts_identity_kept BEFORE UPDATE ON accounts FOR EACH ROW \
             WHEN (ROW({}) IS DISTINCT FROM ROW({})) \
             EXECUTE FUNCTION ledger_guard_refuse('an account''s identity never changes')",
            identity("OLD"),
            identity("NEW")
        ),
        // A trigger's WHEN cannot hold a subquery: the cheap test filters, the function
        // looks for the recorded change.
        format!(
            "CREATE OR REPLACE FUNCTION ledger_guard_account_settings() RETURNS trigger AS $$
             BEGIN
               IF {} THEN
                 RAISE EXCEPTION 'ledger guard: account %: settings change only as its next recorded change, never once CLOSED', NEW.id
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NEW;
             END $$ LANGUAGE plpgsql",
            unrecorded("OLD", "NEW", "IS NOT DISTINCT FROM")
        ),
        format!(
            "CREATE TRIGGER accounts_settings_recorded BEFORE UPDATE ON accounts FOR EACH ROW \
             WHEN ({}) EXECUTE FUNCTION ledger_guard_account_settings()",
            settings_changed("OLD", "NEW", "IS DISTINCT FROM")
        ),
        format!(
            "CREATE TRIGGER accounts_closed_empty BEFORE UPDATE ON accounts FOR EACH ROW \
             WHEN ({CLOSED_NOT_EMPTY}) \
             EXECUTE FUNCTION ledger_guard_refuse('a CLOSED account holds nothing')"
        ),
    ]
}

fn sqlite_statements() -> Vec<String> {
    let changed = IDENTITY_COLUMNS
        .iter()
        .map(|column| format!("NEW.{column} IS NOT OLD.{column}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    vec![
        "DROP TRIGGER IF EXISTS accounts_identity_frozen".to_owned(),
        format!(
            "CREATE TRIGGER accounts_identity_kept BEFORE UPDATE ON accounts WHEN {changed} \
             BEGIN SELECT RAISE(ABORT, 'ledger guard: UPDATE of accounts rejected: an account''s identity never changes'); END"
        ),
        format!(
            "CREATE TRIGGER accounts_settings_recorded BEFORE UPDATE ON accounts \
             WHEN ({}) AND ({}) \
             BEGIN SELECT RAISE(ABORT, 'ledger guard: UPDATE of accounts rejected: an account''s settings change only as its next recorded change, never once CLOSED'); END",
            settings_changed("OLD", "NEW", "IS NOT"),
            unrecorded("OLD", "NEW", "IS")
        ),
        format!(
            "CREATE TRIGGER accounts_closed_empty BEFORE UPDATE ON accounts \
             WHEN {CLOSED_NOT_EMPTY} \
             BEGIN SELECT RAISE(ABORT, 'ledger guard: UPDATE of accounts rejected: a CLOSED account holds nothing'); END"
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        for statement in [
            "ALTER TABLE accounts ADD COLUMN status VARCHAR(16) NOT NULL DEFAULT 'ACTIVE' \
             CHECK (status IN ('ACTIVE', 'FROZEN', 'CLOSED'))",
            "ALTER TABLE accounts ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0 \
             CHECK (change_seq >= 0)",
        ] {
            connection.execute_unprepared(statement).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(AccountChanges::Table)
                    .col(uuid(AccountChanges::Id).primary_key())
                    .col(uuid(AccountChanges::ClientId))
                    .col(uuid(AccountChanges::AccountId))
                    .col(big_integer(AccountChanges::ChangeSeq))
                    .col(string_len(AccountChanges::Kind, 16))
                    .col(string_len(AccountChanges::IdempotencyKey, 255))
                    .col(string_len(AccountChanges::OldStatus, 16))
                    .col(string_len(AccountChanges::NewStatus, 16))
                    .col(big_integer_null(AccountChanges::OldCreditLimitMinor))
                    .col(big_integer_null(AccountChanges::NewCreditLimitMinor))
                    .col(string_len_null(AccountChanges::OldExternalRef, 255))
                    .col(string_len_null(AccountChanges::NewExternalRef, 255))
                    .col(timestamp_with_time_zone(AccountChanges::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_account_changes_account")
                            .from(AccountChanges::Table, AccountChanges::AccountId)
                            .to(Alias::new("accounts"), Alias::new("id")),
                    )
                    .check(Expr::cust("change_seq > 0"))
                    .check(Expr::cust(
                        "kind IN ('UPDATE', 'FREEZE', 'UNFREEZE', 'CLOSE')",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_account_changes_account_seq")
                    .table(AccountChanges::Table)
                    .col(AccountChanges::AccountId)
                    .col(AccountChanges::ChangeSeq)
                    .unique()
                    .to_owned(),
            )
            .await?;
        let mut statements = append_only_statements(manager.get_database_backend());
        statements.extend(match manager.get_database_backend() {
            DatabaseBackend::Postgres => postgres_statements(),
            _ => sqlite_statements(),
        });
        for statement in statements {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "the account lifecycle cannot be migrated down; restore a backup instead".to_owned(),
        ))
    }
}

/// The statements that made `account_changes` append-only, as they ran (frozen: the create-ledger
/// migration's builder for them may change, this migration's SQL may not).
fn append_only_statements(backend: DatabaseBackend) -> Vec<String> {
    let statements: &[&str] = match backend {
        DatabaseBackend::Postgres => &[
            "CREATE OR REPLACE FUNCTION reject_append_only_change() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP \
             USING ERRCODE = 'restrict_violation'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER account_changes_append_only BEFORE UPDATE OR DELETE ON account_changes \
             FOR EACH ROW EXECUTE FUNCTION reject_append_only_change()",
            "CREATE TRIGGER account_changes_no_truncate BEFORE TRUNCATE ON account_changes \
             FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change()",
        ],
        _ => &[
            "CREATE TRIGGER account_changes_no_update BEFORE UPDATE ON account_changes \
             BEGIN SELECT RAISE(ABORT, 'account_changes is append-only: UPDATE rejected'); END",
            "CREATE TRIGGER account_changes_no_delete BEFORE DELETE ON account_changes \
             BEGIN SELECT RAISE(ABORT, 'account_changes is append-only: DELETE rejected'); END",
        ],
    };
    statements
        .iter()
        .map(|statement| (*statement).to_owned())
        .collect()
}
