//! Metadata: the client's own key/value pairs on accounts and payments.
//!
//! - `accounts.metadata` and `payments.metadata` hold the object as the client gave it
//!   (JSON text, keys in the client's order), or NULL.
//! - `payment_metadata` holds each pair of each payment once more, keyed by
//!   `(client_id, key, value, payment_id)`: finding a client's payments by one pair is
//!   one range of that key, on both backends (SQLite has no inverted JSON index, and one
//!   portable table is simpler to reason about than two). Append-only, like payments.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261127_000002_metadata"
    }
}

#[derive(DeriveIden)]
enum PaymentMetadata {
    Table,
    ClientId,
    Key,
    Value,
    PaymentId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in ["accounts", "payments"] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Alias::new(table))
                        .add_column(text_null(Alias::new("metadata")))
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(PaymentMetadata::Table)
                    .col(uuid(PaymentMetadata::ClientId))
                    .col(string_len(PaymentMetadata::Key, 100))
                    .col(string_len(PaymentMetadata::Value, 500))
                    .col(uuid(PaymentMetadata::PaymentId))
                    .primary_key(
                        Index::create()
                            .col(PaymentMetadata::ClientId)
                            .col(PaymentMetadata::Key)
                            .col(PaymentMetadata::Value)
                            .col(PaymentMetadata::PaymentId),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payment_metadata_payment")
                            .from(PaymentMetadata::Table, PaymentMetadata::PaymentId)
                            .to(Alias::new("payments"), Alias::new("id")),
                    )
                    .to_owned(),
            )
            .await?;
        let connection = manager.get_connection();
        for statement in append_only_statements(manager.get_database_backend()) {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        Err(DbErr::Migration(
            "metadata cannot be migrated down; restore a backup instead".to_owned(),
        ))
    }
}

/// The statements that made `payment_metadata` append-only, as they ran (frozen: the create-ledger
/// migration's builder for them may change, this migration's SQL may not).
fn append_only_statements(backend: DatabaseBackend) -> Vec<String> {
    let statements: &[&str] = match backend {
        DatabaseBackend::Postgres => &[
            "CREATE OR REPLACE FUNCTION reject_append_only_change() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP \
             USING ERRCODE = 'restrict_violation'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER payment_metadata_append_only BEFORE UPDATE OR DELETE ON payment_metadata \
             FOR EACH ROW EXECUTE FUNCTION reject_append_only_change()",
            "CREATE TRIGGER payment_metadata_no_truncate BEFORE TRUNCATE ON payment_metadata \
             FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change()",
        ],
        _ => &[
            "CREATE TRIGGER payment_metadata_no_update BEFORE UPDATE ON payment_metadata \
             BEGIN SELECT RAISE(ABORT, 'payment_metadata is append-only: UPDATE rejected'); END",
            "CREATE TRIGGER payment_metadata_no_delete BEFORE DELETE ON payment_metadata \
             BEGIN SELECT RAISE(ABORT, 'payment_metadata is append-only: DELETE rejected'); END",
        ],
    };
    statements
        .iter()
        .map(|statement| (*statement).to_owned())
        .collect()
}
