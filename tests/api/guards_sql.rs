//! `migration/postgres_guards.sql` is exactly what a freshly migrated PostgreSQL
//! database enforces: every function, trigger and CHECK constraint the migrations left,
//! as PostgreSQL prints them back. The migrations are history (each holds the SQL it
//! ran); this file is where a reader finds the guards as they stand, and a migration
//! that changes one without the file changing fails here.
//!
//! After a migration that changes a guard:
//! `LEDGER_WRITE_GUARDS_SQL=1 cargo test --test api guards_sql` rewrites the file.

use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use crate::helpers::TestDatabase;

const GUARDS_SQL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/migration/postgres_guards.sql");

const HEADER: &str = "\
-- The PostgreSQL guards of a freshly migrated ledger database, as PostgreSQL prints
-- them back: functions, then triggers, then CHECK constraints, each sorted by name.
-- Generated; a test (tests/api/guards_sql.rs) fails when the migrations and this file
-- disagree. After a migration that changes a guard, rewrite it with
--   LEDGER_WRITE_GUARDS_SQL=1 cargo test --test api guards_sql
-- docs/consistency.md maps each invariant to its guard here.
";

/// Everything the database enforces beyond column types, keys and indexes.
const DEFINITIONS: &str = "
SELECT definition FROM (
  SELECT 1 AS part, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')' AS name,
         pg_get_functiondef(p.oid) || ';' AS definition
  FROM pg_proc AS p JOIN pg_namespace AS n ON n.oid = p.pronamespace
  WHERE n.nspname = 'public'
  UNION ALL
  SELECT 2, c.relname || '.' || t.tgname, pg_get_triggerdef(t.oid, true) || ';'
  FROM pg_trigger AS t
  JOIN pg_class AS c ON c.oid = t.tgrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND NOT t.tgisinternal
  UNION ALL
  SELECT 3, c.relname || '.' || k.conname,
         'ALTER TABLE ' || c.relname || ' ADD CONSTRAINT ' || k.conname || ' '
           || pg_get_constraintdef(k.oid, true) || ';'
  FROM pg_constraint AS k
  JOIN pg_class AS c ON c.oid = k.conrelid
  JOIN pg_namespace AS n ON n.oid = c.relnamespace
  WHERE n.nspname = 'public' AND k.contype = 'c'
) AS guards
ORDER BY part, name";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_guards_sql_is_what_the_migrations_leave() {
    let Some(database) = TestDatabase::postgres().await else {
        return;
    };
    let connection = Database::connect(&database.url).await.unwrap();
    let rows = connection
        .query_all_raw(Statement::from_string(DbBackend::Postgres, DEFINITIONS))
        .await
        .unwrap();
    let definitions: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String>("", "definition").unwrap())
        .map(|definition| definition.trim_end().to_owned())
        .collect();
    connection.close().await.ok();
    let generated = format!("{HEADER}\n{}\n", definitions.join("\n\n"));
    if std::env::var_os("LEDGER_WRITE_GUARDS_SQL").is_some() {
        std::fs::write(GUARDS_SQL, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(GUARDS_SQL).unwrap_or_default();
    assert!(
        checked_in == generated,
        "migration/postgres_guards.sql differs from a freshly migrated database: rewrite it \
         with LEDGER_WRITE_GUARDS_SQL=1 cargo test --test api guards_sql and review the diff"
    );
}
