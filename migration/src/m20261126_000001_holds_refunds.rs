//! Holds (authorize, then capture or void, with expiry) and refunds.
//!
//! - `payments` may be stored `PENDING`: a hold. Its row never changes, like every
//!   payment's; what happens to it later is a row of its own in `payment_settlements`
//!   (CAPTURE with the captured amount, or VOID), at most one per hold (a unique index),
//!   append-only. A hold with no settlement whose `hold_expires_at` has passed is
//!   expired: time alone decides that, so no row is needed for it.
//! - `live_holds` is the working set of holds not yet settled or released: the only
//!   table in the ledger whose rows are deleted, because nothing in it is history (that
//!   is in `payments` and `payment_settlements`). An account's `pending_minor` is the sum
//!   of its `live_holds`, and `hold_seq` counts the changes to them, so a cached balance
//!   can tell an older hold state from a newer one.
//! - `payments.refund_of` names the payment a refund gives back.
//! - The balance rules bind posted balance minus `pending_minor`.
//!
//! The database guards all of it as it guards the rest (the guards migration): a
//! captured hold has the two entries of its captured amount, a settlement settles a live
//! hold of its client, a hold's row matches its payment, a live hold leaves only when it
//! is settled or expired, pending is the sum of live holds, and POSTED refunds never
//! exceed what their payment posted. PostgreSQL checks each per statement; SQLite has row
//! triggers only and checks the rules that need no other statement's rows (the balance
//! rules with pending, the entries of a capture, append-only settlements, unchangeable
//! holds); `payments-ledger verify` checks everything on both.

use sea_orm_migration::{prelude::*, schema::*, sea_orm::DatabaseBackend};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261126_000001_holds_refunds"
    }
}

/// Every trigger this migration creates (on one backend or the other), and its table.
pub const HOLD_GUARD_TRIGGERS: [(&str, &str); 10] = [
    ("accounts_move_with_posted_entries", "accounts"),
    ("accounts_available_within_rule", "accounts"),
    ("payment_settlements_append_only", "payment_settlements"),
    ("payment_settlements_no_truncate", "payment_settlements"),
    (
        "payment_settlements_settle_live_holds",
        "payment_settlements",
    ),
    ("live_holds_never_changed", "live_holds"),
    ("live_holds_no_truncate", "live_holds"),
    ("live_holds_match_payments", "live_holds"),
    ("live_holds_leave_when_settled", "live_holds"),
    ("payments_posted_with_entries", "payments"),
];

#[derive(DeriveIden)]
enum PaymentSettlements {
    Table,
    Id,
    ClientId,
    PaymentId,
    Kind,
    AmountMinor,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LiveHolds {
    Table,
    PaymentId,
    ClientId,
    AccountId,
    AmountMinor,
    ExpiresAt,
}

/// The payment status CHECK the first migration wrote, and what replaces it.
const OLD_STATUS_CHECK: &str = "(status = 'POSTED' AND decline_reason IS NULL) OR (status = 'DECLINED' AND decline_reason IS NOT NULL)";
const NEW_STATUS_CHECK: &str = "((status IN ('POSTED', 'PENDING') AND decline_reason IS NULL) \
     OR (status = 'DECLINED' AND decline_reason IS NOT NULL)) \
     AND (status <> 'PENDING' OR hold_expires_at IS NOT NULL) \
     AND (status <> 'POSTED' OR hold_expires_at IS NULL) \
     AND (refund_of IS NULL OR (status <> 'PENDING' AND refund_of <> id))";

/// The amount a payment has posted: its amount when stored POSTED, its captured amount
/// when it is a captured hold, NULL otherwise. `{paid}` names a payments row.
fn posted_amount(paid: &str) -> String {
    format!(
        "CASE {paid}.status WHEN 'POSTED' THEN {paid}.amount_minor \
         WHEN 'PENDING' THEN (SELECT settled.amount_minor FROM payment_settlements AS settled \
                              WHERE settled.payment_id = {paid}.id AND settled.kind = 'CAPTURE') END"
    )
}

/// True when `{payment}` is not a payment that posted (stored POSTED, or a captured hold)
/// with exactly two entries of its posted amount: a DEBIT on its source and a CREDIT on
/// its destination, in its currency and client. The guards migration's rule, with
/// captures. Scalar subqueries on purpose (see there).
fn not_double_entry(payment: &str) -> String {
    format!(
        "NOT COALESCE((
           SELECT paid.posted IS NOT NULL
                  AND (SELECT COUNT(*) = 2
                              AND COUNT(*) FILTER (
                                    WHERE half.direction = 'DEBIT'
                                      AND half.account_id = paid.from_account_id) = 1
                              AND COUNT(*) FILTER (
                                    WHERE half.direction = 'CREDIT'
                                      AND half.account_id = paid.to_account_id) = 1
                              AND COUNT(*) FILTER (
                                    WHERE half.amount_minor = paid.posted
                                      AND half.currency = paid.currency
                                      AND half.client_id = paid.client_id) = 2
                       FROM ledger_entries AS half
                       WHERE half.payment_id = paid.id)
           FROM (SELECT original.id, original.from_account_id, original.to_account_id,
                        original.currency, original.client_id, {} AS posted
                 FROM payments AS original WHERE original.id = {payment}) AS paid), false)",
        posted_amount("original")
    )
}

/// A PL/pgSQL block that raises `message` (with `%` for the id) when `query` finds a row.
fn refuse_when_found(query: &str, message: &str) -> String {
    format!(
        "SELECT found_id INTO culprit FROM ({query}) AS found(found_id) LIMIT 1;
         IF FOUND THEN
           RAISE EXCEPTION 'ledger guard: {message}', culprit
             USING ERRCODE = 'integrity_constraint_violation';
         END IF;"
    )
}

/// A statement-level guard function made of `checks` (see `refuse_when_found`).
fn guard_function(name: &str, checks: &[String]) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger AS $$
         DECLARE culprit uuid;
         BEGIN
           {}
           RETURN NULL;
         END $$ LANGUAGE plpgsql",
        checks.join("\n")
    )
}

/// Accounts among `{accounts}` (a query of account ids, one column) whose pending is
/// not the sum of their live holds. Scalar subqueries, one index lookup per account, as
/// in the guards migration: a join or `IN` may be planned over all accounts.
fn pending_off(accounts: &str) -> String {
    format!(
        "SELECT touched.id FROM (SELECT DISTINCT * FROM ({accounts}) AS listed) AS touched(id)
         WHERE (SELECT account.pending_minor FROM accounts AS account WHERE account.id = touched.id)
               <> (SELECT COALESCE(SUM(hold.amount_minor), 0) FROM live_holds AS hold
                   WHERE hold.account_id = touched.id)"
    )
}

fn postgres_statements() -> Vec<String> {
    let pending_of_holds = |transition: &str| {
        refuse_when_found(
            &pending_off(&format!("SELECT account_id FROM {transition}")),
            "account % has a pending amount other than the sum of its live holds",
        )
    };
    vec![
        "DO $$ DECLARE name text; BEGIN
           SELECT conname INTO name FROM pg_constraint
           WHERE conrelid = 'payments'::regclass AND contype = 'c'
             AND pg_get_constraintdef(oid) LIKE '%decline_reason%';
           EXECUTE format('ALTER TABLE payments DROP CONSTRAINT %I', name);
         END $$"
            .to_owned(),
        format!("ALTER TABLE payments ADD CONSTRAINT payments_status_shape CHECK ({NEW_STATUS_CHECK})"),
        "ALTER TABLE accounts ADD CONSTRAINT accounts_pending_within_rule CHECK (
           pending_minor >= 0 AND hold_seq >= 0
           AND (balance_rule <> 'NON_NEGATIVE' OR balance_minor - pending_minor >= 0)
           AND (balance_rule <> 'CREDIT_LIMIT' OR balance_minor - pending_minor >= -credit_limit_minor))"
            .to_owned(),
        "CREATE TRIGGER payment_settlements_append_only BEFORE UPDATE OR DELETE ON payment_settlements \
         FOR EACH ROW EXECUTE FUNCTION reject_append_only_change()"
            .to_owned(),
        "CREATE TRIGGER payment_settlements_no_truncate BEFORE TRUNCATE ON payment_settlements \
         FOR EACH STATEMENT EXECUTE FUNCTION reject_append_only_change()"
            .to_owned(),
        "CREATE TRIGGER live_holds_never_changed BEFORE UPDATE ON live_holds FOR EACH ROW \
         EXECUTE FUNCTION ledger_guard_refuse('a hold is placed and released, never changed')"
            .to_owned(),
        "CREATE TRIGGER live_holds_no_truncate BEFORE TRUNCATE ON live_holds \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_refuse('holds leave one by one, when settled or expired')"
            .to_owned(),
        // Entries: the guards migration's function with captured holds counted as posted.
        entries_guard(&not_double_entry("touched.payment_id")),
        // One query for the three rules of new payments, so a batch of plain payments
        // pays for one scan of its rows, as before holds.
        format!(
            "CREATE OR REPLACE FUNCTION ledger_guard_payments() RETURNS trigger AS $$
             DECLARE culprit uuid; broken text;
             BEGIN
               SELECT paid.id, paid.broken INTO culprit, broken FROM (
                 SELECT new_payments.id, CASE
                   WHEN new_payments.status = 'POSTED'
                        AND (SELECT COUNT(*) FROM ledger_entries
                             WHERE payment_id = new_payments.id) = 0
                     THEN 'is POSTED without its two entries'
                   WHEN new_payments.status = 'PENDING' AND NOT COALESCE((
                          SELECT hold.account_id = new_payments.from_account_id
                                 AND hold.amount_minor = new_payments.amount_minor
                                 AND hold.expires_at = new_payments.hold_expires_at
                                 AND hold.client_id = new_payments.client_id
                          FROM live_holds AS hold WHERE hold.payment_id = new_payments.id), false)
                     THEN 'is PENDING without its hold'
                   WHEN new_payments.refund_of IS NOT NULL AND NOT COALESCE((
                          SELECT original.client_id = new_payments.client_id
                                 AND original.from_account_id = new_payments.to_account_id
                                 AND original.to_account_id = new_payments.from_account_id
                                 AND original.currency = new_payments.currency
                                 AND original.refund_of IS NULL
                                 AND (SELECT COALESCE(SUM(given.amount_minor), 0)
                                      FROM payments AS given
                                      WHERE given.refund_of = original.id
                                        AND given.status = 'POSTED')
                                     <= COALESCE({}, 0)
                          FROM payments AS original
                          WHERE original.id = new_payments.refund_of), false)
                     THEN 'is a refund that does not give back part of what its payment posted'
                   END AS broken
                 FROM new_payments) AS paid
               WHERE paid.broken IS NOT NULL
               LIMIT 1;
               IF FOUND THEN
                 RAISE EXCEPTION 'ledger guard: payment % %', culprit, broken
                   USING ERRCODE = 'integrity_constraint_violation';
               END IF;
               RETURN NULL;
             END $$ LANGUAGE plpgsql",
            posted_amount("original")
        ),
        guard_function(
            "ledger_guard_settlements",
            &[refuse_when_found(
                "SELECT settlement.id FROM new_settlements AS settlement WHERE NOT COALESCE((
                   SELECT hold.status = 'PENDING'
                          AND hold.client_id = settlement.client_id
                          AND settlement.amount_minor <= hold.amount_minor
                          AND (SELECT COUNT(*) FROM live_holds AS live
                               WHERE live.payment_id = hold.id) = 0
                          AND (SELECT COUNT(*) FROM ledger_entries AS entry
                               WHERE entry.payment_id = hold.id)
                              = CASE settlement.kind WHEN 'CAPTURE' THEN 2 ELSE 0 END
                   FROM payments AS hold WHERE hold.id = settlement.payment_id), false)",
                "settlement % does not settle a live hold of its client once",
            )],
        ),
        "CREATE TRIGGER payment_settlements_settle_live_holds AFTER INSERT ON payment_settlements \
         REFERENCING NEW TABLE AS new_settlements \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_settlements()"
            .to_owned(),
        guard_function(
            "ledger_guard_placed_holds",
            &[
                refuse_when_found(
                    "SELECT placed.payment_id FROM new_holds AS placed WHERE NOT COALESCE((
                       SELECT hold.status = 'PENDING'
                              AND hold.from_account_id = placed.account_id
                              AND hold.amount_minor = placed.amount_minor
                              AND hold.hold_expires_at = placed.expires_at
                              AND hold.client_id = placed.client_id
                              AND (SELECT COUNT(*) FROM payment_settlements AS settled
                                   WHERE settled.payment_id = hold.id) = 0
                       FROM payments AS hold WHERE hold.id = placed.payment_id), false)",
                    "hold % does not match an unsettled PENDING payment",
                ),
                pending_of_holds("new_holds"),
            ],
        ),
        "CREATE TRIGGER live_holds_match_payments AFTER INSERT ON live_holds \
         REFERENCING NEW TABLE AS new_holds \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_placed_holds()"
            .to_owned(),
        guard_function(
            "ledger_guard_released_holds",
            &[
                refuse_when_found(
                    "SELECT released.payment_id FROM old_holds AS released
                     WHERE released.expires_at > clock_timestamp()
                       AND (SELECT COUNT(*) FROM payment_settlements AS settled
                            WHERE settled.payment_id = released.payment_id) = 0",
                    "hold % left while neither settled nor expired",
                ),
                pending_of_holds("old_holds"),
            ],
        ),
        "CREATE TRIGGER live_holds_leave_when_settled AFTER DELETE ON live_holds \
         REFERENCING OLD TABLE AS old_holds \
         FOR EACH STATEMENT EXECUTE FUNCTION ledger_guard_released_holds()"
            .to_owned(),
        // The guards migration's check of account moves, with pending: one trigger
        // runs both, so a batch pays for one invocation.
        guard_function(
            "ledger_guard_account_moves",
            &[
                refuse_when_found(
                    &format!(
                        "SELECT new_rows.id FROM old_rows JOIN new_rows ON new_rows.id = old_rows.id
                         WHERE (new_rows.balance_minor, new_rows.version)
                               IS DISTINCT FROM (old_rows.balance_minor, old_rows.version)
                           AND {}",
                        Move {
                            id: "new_rows.id",
                            old_balance: "old_rows.balance_minor",
                            old_version: "old_rows.version",
                            new_balance: "new_rows.balance_minor",
                            new_version: "new_rows.version",
                        }
                        .unjustified()
                    ),
                    "account % moved without the ledger entries that justify it",
                ),
                refuse_when_found(
                    &pending_off(
                        "SELECT new_rows.id FROM new_rows JOIN old_rows ON old_rows.id = new_rows.id
                         WHERE new_rows.pending_minor IS DISTINCT FROM old_rows.pending_minor",
                    ),
                    "account % has a pending amount other than the sum of its live holds",
                ),
            ],
        ),
    ]
}

fn sqlite_statements() -> Vec<String> {
    let raise = |message: &str| format!("SELECT RAISE(ABORT, 'ledger guard: {message}')");
    vec![
        format!(
            "CREATE TRIGGER accounts_available_within_rule BEFORE UPDATE ON accounts \
             WHEN NEW.pending_minor < 0 OR NEW.hold_seq < 0 \
               OR (NEW.balance_rule = 'NON_NEGATIVE' AND NEW.balance_minor - NEW.pending_minor < 0) \
               OR (NEW.balance_rule = 'CREDIT_LIMIT' \
                   AND NEW.balance_minor - NEW.pending_minor < -NEW.credit_limit_minor) \
             BEGIN {}; END",
            raise("an account''s posted balance minus pending broke its balance rule")
        ),
        format!(
            "CREATE TRIGGER payment_settlements_append_only BEFORE UPDATE ON payment_settlements \
             BEGIN {}; END",
            raise("payment_settlements is append-only: UPDATE rejected")
        ),
        format!(
            "CREATE TRIGGER payment_settlements_no_truncate BEFORE DELETE ON payment_settlements \
             BEGIN {}; END",
            raise("payment_settlements is append-only: DELETE rejected")
        ),
        format!(
            "CREATE TRIGGER live_holds_never_changed BEFORE UPDATE ON live_holds BEGIN {}; END",
            raise("a hold is placed and released, never changed")
        ),
        // The guards migration's move check, with captured holds counted as posted.
        "DROP TRIGGER accounts_move_with_entries".to_owned(),
        format!(
            "CREATE TRIGGER accounts_move_with_posted_entries AFTER UPDATE ON accounts \
             WHEN NEW.balance_minor IS NOT OLD.balance_minor OR NEW.version IS NOT OLD.version \
             BEGIN SELECT RAISE(ABORT, 'ledger guard: an account moved without the ledger entries that justify it') \
             WHERE NOT COALESCE(( \
               SELECT COUNT(*) = NEW.version - OLD.version \
                      AND SUM(CASE WHEN chain.balance_after_minor = OLD.balance_minor + chain.running \
                                   THEN 0 ELSE 1 END) = 0 \
                      AND MAX(chain.balance_after_minor) \
                            FILTER (WHERE chain.account_version = NEW.version) = NEW.balance_minor \
               FROM (SELECT account_version, balance_after_minor, \
                            SUM(CASE direction WHEN 'CREDIT' THEN amount_minor \
                                               ELSE -amount_minor END) \
                              OVER (ORDER BY account_version) AS running \
                     FROM ledger_entries \
                     WHERE account_id = NEW.id AND account_version > OLD.version \
                       AND account_version <= NEW.version) AS chain), false) \
                OR EXISTS (SELECT 1 FROM ledger_entries AS entry \
                           WHERE entry.account_id = NEW.id \
                             AND entry.account_version > OLD.version \
                             AND entry.account_version <= NEW.version \
                             AND (entry.currency <> NEW.currency OR entry.client_id <> NEW.client_id \
                                  OR {})); END",
            not_double_entry("entry.payment_id")
        ),
    ]
}

/// SQLite cannot drop a CHECK constraint, so the `payments` table's is replaced the way
/// SQLite's documentation describes for changes that leave the stored rows as they are
/// ("Making Other Kinds Of Table Schema Changes"): in one transaction, the table's SQL in
/// `sqlite_schema` is rewritten and the schema version raised, so every connection
/// reloads it. The new check only admits more (every existing row passes it).
async fn replace_sqlite_status_check(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::{Statement, TransactionTrait};
    let transaction = manager.get_connection().begin().await?;
    let read = |sql: &str| Statement::from_string(DatabaseBackend::Sqlite, sql.to_owned());
    let row = transaction
        .query_one_raw(read(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'payments'",
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("no payments table".to_owned()))?;
    let sql: String = row.try_get("", "sql")?;
    if !sql.contains(OLD_STATUS_CHECK) {
        return Err(DbErr::Custom(format!(
            "the payments table does not have the expected status check: {sql}"
        )));
    }
    let row = transaction
        .query_one_raw(read("PRAGMA schema_version"))
        .await?
        .ok_or_else(|| DbErr::Custom("no schema version".to_owned()))?;
    let schema_version: i64 = row.try_get_by_index(0)?;
    transaction
        .execute_unprepared("PRAGMA writable_schema = ON")
        .await?;
    transaction
        .execute_raw(Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            "UPDATE sqlite_schema SET sql = ? WHERE type = 'table' AND name = 'payments'",
            [sql.replacen(OLD_STATUS_CHECK, NEW_STATUS_CHECK, 1).into()],
        ))
        .await?;
    transaction
        .execute_unprepared(&format!("PRAGMA schema_version = {}", schema_version + 1))
        .await?;
    transaction
        .execute_unprepared("PRAGMA writable_schema = OFF")
        .await?;
    transaction.commit().await
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        let connection = manager.get_connection();
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("accounts"))
                    .add_column(big_integer(Alias::new("pending_minor")).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("accounts"))
                    .add_column(big_integer(Alias::new("hold_seq")).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("payments"))
                    .add_column(timestamp_with_time_zone_null(Alias::new("hold_expires_at")))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Alias::new("payments"))
                    .add_column(uuid_null(Alias::new("refund_of")))
                    .to_owned(),
            )
            .await?;
        if backend == DatabaseBackend::Sqlite {
            replace_sqlite_status_check(manager).await?;
        }
        connection
            .execute_unprepared(
                "CREATE INDEX ix_payments_refund_of ON payments (refund_of) WHERE refund_of IS NOT NULL",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PaymentSettlements::Table)
                    .col(uuid(PaymentSettlements::Id).primary_key())
                    .col(uuid(PaymentSettlements::ClientId))
                    .col(uuid_uniq(PaymentSettlements::PaymentId))
                    .col(string_len(PaymentSettlements::Kind, 16))
                    .col(big_integer(PaymentSettlements::AmountMinor))
                    .col(timestamp_with_time_zone(PaymentSettlements::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payment_settlements_client")
                            .from(PaymentSettlements::Table, PaymentSettlements::ClientId)
                            .to(Alias::new("clients"), Alias::new("id")),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_payment_settlements_payment")
                            .from(PaymentSettlements::Table, PaymentSettlements::PaymentId)
                            .to(Alias::new("payments"), Alias::new("id")),
                    )
                    .check(Expr::cust(
                        "(kind = 'CAPTURE' AND amount_minor > 0) OR (kind = 'VOID' AND amount_minor = 0)",
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LiveHolds::Table)
                    .col(uuid(LiveHolds::PaymentId).primary_key())
                    .col(uuid(LiveHolds::ClientId))
                    .col(uuid(LiveHolds::AccountId))
                    .col(big_integer(LiveHolds::AmountMinor))
                    .col(timestamp_with_time_zone(LiveHolds::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_live_holds_payment")
                            .from(LiveHolds::Table, LiveHolds::PaymentId)
                            .to(Alias::new("payments"), Alias::new("id")),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_live_holds_account")
                            .from(LiveHolds::Table, LiveHolds::AccountId)
                            .to(Alias::new("accounts"), Alias::new("id")),
                    )
                    .check(Expr::cust("amount_minor > 0"))
                    .to_owned(),
            )
            .await?;
        connection
            .execute_unprepared(
                "CREATE INDEX ix_live_holds_account_expiry ON live_holds (account_id, expires_at)",
            )
            .await?;

        let statements = match backend {
            DatabaseBackend::Postgres => postgres_statements(),
            _ => sqlite_statements(),
        };
        for statement in statements {
            connection.execute_unprepared(&statement).await?;
        }
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Holds and refunds are money: taking the tables away would lose it.
        Err(DbErr::Migration(
            "holds and refunds cannot be migrated down; restore a backup instead".to_owned(),
        ))
    }
}

// The guards migration's builders as this migration ran them (frozen: a migration
// holds the SQL it ran, so editing an earlier one's helpers changes nothing here).

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
