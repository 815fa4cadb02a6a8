//! Atomic payment groups: payments that move all together or not at all, under one key.
//!
//! - `payment_groups` holds one row per group: its client, its key, how many payments it
//!   carries and its metadata. Append-only.
//! - A payment of a group names it (`group_id`) and its place in it (`group_index`, from
//!   0). Its `idempotency_key` is the group's, so the unique `(client_id,
//!   idempotency_key)` of payments now holds for payments outside a group only, and
//!   `(group_id, group_index)` is unique instead.
//! - The database refuses a group that is partly declined, on both backends. On
//!   PostgreSQL a statement trigger also refuses a group whose payments are not exactly
//!   its `payment_count` (they are written by one statement); SQLite checks rows one at a
//!   time and leaves the count to the audit.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261128_000001_payment_groups"
    }
}

/// Every guard trigger this migration creates (on one backend or the other), and its
/// table.
pub const GROUP_GUARD_TRIGGERS: [(&str, &str); 1] = [("payments_groups_whole", "payments")];

#[derive(DeriveIden)]
enum PaymentGroups {
    Table,
    Id,
    ClientId,
    IdempotencyKey,
    PaymentCount,
    Metadata,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    GroupId,
    GroupIndex,
}

fn postgres_statements() -> Vec<String> {
    vec![
        "CREATE OR REPLACE FUNCTION ledger_guard_groups() RETURNS trigger AS $$
         DECLARE culprit uuid;
         BEGIN
           SELECT named.group_id INTO culprit
           FROM (SELECT DISTINCT group_id FROM new_payments WHERE group_id IS NOT NULL) AS named
           LEFT JOIN payment_groups AS g ON g.id = named.group_id
           WHERE g.id IS NULL
             OR (g.payment_count <> (SELECT COUNT(*) FROM payments AS p WHERE p.group_id = g.id)
                  OR (SELECT COUNT(*) FILTER (WHERE p.status = 'DECLINED') FROM payments AS p
                      WHERE p.group_id = g.id) NOT IN (0, g.payment_count)
                  OR EXISTS (SELECT 1 FROM payments AS p WHERE p.group_id = g.id
                             AND (p.client_id <> g.client_id
                                  OR p.idempotency_key <> g.idempotency_key
                                  OR p.group_index NOT BETWEEN 0 AND g.payment_count - 1)))
           LIMIT 1;
           IF FOUND THEN
             RAISE EXCEPTION 'ledger guard: payment group % is not whole: all of its payments, all declined or none', culprit
               USING ERRCODE = 'integrity_constraint_violation';
           END IF;
           RETURN NULL;
         END $$ LANGUAGE plpgsql"
            .to_owned(),
        "CREATE TRIGGER payments_groups_whole AFTER INSERT ON payments \
         REFERENCING NEW TABLE AS new_payments \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_groups()"
            .to_owned(),
    ]
}

fn sqlite_statements() -> Vec<String> {
    vec![
        "CREATE TRIGGER payments_groups_whole BEFORE INSERT ON payments \
         WHEN NEW.group_id IS NOT NULL AND ( \
           NOT EXISTS (SELECT 1 FROM payment_groups AS g WHERE g.id = NEW.group_id \
                       AND g.client_id = NEW.client_id \
                       AND g.idempotency_key = NEW.idempotency_key \
                       AND NEW.group_index BETWEEN 0 AND g.payment_count - 1) \
           OR EXISTS (SELECT 1 FROM payments AS p WHERE p.group_id = NEW.group_id \
                      AND (p.status = 'DECLINED') <> (NEW.status = 'DECLINED'))) \
         BEGIN SELECT RAISE(ABORT, 'ledger guard: a payment group is not whole: all of its payments, all declined or none'); END"
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PaymentGroups::Table)
                    .col(uuid(PaymentGroups::Id).primary_key())
                    .col(uuid(PaymentGroups::ClientId))
                    .col(string_len(PaymentGroups::IdempotencyKey, 255))
                    .col(integer(PaymentGroups::PaymentCount))
                    .col(text_null(PaymentGroups::Metadata))
                    .col(timestamp_with_time_zone(PaymentGroups::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payment_groups_client")
                            .from(PaymentGroups::Table, PaymentGroups::ClientId)
                            .to(Alias::new("clients"), Alias::new("id")),
                    )
                    .check(Expr::cust("payment_count BETWEEN 1 AND 100"))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_payment_groups_client_idempotency_key")
                    .table(PaymentGroups::Table)
                    .col(PaymentGroups::ClientId)
                    .col(PaymentGroups::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // One column at a time: SQLite adds one per ALTER TABLE.
        for column in [
            uuid_null(Payments::GroupId),
            integer_null(Payments::GroupIndex),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Payments::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        let connection = manager.get_connection();
        let mut statements = vec![
            "DROP INDEX ux_payments_client_idempotency_key".to_owned(),
            // A new name: SQLite connections of the migrating pool may still know the
            // old index by its name within this migration.
            "CREATE UNIQUE INDEX ux_payments_client_ungrouped_key \
             ON payments (client_id, idempotency_key) WHERE group_id IS NULL"
                .to_owned(),
            "CREATE UNIQUE INDEX ux_payments_group_index ON payments (group_id, group_index) \
             WHERE group_id IS NOT NULL"
                .to_owned(),
        ];
        statements.extend(append_only_statements(manager.get_database_backend()));
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
            "payment groups cannot be migrated down; restore a backup instead".to_owned(),
        ))
    }
}

/// The statements that made `payment_groups` append-only, as they ran (frozen: the create-ledger
/// migration's builder for them may change, this migration's SQL may not).
fn append_only_statements(backend: DatabaseBackend) -> Vec<String> {
    let statements: &[&str] = match backend {
        DatabaseBackend::Postgres => &[
            "CREATE OR REPLACE FUNCTION reject_append_only_change() RETURNS trigger AS $$ \
             BEGIN RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP \
             USING ERRCODE = 'restrict_violation'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER payment_groups_append_only BEFORE UPDATE OR DELETE ON payment_groups \
             FOR EACH ROW EXECUTE FUNCTION reject_append_only_change()",
            "CREATE TRIGGER payment_groups_no_truncate BEFORE TRUNCATE ON payment_groups \
             FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change()",
        ],
        _ => &[
            "CREATE TRIGGER payment_groups_no_update BEFORE UPDATE ON payment_groups \
             BEGIN SELECT RAISE(ABORT, 'payment_groups is append-only: UPDATE rejected'); END",
            "CREATE TRIGGER payment_groups_no_delete BEFORE DELETE ON payment_groups \
             BEGIN SELECT RAISE(ABORT, 'payment_groups is append-only: DELETE rejected'); END",
        ],
    };
    statements
        .iter()
        .map(|statement| (*statement).to_owned())
        .collect()
}
