//! Feed positions: every account, payment and ledger entry gets a `feed_seq` such that
//! a client-wide list ordered by `(feed_seq, id)` never grows behind a cursor a poller
//! holds. Ids (UUIDv7) are taken before commit, so they cannot give that order.
//!
//! - PostgreSQL: `feed_seq` is the id of the inserting transaction (`xid8`, which never
//!   wraps), filled by the column default. Readers list only rows whose transaction is
//!   older than every transaction still running (`pg_snapshot_xmin`), so anything that
//!   commits later has a larger `feed_seq` than whatever a reader has seen.
//! - SQLite has one writer: the service assigns "largest so far + 1" under the write
//!   lock, which is commit order. Rows written before this migration get 0.
//!
//! Indexes that served the id-ordered lists are replaced by feed-ordered ones.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261124_000002_feeds"
    }
}

const FEED_TABLES: [&str; 3] = ["accounts", "payments", "ledger_entries"];

/// The id-ordered indexes the feeds replace: name, table, columns.
const DROPPED_INDEXES: [(&str, &str, &str); 4] = [
    ("ix_accounts_client_id", "accounts", "client_id, id"),
    ("ix_payments_client_id", "payments", "client_id, id"),
    (
        "ix_payments_from_account",
        "payments",
        "from_account_id, id",
    ),
    ("ix_payments_to_account", "payments", "to_account_id, id"),
];

const FEED_INDEXES: [&str; 7] = [
    "CREATE INDEX ix_accounts_client_feed ON accounts (client_id, feed_seq, id)",
    "CREATE INDEX ix_payments_client_feed ON payments (client_id, feed_seq, id)",
    "CREATE INDEX ix_payments_from_feed ON payments (from_account_id, feed_seq, id)",
    "CREATE INDEX ix_payments_to_feed ON payments (to_account_id, feed_seq, id)",
    // Declines are rare, so a partial index keeps `payments(status: DECLINED)` a short
    // range scan for a fraction of the write cost of a full one.
    "CREATE INDEX ix_payments_client_declined_feed ON payments (client_id, feed_seq, id) \
     WHERE status = 'DECLINED'",
    "CREATE INDEX ix_payments_client_created ON payments (client_id, created_at)",
    "CREATE INDEX ix_ledger_entries_client_feed ON ledger_entries (client_id, feed_seq, id)",
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        let default = match manager.get_database_backend() {
            DatabaseBackend::Postgres => "(pg_current_xact_id()::text::bigint)",
            _ => "0",
        };
        for table in FEED_TABLES {
            connection
                .execute_unprepared(&format!(
                    "ALTER TABLE {table} ADD COLUMN feed_seq BIGINT NOT NULL DEFAULT {default}"
                ))
                .await?;
        }
        for (name, _, _) in DROPPED_INDEXES {
            connection
                .execute_unprepared(&format!("DROP INDEX {name}"))
                .await?;
        }
        for statement in FEED_INDEXES {
            connection.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        for statement in FEED_INDEXES {
            let name = statement
                .split_whitespace()
                .nth(2)
                .ok_or_else(|| DbErr::Custom("an index statement without a name".to_owned()))?;
            connection
                .execute_unprepared(&format!("DROP INDEX {name}"))
                .await?;
        }
        for (name, table, columns) in DROPPED_INDEXES {
            connection
                .execute_unprepared(&format!("CREATE INDEX {name} ON {table} ({columns})"))
                .await?;
        }
        for table in FEED_TABLES {
            connection
                .execute_unprepared(&format!("ALTER TABLE {table} DROP COLUMN feed_seq"))
                .await?;
        }
        Ok(())
    }
}
