//! The statements of a payment batch. However many payments a batch carries, it costs
//! the same three statements between BEGIN and COMMIT: lock the accounts, claim the
//! keys, write payments + balances + entries. On PostgreSQL each is one statement over
//! arrays (`unnest`), so its text never changes with the batch size and stays prepared.
//! SQLite runs in-process, so it takes the same steps row by row through sea-orm.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TryInsertResult, Value,
};
use uuid::Uuid;

use crate::db::Backend;
use crate::entity::{account, idempotency_key, ledger_entry, payment};

/// An account whose balance a batch moved from `locked_version` to `version`.
pub struct AccountMove {
    pub id: Uuid,
    pub locked_version: i64,
    pub balance_minor: i64,
    pub version: i64,
}

/// An account a batch needs, and the client whose payment names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AccountClaim {
    pub id: Uuid,
    pub client: Uuid,
}

/// Locks the accounts of `claims` (sorted, distinct) in id order and returns them: only
/// those owned by the client that names them, so no tenant can take (or wait for)
/// another tenant's row lock by naming its id. Every writer locks in the same order, so
/// batches touching overlapping accounts wait, never deadlock.
pub async fn lock_accounts(
    transaction: &DatabaseTransaction,
    backend: Backend,
    claims: &[AccountClaim],
) -> Result<Vec<account::Model>, DbErr> {
    match backend {
        Backend::Postgres => {
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT id, client_id, currency, balance_rule, credit_limit_minor, external_ref,
                        balance_minor, version, created_at, feed_seq
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
        // One writer and no row locks: the file lock is already the whole database's,
        // and `check_accounts` refuses accounts of other clients.
        Backend::Sqlite => {
            account::Entity::find()
                .filter(account::Column::Id.is_in(claims.iter().map(|claim| claim.id)))
                .order_by_asc(account::Column::Id)
                .lock_exclusive()
                .all(transaction)
                .await
        }
    }
}

/// Inserts the key records, in the given order, skipping keys that already exist (a
/// concurrent inserter of the same key is waited for first). Returns the resource ids
/// of the records this transaction inserted: the keys it now owns.
pub async fn claim_keys(
    transaction: &DatabaseTransaction,
    backend: Backend,
    records: &[idempotency_key::Model],
) -> Result<HashSet<Uuid>, DbErr> {
    if records.is_empty() {
        return Ok(HashSet::new());
    }
    match backend {
        Backend::Postgres => {
            let texts = |field: fn(&idempotency_key::Model) -> &String| {
                Value::from(
                    records
                        .iter()
                        .map(|row| field(row).clone())
                        .collect::<Vec<_>>(),
                )
            };
            let statement = Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO idempotency_keys
                   (client_id, idempotency_key, operation, request_fingerprint, resource_id, created_at)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                                      $6::timestamptz[])
                 ON CONFLICT (client_id, idempotency_key) DO NOTHING
                 RETURNING resource_id",
                [
                    Value::from(records.iter().map(|row| row.client_id).collect::<Vec<_>>()),
                    texts(|row| &row.idempotency_key),
                    texts(|row| &row.operation),
                    texts(|row| &row.request_fingerprint),
                    Value::from(records.iter().map(|row| row.resource_id).collect::<Vec<_>>()),
                    Value::from(records.iter().map(|row| row.created_at).collect::<Vec<_>>()),
                ],
            );
            let rows = transaction.query_all_raw(statement).await?;
            rows.iter()
                .map(|row| row.try_get::<Uuid>("", "resource_id"))
                .collect()
        }
        Backend::Sqlite => {
            let mut claimed = HashSet::with_capacity(records.len());
            for record in records {
                let inserted = idempotency_key::Entity::insert(idempotency_key::ActiveModel::from(
                    record.clone(),
                ))
                .on_conflict_do_nothing()
                .exec_without_returning(transaction)
                .await?;
                if matches!(inserted, TryInsertResult::Inserted(rows) if rows > 0) {
                    claimed.insert(record.resource_id);
                }
            }
            Ok(claimed)
        }
    }
}

/// SQLite only: the `feed_seq` of the rows this transaction inserts for `clients` into
/// `E`'s table (see the feeds migration): one more than any row of those clients so far,
/// read under the write lock that `BEGIN IMMEDIATE` took, so it follows commit order.
/// PostgreSQL fills `feed_seq` with the transaction's id by column default.
pub async fn next_feed_seq<E: EntityTrait>(
    transaction: &DatabaseTransaction,
    client_column: E::Column,
    clients: impl IntoIterator<Item = Uuid>,
) -> Result<i64, DbErr> {
    E::find()
        .select_only()
        .expr(Expr::cust("COALESCE(MAX(feed_seq), 0) + 1"))
        .filter(client_column.is_in(clients))
        .into_tuple::<i64>()
        .one(transaction)
        .await?
        .ok_or_else(|| DbErr::Custom("no feed_seq came back".to_owned()))
}

/// Inserts the payments, moves the accounts (each only from the version it was locked
/// at) and appends the entries, setting the rows' `feed_seq`. Returns how many accounts
/// moved: anything but `moves.len()` means a lock did not hold.
pub async fn write_postings(
    transaction: &DatabaseTransaction,
    backend: Backend,
    payments: &mut [payment::Model],
    moves: &[AccountMove],
    entries: &mut [ledger_entry::Model],
) -> Result<u64, DbErr> {
    match backend {
        // The column defaults set it; the statement reports which it was.
        Backend::Postgres => {
            let (moved, feed_seq) =
                write_postings_postgres(transaction, payments, moves, entries).await?;
            set_feed_seq(payments, entries, feed_seq);
            Ok(moved)
        }
        // Inserted as given.
        Backend::Sqlite => {
            let clients = payments.iter().map(|row| row.client_id);
            let feed_seq =
                next_feed_seq::<payment::Entity>(transaction, payment::Column::ClientId, clients)
                    .await?;
            set_feed_seq(payments, entries, feed_seq);
            write_postings_portable(transaction, payments, moves, entries).await
        }
    }
}

fn set_feed_seq(payments: &mut [payment::Model], entries: &mut [ledger_entry::Model], seq: i64) {
    for payment in payments {
        payment.feed_seq = seq;
    }
    for entry in entries {
        entry.feed_seq = seq;
    }
}

/// Returns the moved count and the transaction's `feed_seq`, which the column defaults
/// gave the new rows.
async fn write_postings_postgres(
    transaction: &DatabaseTransaction,
    payments: &[payment::Model],
    moves: &[AccountMove],
    entries: &[ledger_entry::Model],
) -> Result<(u64, i64), DbErr> {
    let uuids = |values: Vec<Uuid>| Value::from(values);
    let bigints = |values: Vec<i64>| Value::from(values);
    let texts = |values: Vec<String>| Value::from(values);
    let times = |values: Vec<DateTime<Utc>>| Value::from(values);
    let of_payments = |field: fn(&payment::Model) -> Uuid| payments.iter().map(field).collect();
    let of_entries = |field: fn(&ledger_entry::Model) -> Uuid| entries.iter().map(field).collect();
    // Arrays cannot carry NULLs through sea-query, so nullable text travels as text plus
    // a presence flag.
    let nullable = |field: fn(&payment::Model) -> &Option<String>| {
        let present: Vec<bool> = payments.iter().map(|row| field(row).is_some()).collect();
        let text: Vec<String> = payments
            .iter()
            .map(|row| field(row).clone().unwrap_or_default())
            .collect();
        (texts(text), Value::from(present))
    };
    let (decline_reasons, has_decline_reason) = nullable(|row| &row.decline_reason);
    let (descriptions, has_description) = nullable(|row| &row.description);
    let values = vec![
        // $1..$13: the payments
        uuids(of_payments(|row| row.id)),
        uuids(of_payments(|row| row.client_id)),
        texts(
            payments
                .iter()
                .map(|row| row.idempotency_key.clone())
                .collect(),
        ),
        uuids(of_payments(|row| row.from_account_id)),
        uuids(of_payments(|row| row.to_account_id)),
        bigints(payments.iter().map(|row| row.amount_minor).collect()),
        texts(payments.iter().map(|row| row.currency.clone()).collect()),
        texts(payments.iter().map(|row| row.status.to_value()).collect()),
        decline_reasons,
        has_decline_reason,
        descriptions,
        has_description,
        times(payments.iter().map(|row| row.created_at).collect()),
        // $14..$17: the account moves
        uuids(moves.iter().map(|row| row.id).collect()),
        bigints(moves.iter().map(|row| row.balance_minor).collect()),
        bigints(moves.iter().map(|row| row.locked_version).collect()),
        bigints(moves.iter().map(|row| row.version).collect()),
        // $18..$27: the entries
        uuids(of_entries(|row| row.id)),
        uuids(of_entries(|row| row.client_id)),
        uuids(of_entries(|row| row.account_id)),
        uuids(of_entries(|row| row.payment_id)),
        texts(entries.iter().map(|row| row.currency.clone()).collect()),
        texts(entries.iter().map(|row| row.direction.to_value()).collect()),
        bigints(entries.iter().map(|row| row.amount_minor).collect()),
        bigints(entries.iter().map(|row| row.balance_after_minor).collect()),
        bigints(entries.iter().map(|row| row.account_version).collect()),
        times(entries.iter().map(|row| row.created_at).collect()),
    ];
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH new_payments AS (
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
         ),
         moved AS (
           UPDATE accounts AS a
           SET balance_minor = m.balance_minor, version = m.version
           FROM unnest($14::uuid[], $15::int8[], $16::int8[], $17::int8[])
             AS m(id, balance_minor, locked_version, version)
           WHERE a.id = m.id AND a.version = m.locked_version
           RETURNING a.id
         ),
         new_entries AS (
           INSERT INTO ledger_entries
             (id, client_id, account_id, payment_id, currency, direction, amount_minor,
              balance_after_minor, account_version, created_at)
           SELECT * FROM unnest($18::uuid[], $19::uuid[], $20::uuid[], $21::uuid[], $22::text[],
                                $23::text[], $24::int8[], $25::int8[], $26::int8[],
                                $27::timestamptz[])
         )
         SELECT COUNT(*) AS moved, pg_current_xact_id()::text::bigint AS feed_seq FROM moved",
        values,
    );
    let row = transaction
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::Custom("the posting statement returned no row".to_owned()))?;
    let moved: i64 = row.try_get("", "moved")?;
    let feed_seq: i64 = row.try_get("", "feed_seq")?;
    Ok((u64::try_from(moved).unwrap_or(0), feed_seq))
}

async fn write_postings_portable(
    transaction: &DatabaseTransaction,
    payments: &[payment::Model],
    moves: &[AccountMove],
    entries: &[ledger_entry::Model],
) -> Result<u64, DbErr> {
    if !payments.is_empty() {
        payment::Entity::insert_many(payments.iter().cloned().map(payment::ActiveModel::from))
            .exec_without_returning(transaction)
            .await?;
    }
    // Entries before moves: the database accepts a move only over entries it can see
    // (the guards migration).
    if !entries.is_empty() {
        ledger_entry::Entity::insert_many(
            entries.iter().cloned().map(ledger_entry::ActiveModel::from),
        )
        .exec_without_returning(transaction)
        .await?;
    }
    let mut moved = 0;
    for account_move in moves {
        moved += account::Entity::update_many()
            .col_expr(
                account::Column::BalanceMinor,
                Expr::value(account_move.balance_minor),
            )
            .col_expr(account::Column::Version, Expr::value(account_move.version))
            .filter(account::Column::Id.eq(account_move.id))
            .filter(account::Column::Version.eq(account_move.locked_version))
            .exec(transaction)
            .await?
            .rows_affected;
    }
    Ok(moved)
}
