//! Metadata: the client's own key/value pairs on accounts and payments.
//!
//! - `accounts.metadata` and `payments.metadata` hold the object as the client gave it
//!   (JSON text, keys in the client's order), or NULL.
//! - `payment_metadata` holds each pair of each payment once more, keyed by
//!   `(client_id, key, value, payment_id)`: finding a client's payments by one pair is
//!   one range of that key, on both backends (SQLite has no inverted JSON index, and one
//!   portable table is simpler to reason about than two). Append-only, like payments.

use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261124_000001_create_ledger::append_only_trigger_sql;

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
        for statement in append_only_trigger_sql(manager.get_database_backend(), "payment_metadata")
        {
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
