//! The batch's statements on PostgreSQL: one statement per step, over arrays.

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveEnum, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, Statement, Value,
};
use uuid::Uuid;

use super::super::decide::{BatchContext, LivePending};
use super::super::rows::{AccountMove, BatchRows, LifecycleWrites};
use super::{AccountClaim, BatchStore, OneTripAnswer};
use crate::entity::{account, idempotency_key, ledger_entry, payment};

pub(super) struct Postgres;

#[async_trait::async_trait]
impl BatchStore for Postgres {
    async fn lock_accounts(
        &self,
        transaction: &DatabaseTransaction,
        claims: &[AccountClaim],
    ) -> Result<Vec<account::Model>, DbErr> {
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT id, client_id, currency, balance_rule, credit_limit_minor, external_ref,
                    balance_minor, version, pending_minor, hold_seq, last_entry_at, created_at,
                    feed_seq, status, change_seq
             FROM accounts
             WHERE id = ANY($1::uuid[])
               AND (id, client_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
             ORDER BY id
             FOR UPDATE",
            [
                Value::from(claims.iter().map(|claim| claim.id).collect::<Vec<_>>()),
                Value::from(claims.iter().map(|claim| claim.client).collect::<Vec<_>>()),
            ],
        );
        account::Entity::find()
            .from_raw_sql(statement)
            .all(transaction)
            .await
    }

    /// One statement, whose clock decides expiry for every instance alike.
    async fn read_context(
        &self,
        transaction: &DatabaseTransaction,
        held_accounts: &[Uuid],
        holds: &[Uuid],
        originals: &[Uuid],
    ) -> Result<BatchContext, DbErr> {
        let mut context = BatchContext::at(crate::entity::stored_now());
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS now)
             SELECT 'pending' AS kind, hold.account_id AS id,
                    (COALESCE(SUM(hold.amount_minor) FILTER (WHERE hold.expires_at > clock.now), 0))::int8 AS amount,
                    MIN(hold.expires_at) FILTER (WHERE hold.expires_at > clock.now) AS at,
                    COUNT(*) FILTER (WHERE hold.expires_at <= clock.now) > 0 AS flag
             FROM live_holds AS hold CROSS JOIN clock
             WHERE hold.account_id = ANY($1::uuid[])
             GROUP BY hold.account_id
             UNION ALL
             SELECT 'live', payment_id, amount_minor, expires_at, true
             FROM live_holds WHERE payment_id = ANY($2::uuid[])
             UNION ALL
             SELECT 'refunded', refund_of, SUM(amount_minor)::int8, NULL::timestamptz, true
             FROM payments WHERE refund_of = ANY($3::uuid[]) AND status = 'POSTED'
             GROUP BY refund_of
             UNION ALL
             SELECT 'captured', payment_id, amount_minor, NULL::timestamptz, true
             FROM payment_settlements WHERE payment_id = ANY($3::uuid[]) AND kind = 'CAPTURE'
             UNION ALL
             SELECT 'clock', NULL::uuid, 0::int8, now, true FROM clock",
            [
                Value::from(held_accounts.to_vec()),
                Value::from(holds.to_vec()),
                Value::from(originals.to_vec()),
            ],
        );
        for row in transaction.query_all_raw(statement).await? {
            let kind: String = row.try_get("", "kind")?;
            let id: Option<Uuid> = row.try_get("", "id")?;
            let amount: i64 = row.try_get("", "amount")?;
            let at: Option<DateTime<Utc>> = row.try_get("", "at")?;
            let flag: bool = row.try_get("", "flag")?;
            match (kind.as_str(), id, at) {
                ("clock", _, Some(now)) => context.now = now,
                ("pending", Some(account), next_expiry) => {
                    context.pending.insert(
                        account,
                        LivePending {
                            sum_minor: amount,
                            next_expiry,
                            has_expired: flag,
                        },
                    );
                }
                ("live", Some(hold), Some(expires_at)) => {
                    context.live_holds.insert(hold, expires_at);
                }
                ("refunded", Some(original), _) => {
                    context.refunded.insert(original, amount);
                }
                ("captured", Some(hold), _) => {
                    context.captured.insert(hold, amount);
                }
                _ => return Err(DbErr::Custom(format!("an unexpected context row {kind}"))),
            }
        }
        Ok(context)
    }

    async fn claim_keys(
        &self,
        transaction: &DatabaseTransaction,
        records: &[idempotency_key::Model],
    ) -> Result<HashSet<Uuid>, DbErr> {
        if records.is_empty() {
            return Ok(HashSet::new());
        }
        let statement = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO idempotency_keys
               (client_id, idempotency_key, operation, request_fingerprint, resource_id, created_at)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                                  $6::timestamptz[])
             ON CONFLICT (client_id, idempotency_key) DO NOTHING
             RETURNING resource_id",
            key_values(records),
        );
        let rows = transaction.query_all_raw(statement).await?;
        rows.iter()
            .map(|row| row.try_get::<Uuid>("", "resource_id"))
            .collect()
    }

    /// The column defaults set `feed_seq`; the statement reports which it was.
    async fn write(
        &self,
        transaction: &DatabaseTransaction,
        rows: &mut BatchRows,
    ) -> Result<u64, DbErr> {
        let BatchRows {
            payments,
            moves,
            entries,
            writes,
            ..
        } = &*rows;
        let plain = writes.is_empty()
            && payments.iter().all(|row| {
                row.hold_expires_at.is_none()
                    && row.refund_of.is_none()
                    && row.metadata.is_none()
                    && row.group_id.is_none()
            })
            && moves.iter().all(|row| row.hold_seq == row.locked_hold_seq);
        let (moved, feed_seq) = if plain {
            write_postings_postgres(transaction, payments, moves, entries).await?
        } else {
            write_lifecycle_postgres(transaction, payments, moves, entries, writes).await?
        };
        rows.set_feed_seq(feed_seq);
        Ok(moved)
    }

    fn has_one_trip(&self) -> bool {
        true
    }

    async fn write_in_one_trip(
        &self,
        connection: &DatabaseConnection,
        rows: &mut BatchRows,
        decided_on: &[account::Model],
        keys: &[idempotency_key::Model],
    ) -> Result<OneTripAnswer, DbErr> {
        write_in_one_trip(connection, rows, decided_on, keys).await
    }
}

/// The six columns of key records, as array parameters in insert order.
fn key_values(records: &[idempotency_key::Model]) -> [Value; 6] {
    [
        array(records, |row| row.client_id),
        array(records, |row| row.idempotency_key.clone()),
        array(records, |row| row.operation.clone()),
        array(records, |row| row.request_fingerprint.clone()),
        array(records, |row| row.resource_id),
        array(records, |row| row.created_at),
    ]
}

/// $1..$28 of both posting statements: the payments ($1..$13), the account moves
/// ($14..$17, $28) and the entries ($18..$27).
fn posting_values(
    payments: &[payment::Model],
    moves: &[AccountMove],
    entries: &[ledger_entry::Model],
) -> Vec<Value> {
    vec![
        // $1..$13: the payments
        array(payments, |row| row.id),
        array(payments, |row| row.client_id),
        array(payments, |row| row.idempotency_key.clone()),
        array(payments, |row| row.from_account_id),
        array(payments, |row| row.to_account_id),
        array(payments, |row| row.amount_minor),
        array(payments, |row| row.currency.clone()),
        array(payments, |row| row.status.to_value()),
        array(payments, |row| {
            row.decline_reason.clone().unwrap_or_default()
        }),
        array(payments, |row| row.decline_reason.is_some()),
        array(payments, |row| row.description.clone().unwrap_or_default()),
        array(payments, |row| row.description.is_some()),
        array(payments, |row| row.created_at),
        // $14..$17: the account moves
        array(moves, |row| row.id),
        array(moves, |row| row.balance_minor),
        array(moves, |row| row.locked_version),
        array(moves, |row| row.version),
        // $18..$27: the entries
        array(entries, |row| row.id),
        array(entries, |row| row.client_id),
        array(entries, |row| row.account_id),
        array(entries, |row| row.payment_id),
        array(entries, |row| row.currency.clone()),
        array(entries, |row| row.direction.to_value()),
        array(entries, |row| row.amount_minor),
        array(entries, |row| row.balance_after_minor),
        array(entries, |row| row.account_version),
        array(entries, |row| row.created_at),
        // $28: the moves' last entry time (kept as it was where no entry was added)
        array(moves, |row| {
            row.last_entry_at.unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        }),
    ]
}

/// One array parameter: `field` of every row. Arrays cannot carry NULLs through
/// sea-query, so a nullable column travels as a value (any, when absent) plus a
/// presence flag, and the statement turns the pair back into a NULL.
fn array<Row, Item>(rows: &[Row], field: impl Fn(&Row) -> Item) -> Value
where
    Value: From<Vec<Item>>,
{
    Value::from(rows.iter().map(field).collect::<Vec<_>>())
}

/// The moved count and the transaction's `feed_seq` (which the column defaults gave
/// the new rows) that both posting statements return.
async fn run_posting_statement(
    connection: &impl ConnectionTrait,
    sql: &str,
    values: Vec<Value>,
) -> Result<(u64, i64), DbErr> {
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, values);
    let row = connection
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::Custom("the posting statement returned no row".to_owned()))?;
    let moved: i64 = row.try_get("", "moved")?;
    let feed_seq: i64 = row.try_get("", "feed_seq")?;
    Ok((u64::try_from(moved).unwrap_or(0), feed_seq))
}

/// The plain posting statement's three parts (insert the payments, move the accounts,
/// append the entries), each refused until `gate` (a condition, `true` when nothing
/// must come first) holds.
fn plain_posting_ctes(gate: &str) -> String {
    format!(
        "new_payments AS (
           INSERT INTO payments
             (id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
              currency, status, decline_reason, description, created_at)
           SELECT id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
                  currency, status,
                  CASE WHEN has_decline_reason THEN decline_reason END,
                  CASE WHEN has_description THEN description END,
                  created_at
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[],
                       $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bool[],
                       $13::timestamptz[])
             AS p(id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
                  currency, status, decline_reason, has_decline_reason, description,
                  has_description, created_at)
           WHERE {gate}
         ),
         moved AS (
           UPDATE accounts AS a
           SET balance_minor = m.balance_minor, version = m.version,
               last_entry_at = CASE WHEN m.version > a.version THEN m.last_entry_at
                                    ELSE a.last_entry_at END
           FROM unnest($14::uuid[], $15::int8[], $16::int8[], $17::int8[], $28::timestamptz[])
             AS m(id, balance_minor, locked_version, version, last_entry_at)
           WHERE a.id = m.id AND a.version = m.locked_version AND {gate}
           RETURNING a.id
         ),
         new_entries AS (
           INSERT INTO ledger_entries
             (id, client_id, account_id, payment_id, currency, direction, amount_minor,
              balance_after_minor, account_version, created_at)
           SELECT * FROM unnest($18::uuid[], $19::uuid[], $20::uuid[], $21::uuid[], $22::text[],
                                $23::text[], $24::int8[], $25::int8[], $26::int8[],
                                $27::timestamptz[])
           WHERE {gate}
         )"
    )
}

/// The plain posting statement, inside a transaction that has locked the accounts.
static PLAIN_POSTING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {} SELECT COUNT(*) AS moved, pg_current_xact_id()::text::bigint AS feed_seq FROM moved",
        plain_posting_ctes("true")
    )
});

/// A batch of plain payments in one statement and one round trip, sent outside any
/// transaction so it commits on its own. It locks the batch's accounts in id order
/// (`locked`), checks that each still has the version, hold sequence and change
/// sequence the batch was decided on (`unchanged`), and writes only then: every part
/// below waits for that check, so no row lock or key wait begins before all of the
/// accounts are locked, the order every writer keeps. A moved account is an expected
/// event, not an error: the statement then writes nothing and says so (the server
/// runs the batch the long way). A taken key fails the statement with a unique
/// violation, which undoes everything; the server sends no key it knows is taken
/// (`KnownAccounts::key_committed`), so that is left to two requests with one key in
/// flight on two instances at once. $29..$32 are the accounts as decided on, $33..$38
/// the key records.
static ONE_TRIP_POSTING_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH locked AS MATERIALIZED (
           SELECT id, version, hold_seq, change_seq FROM accounts
           WHERE id = ANY($29::uuid[])
           ORDER BY id
           FOR UPDATE
         ),
         unchanged AS MATERIALIZED (
           SELECT (SELECT COUNT(*) FROM locked) = cardinality($29::uuid[])
                  AND (SELECT COUNT(*)
                       FROM locked
                       JOIN unnest($29::uuid[], $30::int8[], $31::int8[], $32::int8[])
                         AS decided_on(id, version, hold_seq, change_seq)
                       USING (id, version, hold_seq, change_seq))
                      = cardinality($29::uuid[]) AS ok
         ),
         claimed AS (
           INSERT INTO idempotency_keys
             (client_id, idempotency_key, operation, request_fingerprint, resource_id, created_at)
           SELECT * FROM unnest($33::uuid[], $34::text[], $35::text[], $36::text[], $37::uuid[],
                                $38::timestamptz[])
           WHERE (SELECT ok FROM unchanged)
         ),
         {}
         SELECT (SELECT ok FROM unchanged) AS unchanged,
                -- CASE, not OR: only CASE promises not to evaluate the check when
                -- nothing was meant to be written.
                CASE WHEN (SELECT ok FROM unchanged)
                     THEN ledger_accounts_unchanged(COUNT(*) = cardinality($14::uuid[]))
                     ELSE false END AS written,
                COUNT(*) AS moved, pg_current_xact_id()::text::bigint AS feed_seq
         FROM moved",
        plain_posting_ctes("(SELECT ok FROM unchanged)")
    )
});

/// Payments that neither hold nor refund, in one statement.
async fn write_postings_postgres(
    transaction: &DatabaseTransaction,
    payments: &[payment::Model],
    moves: &[AccountMove],
    entries: &[ledger_entry::Model],
) -> Result<(u64, i64), DbErr> {
    run_posting_statement(
        transaction,
        &PLAIN_POSTING_SQL,
        posting_values(payments, moves, entries),
    )
    .await
}

/// `BatchStore::write_in_one_trip` (`ONE_TRIP_POSTING_SQL`).
async fn write_in_one_trip(
    connection: &DatabaseConnection,
    rows: &mut BatchRows,
    decided_on: &[account::Model],
    keys: &[idempotency_key::Model],
) -> Result<OneTripAnswer, DbErr> {
    let mut values = posting_values(&rows.payments, &rows.moves, &rows.entries);
    values.extend([
        array(decided_on, |row| row.id),
        array(decided_on, |row| row.version),
        array(decided_on, |row| row.hold_seq),
        array(decided_on, |row| row.change_seq),
    ]);
    values.extend(key_values(keys));
    let statement =
        Statement::from_sql_and_values(DbBackend::Postgres, ONE_TRIP_POSTING_SQL.as_str(), values);
    let row = connection
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::Custom("the one-statement batch returned no row".to_owned()))?;
    if !row.try_get::<bool>("", "unchanged")? {
        return Ok(OneTripAnswer::AccountsMoved);
    }
    if !row.try_get::<bool>("", "written")? {
        return Err(DbErr::Custom(
            "a one-statement batch passed its checks and wrote nothing".to_owned(),
        ));
    }
    rows.set_feed_seq(row.try_get("", "feed_seq")?);
    Ok(OneTripAnswer::Written)
}

/// The statement of any batch with holds, settlements, refunds, metadata or groups, in one statement:
/// the plain one's parts with the hold, metadata and group columns, plus settlements,
/// placed holds, released ones, metadata pairs and groups.
static LIFECYCLE_POSTING_SQL: &str = "WITH new_payments AS (
           INSERT INTO payments
             (id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
              currency, status, decline_reason, description, created_at, hold_expires_at,
              refund_of, metadata, group_id, group_index)
           SELECT id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
                  currency, status,
                  CASE WHEN has_decline_reason THEN decline_reason END,
                  CASE WHEN has_description THEN description END,
                  created_at,
                  CASE WHEN has_hold THEN hold_expires_at END,
                  CASE WHEN has_refund THEN refund_of END,
                  CASE WHEN has_metadata THEN metadata END,
                  CASE WHEN has_group THEN group_id END,
                  CASE WHEN has_group THEN group_index END
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::int8[],
                       $7::text[], $8::text[], $9::text[], $10::bool[], $11::text[], $12::bool[],
                       $13::timestamptz[], $29::timestamptz[], $30::bool[], $31::uuid[],
                       $32::bool[], $50::text[], $51::bool[], $56::uuid[], $57::bool[],
                       $58::int4[])
             AS p(id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
                  currency, status, decline_reason, has_decline_reason, description,
                  has_description, created_at, hold_expires_at, has_hold, refund_of, has_refund,
                  metadata, has_metadata, group_id, has_group, group_index)
         ),
         new_groups AS (
           INSERT INTO payment_groups
             (id, client_id, idempotency_key, payment_count, metadata, created_at)
           SELECT id, client_id, idempotency_key, payment_count,
                  CASE WHEN has_metadata THEN metadata END, created_at
           FROM unnest($59::uuid[], $60::uuid[], $61::text[], $62::int4[], $63::text[],
                       $64::bool[], $65::timestamptz[])
             AS g(id, client_id, idempotency_key, payment_count, metadata, has_metadata,
                  created_at)
         ),
         new_pairs AS (
           INSERT INTO payment_metadata (client_id, key, value, payment_id)
           SELECT * FROM unnest($52::uuid[], $53::text[], $54::text[], $55::uuid[])
         ),
         moved AS (
           UPDATE accounts AS a
           SET balance_minor = m.balance_minor, version = m.version,
               last_entry_at = CASE WHEN m.version > a.version THEN m.last_entry_at
                                    ELSE a.last_entry_at END,
               pending_minor = m.pending_minor, hold_seq = m.hold_seq
           FROM unnest($14::uuid[], $15::int8[], $16::int8[], $17::int8[], $28::timestamptz[],
                       $33::int8[], $34::int8[], $35::int8[])
             AS m(id, balance_minor, locked_version, version, last_entry_at, pending_minor,
                  locked_hold_seq, hold_seq)
           WHERE a.id = m.id AND a.version = m.locked_version
             AND a.hold_seq = m.locked_hold_seq
           RETURNING a.id
         ),
         new_entries AS (
           INSERT INTO ledger_entries
             (id, client_id, account_id, payment_id, currency, direction, amount_minor,
              balance_after_minor, account_version, created_at)
           SELECT * FROM unnest($18::uuid[], $19::uuid[], $20::uuid[], $21::uuid[], $22::text[],
                                $23::text[], $24::int8[], $25::int8[], $26::int8[],
                                $27::timestamptz[])
         ),
         new_settlements AS (
           INSERT INTO payment_settlements (id, client_id, payment_id, kind, amount_minor, created_at)
           SELECT * FROM unnest($36::uuid[], $37::uuid[], $38::uuid[], $39::text[], $40::int8[],
                                $41::timestamptz[])
         ),
         placed AS (
           INSERT INTO live_holds (payment_id, client_id, account_id, amount_minor, expires_at)
           SELECT * FROM unnest($42::uuid[], $43::uuid[], $44::uuid[], $45::int8[],
                                $46::timestamptz[])
         ),
         released AS (
           DELETE FROM live_holds
           WHERE payment_id = ANY($47::uuid[])
              OR (account_id = ANY($48::uuid[]) AND expires_at <= $49::timestamptz)
         )
         SELECT COUNT(*) AS moved, pg_current_xact_id()::text::bigint AS feed_seq FROM moved";

/// Writes a batch with holds, settlements, refunds, metadata or groups
/// (`LIFECYCLE_POSTING_SQL`).
async fn write_lifecycle_postgres(
    transaction: &DatabaseTransaction,
    payments: &[payment::Model],
    moves: &[AccountMove],
    entries: &[ledger_entry::Model],
    writes: &LifecycleWrites,
) -> Result<(u64, i64), DbErr> {
    let values = lifecycle_values(payments, moves, entries, writes);
    run_posting_statement(transaction, LIFECYCLE_POSTING_SQL, values).await
}

/// $1..$65 of `LIFECYCLE_POSTING_SQL`: the plain statement's, then the hold, metadata
/// and group columns.
fn lifecycle_values(
    payments: &[payment::Model],
    moves: &[AccountMove],
    entries: &[ledger_entry::Model],
    writes: &LifecycleWrites,
) -> Vec<Value> {
    let mut values = posting_values(payments, moves, entries);
    let (settlements, placed, pairs, groups) = (
        &writes.settlements,
        &writes.placed,
        &writes.pairs,
        &writes.groups,
    );
    values.extend([
        // $29..$32: the payments' hold expiry and refunded payment
        array(payments, |row| {
            row.hold_expires_at.unwrap_or(row.created_at)
        }),
        array(payments, |row| row.hold_expires_at.is_some()),
        array(payments, |row| row.refund_of.unwrap_or(row.id)),
        array(payments, |row| row.refund_of.is_some()),
        // $33..$35: the moves' holds
        array(moves, |row| row.pending_minor),
        array(moves, |row| row.locked_hold_seq),
        array(moves, |row| row.hold_seq),
        // $36..$41: the settlements
        array(settlements, |row| row.id),
        array(settlements, |row| row.client_id),
        array(settlements, |row| row.payment_id),
        array(settlements, |row| row.kind.to_value()),
        array(settlements, |row| row.amount_minor),
        array(settlements, |row| row.created_at),
        // $42..$46: the holds placed
        array(placed, |row| row.payment_id),
        array(placed, |row| row.client_id),
        array(placed, |row| row.account_id),
        array(placed, |row| row.amount_minor),
        array(placed, |row| row.expires_at),
        // $47..$49: the holds released: settled, and expired on these accounts
        Value::from(writes.settled.clone()),
        Value::from(writes.expired_on.clone()),
        Value::from(writes.expired_at.unwrap_or(DateTime::<Utc>::UNIX_EPOCH)),
        // $50..$51: the payments' metadata
        array(payments, |row| row.metadata.clone().unwrap_or_default()),
        array(payments, |row| row.metadata.is_some()),
        // $52..$55: the metadata pairs
        array(pairs, |row| row.client_id),
        array(pairs, |row| row.key.clone()),
        array(pairs, |row| row.value.clone()),
        array(pairs, |row| row.payment_id),
        // $56..$58: the payments' group and place in it
        array(payments, |row| row.group_id.unwrap_or(row.id)),
        array(payments, |row| row.group_id.is_some()),
        array(payments, |row| row.group_index.unwrap_or(0)),
        // $59..$65: the groups
        array(groups, |row| row.id),
        array(groups, |row| row.client_id),
        array(groups, |row| row.idempotency_key.clone()),
        array(groups, |row| row.payment_count),
        array(groups, |row| row.metadata.clone().unwrap_or_default()),
        array(groups, |row| row.metadata.is_some()),
        array(groups, |row| row.created_at),
    ]);
    values
}
