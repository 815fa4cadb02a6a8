//! The database guards accounts as it guards entries: whatever SQL reaches it, from the
//! service, a script or an operator's psql session, an account keeps its identity and
//! its balance and version move only together with the ledger entries that justify
//! them, and every entry is one half of a posted payment.
//!
//! - **Identity**: an account's id, owner, currency, balance rule, credit limit,
//!   externalRef, creation time and feed position never change (there is no change path
//!   for any of them yet; one that comes must open its own, narrow door here), and
//!   accounts are never deleted.
//! - **Moves**: when an UPDATE changes `balance_minor` or `version` from (b0, v0) to
//!   (b1, v1), the account's entries with versions v0+1 ..= v1 must all exist, each
//!   `balance_after_minor` must be b0 plus the signed amounts up to it, and the last must
//!   be b1.
//! - **Entries**: an entry's account must have moved over it (no entry ahead of its
//!   account), in the entry's currency and client; its payment is POSTED and has
//!   exactly two entries, a DEBIT of the payment's amount on its source and a CREDIT on
//!   its destination. A POSTED payment has its two entries.
//!
//! PostgreSQL checks moves, entries and payments once per statement, over the rows the
//! statement changed (transition tables), when the statement ends: the service writes a
//! batch in one statement, so one check per table covers the whole batch. A statement
//! that moves an account and a later one that adds its entries are refused: rows that
//! belong together are written together. SQLite has only row triggers and no deferred
//! ones: it checks identity, moves (the service inserts entries before it moves
//! accounts) and each moved-over entry's payment; it cannot refuse an entry that no
//! account move follows, nor a POSTED payment without entries. `payments-ledger verify`
//! finds both.
//!
//! The triggers bind every role except one that may disable them: the table owner or a
//! superuser. docs/operations.md ("Database roles") says which role the server runs as.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261125_000001_guards"
    }
}

/// Every trigger this migration creates (on one backend or the other), and its table.
pub const GUARD_TRIGGERS: [(&str, &str); 7] = [
    ("accounts_identity_frozen", "accounts"),
    ("accounts_never_deleted", "accounts"),
    ("accounts_never_truncated", "accounts"),
    ("accounts_move_with_entries", "accounts"),
    ("ledger_entries_double_entry", "ledger_entries"),
    ("ledger_entries_not_behind", "ledger_entries"),
    ("payments_posted_with_entries", "payments"),
];

/// The columns that make up an account's identity.
const IDENTITY_COLUMNS: [&str; 8] = [
    "id",
    "client_id",
    "currency",
    "balance_rule",
    "credit_limit_minor",
    "external_ref",
    "created_at",
    "feed_seq",
];

/// The SQL of one account move, as expressions over the rows before and after it.
struct Move<'a> {
    id: &'a str,
    old_balance: &'a str,
    old_version: &'a str,
    new_balance: &'a str,
    new_version: &'a str,
}

impl Move<'_> {
    /// True when this move's entries do not justify it: entries v0+1 ..= v1 missing,
    /// a `balance_after_minor` off the running sum, or the last one not the new balance.
    /// One range scan of `(account_id, account_version)`.
    fn unjustified(&self) -> String {
        let Move {
            id,
            old_balance,
            old_version,
            new_balance,
            new_version,
        } = self;
        format!(
            "NOT COALESCE((
               SELECT COUNT(*) = {new_version} - {old_version}
                      AND SUM(CASE WHEN chain.balance_after_minor = {old_balance} + chain.running
                                   THEN 0 ELSE 1 END) = 0
                      AND MAX(chain.balance_after_minor)
                            FILTER (WHERE chain.account_version = {new_version}) = {new_balance}
               FROM (SELECT account_version, balance_after_minor,
                            SUM(CASE direction WHEN 'CREDIT' THEN amount_minor
                                               ELSE -amount_minor END)
                              OVER (ORDER BY account_version) AS running
                     FROM ledger_entries
                     WHERE account_id = {id} AND account_version > {old_version}
                       AND account_version <= {new_version}) AS chain), false)"
        )
    }
}

/// True when `{payment}` (an expression naming a payment id) is not a POSTED payment
/// with exactly two entries: a DEBIT of its amount on its source and a CREDIT on its
/// destination, in its currency and client.
///
/// Written as scalar subqueries on purpose: PostgreSQL runs those once per row through
/// the payments and `payment_id` indexes, where an `EXISTS` could be planned as an
/// anti-join over whole tables (measured: a batch then cost time in proportion to the
/// ledger's size).
fn not_double_entry(payment: &str) -> String {
    format!(
        "NOT COALESCE((
           SELECT paid.status = 'POSTED'
                  AND (SELECT COUNT(*) = 2
                              AND COUNT(*) FILTER (
                                    WHERE half.direction = 'DEBIT'
                                      AND half.account_id = paid.from_account_id) = 1
                              AND COUNT(*) FILTER (
                                    WHERE half.direction = 'CREDIT'
                                      AND half.account_id = paid.to_account_id) = 1
                              AND COUNT(*) FILTER (
                                    WHERE half.amount_minor = paid.amount_minor
                                      AND half.currency = paid.currency
                                      AND half.client_id = paid.client_id) = 2
                       FROM ledger_entries AS half
                       WHERE half.payment_id = paid.id)
           FROM payments AS paid
           WHERE paid.id = {payment}), false)"
    )
}

/// The function behind `ledger_entries_double_entry`: every new entry sits on an account
/// that moved over it, and `not_double_entry` (SQL naming `touched.payment_id`) is false
/// for each payment the statement added entries to.
fn entries_guard(not_double_entry: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION ledger_guard_entries() RETURNS trigger AS $$
         DECLARE lonely uuid;
         BEGIN
           SELECT entry.id INTO lonely
           FROM new_entries AS entry
           WHERE NOT COALESCE((
             SELECT account.version >= entry.account_version
                    AND account.currency = entry.currency
                    AND account.client_id = entry.client_id
             FROM accounts AS account
             WHERE account.id = entry.account_id), false)
           LIMIT 1;
           IF FOUND THEN
             RAISE EXCEPTION 'ledger guard: entry % is not on an account that moved over it', lonely
               USING ERRCODE = 'integrity_constraint_violation';
           END IF;
           SELECT payment_id INTO lonely
           FROM (SELECT DISTINCT payment_id FROM new_entries) AS touched
           WHERE {}
           LIMIT 1;
           IF FOUND THEN
             RAISE EXCEPTION 'ledger guard: payment % is not one POSTED payment with its two entries', lonely
               USING ERRCODE = 'integrity_constraint_violation';
           END IF;
           RETURN NULL;
         END $$ LANGUAGE plpgsql",
    not_double_entry
)
}

fn postgres_statements() -> Vec<String> {
    let identity = |row: &str| {
        IDENTITY_COLUMNS
            .iter()
            .map(|column| format!("{row}.{column}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        "CREATE OR REPLACE FUNCTION ledger_guard_refuse() RETURNS trigger AS $$ \
         BEGIN RAISE EXCEPTION 'ledger guard: % of % rejected: %', TG_OP, TG_TABLE_NAME, \
         TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation'; END $$ LANGUAGE plpgsql"
            .to_owned(),
        format!(
            "CREATE TRIGGER accounts_identity_frozen BEFORE UPDATE ON accounts FOR EACH ROW \
             WHEN (ROW({}) IS DISTINCT FROM ROW({})) \
             EXECUTE FUNCTION ledger_guard_refuse('an account''s identity never changes')",
            identity("OLD"),
            identity("NEW")
        ),
        "CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts FOR EACH ROW \
         EXECUTE FUNCTION ledger_guard_refuse('accounts are never deleted')"
            .to_owned(),
        "CREATE TRIGGER accounts_never_truncated BEFORE TRUNCATE ON accounts \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_refuse('accounts are never deleted')"
            .to_owned(),
        format!(
            "CREATE OR REPLACE FUNCTION ledger_guard_account_moves() RETURNS trigger AS $$
             DECLARE unjustified uuid;
             BEGIN
               SELECT new_rows.id INTO unjustified
               FROM old_rows JOIN new_rows ON new_rows.id = old_rows.id
               WHERE (new_rows.balance_minor, new_rows.version)
                     IS DISTINCT FROM (old_rows.balance_minor, old_rows.version)
                 AND {}
               LIMIT 1;
               IF FOUND THEN
                 RAISE EXCEPTION 'ledger guard: account % moved without the ledger entries that justify it', unjustified
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NULL;
             END $$ LANGUAGE plpgsql",
            Move {
                id: "new_rows.id",
                old_balance: "old_rows.balance_minor",
                old_version: "old_rows.version",
                new_balance: "new_rows.balance_minor",
                new_version: "new_rows.version",
            }
            .unjustified()
        ),
        "CREATE TRIGGER accounts_move_with_entries AFTER UPDATE ON accounts \
         REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_account_moves()"
            .to_owned(),
        entries_guard(&not_double_entry("touched.payment_id")),
        "CREATE TRIGGER ledger_entries_double_entry AFTER INSERT ON ledger_entries \
         REFERENCING NEW TABLE AS new_entries \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_entries()"
            .to_owned(),
        "CREATE OR REPLACE FUNCTION ledger_guard_payments() RETURNS trigger AS $$
             DECLARE lonely uuid;
             BEGIN
               -- Their shape is checked by the entries' trigger, which sees every
               -- payment its statement added entries to.
               SELECT id INTO lonely FROM new_payments
               WHERE status = 'POSTED'
                 AND (SELECT COUNT(*) FROM ledger_entries WHERE payment_id = new_payments.id) = 0
               LIMIT 1;
               IF FOUND THEN
                 RAISE EXCEPTION 'ledger guard: payment % is POSTED without its two entries', lonely
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NULL;
             END $$ LANGUAGE plpgsql"
            .to_owned(),
        "CREATE TRIGGER payments_posted_with_entries AFTER INSERT ON payments \
         REFERENCING NEW TABLE AS new_payments \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_payments()"
            .to_owned(),
    ]
}

fn sqlite_statements() -> Vec<String> {
    let changed = IDENTITY_COLUMNS
        .iter()
        .map(|column| format!("NEW.{column} IS NOT OLD.{column}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let unjustified = Move {
        id: "NEW.id",
        old_balance: "OLD.balance_minor",
        old_version: "OLD.version",
        new_balance: "NEW.balance_minor",
        new_version: "NEW.version",
    }
    .unjustified();
    vec![
        format!(
            "CREATE TRIGGER accounts_identity_frozen BEFORE UPDATE ON accounts \
             WHEN {changed} \
             BEGIN SELECT RAISE(ABORT, 'ledger guard: UPDATE of accounts rejected: an account''s identity never changes'); END"
        ),
        "CREATE TRIGGER accounts_never_deleted BEFORE DELETE ON accounts \
         BEGIN SELECT RAISE(ABORT, 'ledger guard: DELETE of accounts rejected: accounts are never deleted'); END"
            .to_owned(),
        format!(
            "CREATE TRIGGER accounts_move_with_entries AFTER UPDATE ON accounts \
             WHEN NEW.balance_minor IS NOT OLD.balance_minor OR NEW.version IS NOT OLD.version \
             BEGIN SELECT RAISE(ABORT, 'ledger guard: an account moved without the ledger entries that justify it') \
             WHERE {unjustified} \
                OR EXISTS (SELECT 1 FROM ledger_entries AS entry \
                           WHERE entry.account_id = NEW.id \
                             AND entry.account_version > OLD.version \
                             AND entry.account_version <= NEW.version \
                             AND (entry.currency <> NEW.currency OR entry.client_id <> NEW.client_id \
                                  OR {})); END",
            not_double_entry("entry.payment_id")
        ),
        "CREATE TRIGGER ledger_entries_not_behind BEFORE INSERT ON ledger_entries \
         WHEN NEW.account_version <= (SELECT version FROM accounts WHERE id = NEW.account_id) \
         BEGIN SELECT RAISE(ABORT, 'ledger guard: an entry was added behind its account''s version'); END"
            .to_owned(),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let statements = match manager.get_database_backend() {
            DatabaseBackend::Postgres => postgres_statements(),
            _ => sqlite_statements(),
        };
        let connection = manager.get_connection();
        for statement in statements {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let connection = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                for (trigger, table) in GUARD_TRIGGERS {
                    connection
                        .execute_unprepared(&format!("DROP TRIGGER IF EXISTS {trigger} ON {table}"))
                        .await?;
                }
                for function in [
                    "ledger_guard_refuse",
                    "ledger_guard_account_moves",
                    "ledger_guard_entries",
                    "ledger_guard_payments",
                ] {
                    connection
                        .execute_unprepared(&format!("DROP FUNCTION IF EXISTS {function}()"))
                        .await?;
                }
            }
            _ => {
                for (trigger, _) in GUARD_TRIGGERS {
                    connection
                        .execute_unprepared(&format!("DROP TRIGGER IF EXISTS {trigger}"))
                        .await?;
                }
            }
        }
        Ok(())
    }
}
