//! Several API keys per client, each revocable: `api_keys` holds every key's SHA-256,
//! and authentication reads only it. Each client's existing key moves in with the
//! client's id as its key id; `clients.api_key_hash` stays as the key a client was
//! created with (SQLite cannot drop a UNIQUE column) and is no longer read.
//!
//! A key row is final but for one change: `revoked_at` goes from NULL to a time, once.
//! A trigger refuses every other UPDATE, and DELETE.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000002_api_keys"
    }
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
    ClientId,
    KeyHash,
    CreatedAt,
    RevokedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ApiKeys::Table)
                    .col(uuid(ApiKeys::Id).primary_key())
                    .col(uuid(ApiKeys::ClientId))
                    .col(string_len_uniq(ApiKeys::KeyHash, 64))
                    .col(timestamp_with_time_zone(ApiKeys::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKeys::RevokedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_api_keys_client")
                            .from(ApiKeys::Table, ApiKeys::ClientId)
                            .to(Alias::new("clients"), Alias::new("id")),
                    )
                    .to_owned(),
            )
            .await?;
        let connection = manager.get_connection();
        connection
            .execute_unprepared(
                "INSERT INTO api_keys (id, client_id, key_hash, created_at) \
                 SELECT id, id, api_key_hash, created_at FROM clients",
            )
            .await?;
        let changed = "NEW.id IS DISTINCT FROM OLD.id OR NEW.client_id IS DISTINCT FROM OLD.client_id \
                       OR NEW.key_hash IS DISTINCT FROM OLD.key_hash \
                       OR NEW.created_at IS DISTINCT FROM OLD.created_at \
                       OR OLD.revoked_at IS NOT NULL";
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Postgres => vec![
                format!(
                    "CREATE TRIGGER api_keys_only_revoked BEFORE UPDATE ON api_keys FOR EACH ROW \
                     WHEN ({changed}) \
                     EXECUTE FUNCTION ledger_guard_refuse('a key only ever gets revoked, once')"
                ),
                "CREATE TRIGGER api_keys_never_deleted BEFORE DELETE ON api_keys FOR EACH ROW \
                 EXECUTE FUNCTION ledger_guard_refuse('keys are revoked, never deleted')"
                    .to_owned(),
            ],
            _ => vec![
                format!(
                    "CREATE TRIGGER api_keys_only_revoked BEFORE UPDATE ON api_keys \
                     WHEN {} \
                     BEGIN SELECT RAISE(ABORT, 'ledger guard: UPDATE of api_keys rejected: a key only ever gets revoked, once'); END",
                    changed.replace("IS DISTINCT FROM", "IS NOT")
                ),
                "CREATE TRIGGER api_keys_never_deleted BEFORE DELETE ON api_keys \
                 BEGIN SELECT RAISE(ABORT, 'ledger guard: DELETE of api_keys rejected: keys are revoked, never deleted'); END"
                    .to_owned(),
            ],
        };
        for statement in statements {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ApiKeys::Table).to_owned())
            .await
    }
}
