//! The ledger's tables, constraints and append-only triggers.
//!
//! Every rule the database can enforce itself is enforced here too, so a bug in the
//! service layer (or a hand-written SQL statement) cannot break an invariant silently:
//! balance rules are CHECK constraints, `(account_id, account_version)` is unique, and
//! ledger entries and payments reject UPDATE and DELETE.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000001_create_ledger"
    }
}

#[derive(DeriveIden)]
enum Clients {
    Table,
    Id,
    Name,
    ApiKeyHash,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    ClientId,
    Currency,
    BalanceRule,
    CreditLimitMinor,
    ExternalRef,
    BalanceMinor,
    Version,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    ClientId,
    IdempotencyKey,
    FromAccountId,
    ToAccountId,
    AmountMinor,
    Currency,
    Status,
    DeclineReason,
    Description,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LedgerEntries {
    Table,
    Id,
    ClientId,
    AccountId,
    PaymentId,
    Currency,
    Direction,
    AmountMinor,
    BalanceAfterMinor,
    AccountVersion,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    ClientId,
    IdempotencyKey,
    Operation,
    RequestFingerprint,
    ResourceId,
    CreatedAt,
}

/// Tables whose rows are final once inserted.
const APPEND_ONLY_TABLES: [&str; 3] = ["ledger_entries", "payments", "idempotency_keys"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Clients::Table)
                    .col(uuid(Clients::Id).primary_key())
                    .col(string_len(Clients::Name, 200))
                    .col(string_len_uniq(Clients::ApiKeyHash, 64))
                    .col(timestamp_with_time_zone(Clients::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .col(uuid(Accounts::Id).primary_key())
                    .col(uuid(Accounts::ClientId))
                    .col(string_len(Accounts::Currency, 3))
                    .col(string_len(Accounts::BalanceRule, 16))
                    .col(big_integer_null(Accounts::CreditLimitMinor))
                    .col(string_len_null(Accounts::ExternalRef, 255))
                    .col(big_integer(Accounts::BalanceMinor).default(0))
                    .col(big_integer(Accounts::Version).default(0))
                    .col(timestamp_with_time_zone(Accounts::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_accounts_client")
                            .from(Accounts::Table, Accounts::ClientId)
                            .to(Clients::Table, Clients::Id),
                    )
                    .check(Expr::cust(
                        "balance_rule IN ('NON_NEGATIVE', 'CREDIT_LIMIT', 'UNBOUNDED')",
                    ))
                    .check(Expr::cust(
                        "(balance_rule = 'CREDIT_LIMIT' AND credit_limit_minor IS NOT NULL AND credit_limit_minor >= 0) \
                         OR (balance_rule <> 'CREDIT_LIMIT' AND credit_limit_minor IS NULL)",
                    ))
                    .check(Expr::cust(
                        "balance_rule <> 'NON_NEGATIVE' OR balance_minor >= 0",
                    ))
                    .check(Expr::cust(
                        "balance_rule <> 'CREDIT_LIMIT' OR balance_minor >= -credit_limit_minor",
                    ))
                    .check(Expr::cust("version >= 0"))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "ux_accounts_client_external_ref",
            Accounts::Table,
            [Accounts::ClientId, Accounts::ExternalRef],
            Uniqueness::Unique,
        )
        .await?;
        create_index(
            manager,
            "ix_accounts_client_id",
            Accounts::Table,
            [Accounts::ClientId, Accounts::Id],
            Uniqueness::NotUnique,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Payments::Table)
                    .col(uuid(Payments::Id).primary_key())
                    .col(uuid(Payments::ClientId))
                    .col(string_len(Payments::IdempotencyKey, 255))
                    .col(uuid(Payments::FromAccountId))
                    .col(uuid(Payments::ToAccountId))
                    .col(big_integer(Payments::AmountMinor))
                    .col(string_len(Payments::Currency, 3))
                    .col(string_len(Payments::Status, 16))
                    .col(string_len_null(Payments::DeclineReason, 64))
                    .col(text_null(Payments::Description))
                    .col(timestamp_with_time_zone(Payments::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payments_client")
                            .from(Payments::Table, Payments::ClientId)
                            .to(Clients::Table, Clients::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payments_from_account")
                            .from(Payments::Table, Payments::FromAccountId)
                            .to(Accounts::Table, Accounts::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payments_to_account")
                            .from(Payments::Table, Payments::ToAccountId)
                            .to(Accounts::Table, Accounts::Id),
                    )
                    .check(Expr::cust("amount_minor > 0"))
                    .check(Expr::cust("from_account_id <> to_account_id"))
                    .check(Expr::cust(
                        "(status = 'POSTED' AND decline_reason IS NULL) \
                         OR (status = 'DECLINED' AND decline_reason IS NOT NULL)",
                    ))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "ux_payments_client_idempotency_key",
            Payments::Table,
            [Payments::ClientId, Payments::IdempotencyKey],
            Uniqueness::Unique,
        )
        .await?;
        create_index(
            manager,
            "ix_payments_client_id",
            Payments::Table,
            [Payments::ClientId, Payments::Id],
            Uniqueness::NotUnique,
        )
        .await?;
        create_index(
            manager,
            "ix_payments_from_account",
            Payments::Table,
            [Payments::FromAccountId, Payments::Id],
            Uniqueness::NotUnique,
        )
        .await?;
        create_index(
            manager,
            "ix_payments_to_account",
            Payments::Table,
            [Payments::ToAccountId, Payments::Id],
            Uniqueness::NotUnique,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(LedgerEntries::Table)
                    .col(uuid(LedgerEntries::Id).primary_key())
                    .col(uuid(LedgerEntries::ClientId))
                    .col(uuid(LedgerEntries::AccountId))
                    .col(uuid(LedgerEntries::PaymentId))
                    .col(string_len(LedgerEntries::Currency, 3))
                    .col(string_len(LedgerEntries::Direction, 6))
                    .col(big_integer(LedgerEntries::AmountMinor))
                    .col(big_integer(LedgerEntries::BalanceAfterMinor))
                    .col(big_integer(LedgerEntries::AccountVersion))
                    .col(timestamp_with_time_zone(LedgerEntries::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_ledger_entries_account")
                            .from(LedgerEntries::Table, LedgerEntries::AccountId)
                            .to(Accounts::Table, Accounts::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_ledger_entries_payment")
                            .from(LedgerEntries::Table, LedgerEntries::PaymentId)
                            .to(Payments::Table, Payments::Id),
                    )
                    .check(Expr::cust("direction IN ('DEBIT', 'CREDIT')"))
                    .check(Expr::cust("amount_minor > 0"))
                    .check(Expr::cust("account_version > 0"))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "ux_ledger_entries_account_version",
            LedgerEntries::Table,
            [LedgerEntries::AccountId, LedgerEntries::AccountVersion],
            Uniqueness::Unique,
        )
        .await?;
        create_index(
            manager,
            "ix_ledger_entries_payment",
            LedgerEntries::Table,
            [LedgerEntries::PaymentId],
            Uniqueness::NotUnique,
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .col(uuid(IdempotencyKeys::ClientId))
                    .col(string_len(IdempotencyKeys::IdempotencyKey, 255))
                    .col(string_len(IdempotencyKeys::Operation, 32))
                    .col(string_len(IdempotencyKeys::RequestFingerprint, 64))
                    .col(uuid(IdempotencyKeys::ResourceId))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::ClientId)
                            .col(IdempotencyKeys::IdempotencyKey),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_idempotency_keys_client")
                            .from(IdempotencyKeys::Table, IdempotencyKeys::ClientId)
                            .to(Clients::Table, Clients::Id),
                    )
                    .to_owned(),
            )
            .await?;

        let connection = manager.get_connection();
        for table in APPEND_ONLY_TABLES {
            for statement in append_only_trigger_sql(manager.get_database_backend(), table) {
                connection.execute_unprepared(&statement).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let connection = manager.get_connection();
        if backend == DatabaseBackend::Postgres {
            connection
                .execute_unprepared("DROP FUNCTION IF EXISTS reject_append_only_change() CASCADE")
                .await?;
        }
        for table in [
            "idempotency_keys",
            "ledger_entries",
            "payments",
            "accounts",
            "clients",
        ] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// The statements that make `table` append-only on `backend`.
fn append_only_trigger_sql(backend: DatabaseBackend, table: &str) -> Vec<String> {
    match backend {
        DatabaseBackend::Postgres => vec![
            "CREATE OR REPLACE FUNCTION reject_append_only_change() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP \
             USING ERRCODE = 'restrict_violation'; END $$ LANGUAGE plpgsql"
                .to_owned(),
            format!(
                "CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} \
                 FOR EACH ROW EXECUTE FUNCTION reject_append_only_change()"
            ),
            format!(
                "CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} \
                 FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change()"
            ),
        ],
        _ => ["UPDATE", "DELETE"]
            .into_iter()
            .map(|operation| {
                format!(
                    "CREATE TRIGGER {table}_no_{op_lower} BEFORE {operation} ON {table} \
                     BEGIN SELECT RAISE(ABORT, '{table} is append-only: {operation} rejected'); END",
                    op_lower = operation.to_lowercase()
                )
            })
            .collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Uniqueness {
    Unique,
    NotUnique,
}

async fn create_index<T, C, const N: usize>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: [C; N],
    uniqueness: Uniqueness,
) -> Result<(), DbErr>
where
    T: IntoIden + 'static,
    C: IntoIden + 'static,
{
    let mut index = Index::create();
    index.name(name).table(table);
    if uniqueness == Uniqueness::Unique {
        index.unique();
    }
    for column in columns {
        index.col(column);
    }
    manager.create_index(index.to_owned()).await
}
