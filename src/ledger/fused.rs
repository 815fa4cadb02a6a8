//! PostgreSQL-only: the write path's statements fused with data-modifying CTEs, so a
//! payment costs four round trips (BEGIN, claim-and-lock, write, COMMIT) instead of six.
//! Same statements, same order, same locks as the portable path in `service`; only the
//! number of trips to the database changes. SQLite has no data-modifying CTEs and no
//! network round trips, so it keeps the portable path.

use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, EntityTrait, Statement, Value,
};
use uuid::Uuid;

use crate::entity::{account, idempotency_key, ledger_entry, payment};

/// Claims the idempotency key and locks the payment's accounts (ordered by id) in one
/// statement. A unique violation means the key is taken, as in the portable path.
pub async fn claim_key_and_lock_accounts(
    transaction: &DatabaseTransaction,
    claim: idempotency_key::Model,
    accounts: [Uuid; 2],
) -> Result<Vec<account::Model>, DbErr> {
    let client = claim.client_id;
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH claim AS (
           INSERT INTO idempotency_keys
             (client_id, idempotency_key, operation, request_fingerprint, resource_id, created_at)
           VALUES ($1, $2, $3, $4, $5, $6)
         )
         SELECT id, client_id, currency, balance_rule, credit_limit_minor, external_ref,
                balance_minor, version, created_at
         FROM accounts
         WHERE client_id = $7 AND id IN ($8, $9)
         ORDER BY id
         FOR UPDATE",
        [
            claim.client_id.into(),
            claim.idempotency_key.into(),
            claim.operation.into(),
            claim.request_fingerprint.into(),
            claim.resource_id.into(),
            claim.created_at.into(),
            client.into(),
            accounts[0].into(),
            accounts[1].into(),
        ],
    );
    account::Entity::find()
        .from_raw_sql(statement)
        .all(transaction)
        .await
}

/// Inserts a posted payment, moves both accounts (each only from the version it was
/// locked at) and inserts both entries, in one statement. Returns how many accounts
/// moved: anything but 2 means a lock did not hold.
pub async fn write_posting(
    transaction: &DatabaseTransaction,
    payment: &payment::Model,
    locked_versions: [(Uuid, i64); 2],
    entries: &[ledger_entry::Model; 2],
) -> Result<u64, DbErr> {
    let [(first, first_version), (second, second_version)] = locked_versions;
    let balance_of = |account: Uuid| {
        entries
            .iter()
            .find(|entry| entry.account_id == account)
            .map_or(0, |entry| entry.balance_after_minor)
    };
    let mut values: Vec<Value> = vec![
        // $1..$11: the payment
        payment.id.into(),
        payment.client_id.into(),
        payment.idempotency_key.clone().into(),
        payment.from_account_id.into(),
        payment.to_account_id.into(),
        payment.amount_minor.into(),
        payment.currency.clone().into(),
        payment.status.clone().into(),
        payment.decline_reason.clone().into(),
        payment.description.clone().into(),
        payment.created_at.into(),
        // $12..$17: the accounts
        first.into(),
        balance_of(first).into(),
        first_version.into(),
        second.into(),
        balance_of(second).into(),
        second_version.into(),
    ];
    for entry in entries {
        // $18..$27, $28..$37: the entries
        values.extend([
            entry.id.into(),
            entry.client_id.into(),
            entry.account_id.into(),
            entry.payment_id.into(),
            entry.currency.clone().into(),
            entry.direction.clone().into(),
            entry.amount_minor.into(),
            entry.balance_after_minor.into(),
            entry.account_version.into(),
            entry.created_at.into(),
        ]);
    }
    let statement = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "WITH new_payment AS (
           INSERT INTO payments
             (id, client_id, idempotency_key, from_account_id, to_account_id, amount_minor,
              currency, status, decline_reason, description, created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ),
         moved AS (
           UPDATE accounts
           SET balance_minor = CASE id WHEN $12 THEN $13::bigint ELSE $16::bigint END,
               version = version + 1
           WHERE (id = $12 AND version = $14) OR (id = $15 AND version = $17)
           RETURNING id
         ),
         new_entries AS (
           INSERT INTO ledger_entries
             (id, client_id, account_id, payment_id, currency, direction, amount_minor,
              balance_after_minor, account_version, created_at)
           VALUES ($18, $19, $20, $21, $22, $23, $24, $25, $26, $27),
                  ($28, $29, $30, $31, $32, $33, $34, $35, $36, $37)
         )
         SELECT COUNT(*) AS moved FROM moved",
        values,
    );
    let row = transaction
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::Custom("the posting statement returned no row".to_owned()))?;
    let moved: i64 = row.try_get("", "moved")?;
    Ok(u64::try_from(moved).unwrap_or(0))
}
