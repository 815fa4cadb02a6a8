//! The batch's steps on SQLite, row by row through sea-orm: it runs in process, so
//! statements cost no round trips, and its one writer makes row locks moot.

use std::collections::HashSet;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TryInsertResult,
};
use uuid::Uuid;

use super::super::decide::BatchContext;
use super::super::rows::{AccountMove, BatchRows};
use super::{AccountClaim, BatchStore, OneTripAnswer};
use crate::entity::payment_settlement::SettlementKind;
use crate::entity::{
    account, idempotency_key, ledger_entry, live_hold, payment, payment_group, payment_metadata,
    payment_settlement,
};

pub(super) struct Sqlite;

#[async_trait::async_trait]
impl BatchStore for Sqlite {
    /// One writer and no row locks: the file lock is already the whole database's, and
    /// `decide::screen` refuses accounts of other clients.
    async fn lock_accounts(
        &self,
        transaction: &DatabaseTransaction,
        claims: &[AccountClaim],
    ) -> Result<Vec<account::Model>, DbErr> {
        account::Entity::find()
            .filter(account::Column::Id.is_in(claims.iter().map(|claim| claim.id)))
            .order_by_asc(account::Column::Id)
            .lock_exclusive()
            .all(transaction)
            .await
    }

    async fn read_context(
        &self,
        transaction: &DatabaseTransaction,
        held_accounts: &[Uuid],
        holds: &[Uuid],
        originals: &[Uuid],
    ) -> Result<BatchContext, DbErr> {
        let mut context = BatchContext::at(crate::entity::stored_now());
        let now = context.now;
        for hold in live_hold::Entity::find()
            .filter(live_hold::Column::AccountId.is_in(held_accounts.iter().copied()))
            .all(transaction)
            .await?
        {
            let pending = context.pending.entry(hold.account_id).or_default();
            if crate::ledger::lifecycle::is_live(hold.expires_at, now) {
                pending.sum_minor += hold.amount_minor;
                pending.next_expiry = Some(
                    pending
                        .next_expiry
                        .map_or(hold.expires_at, |next| next.min(hold.expires_at)),
                );
            } else {
                pending.has_expired = true;
            }
        }
        for hold in live_hold::Entity::find()
            .filter(live_hold::Column::PaymentId.is_in(holds.iter().copied()))
            .all(transaction)
            .await?
        {
            context.live_holds.insert(hold.payment_id, hold.expires_at);
        }
        for refund in payment::Entity::find()
            .filter(payment::Column::RefundOf.is_in(originals.iter().copied()))
            .filter(payment::Column::Status.eq(payment::StoredStatus::Posted))
            .all(transaction)
            .await?
        {
            if let Some(original) = refund.refund_of {
                *context.refunded.entry(original).or_default() += refund.amount_minor;
            }
        }
        for settlement in payment_settlement::Entity::find()
            .filter(payment_settlement::Column::PaymentId.is_in(originals.iter().copied()))
            .filter(payment_settlement::Column::Kind.eq(SettlementKind::Capture))
            .all(transaction)
            .await?
        {
            context
                .captured
                .insert(settlement.payment_id, settlement.amount_minor);
        }
        Ok(context)
    }

    async fn claim_keys(
        &self,
        transaction: &DatabaseTransaction,
        records: &[idempotency_key::Model],
    ) -> Result<HashSet<Uuid>, DbErr> {
        let mut claimed = HashSet::with_capacity(records.len());
        for record in records {
            let inserted =
                idempotency_key::Entity::insert(idempotency_key::ActiveModel::from(record.clone()))
                    .on_conflict_do_nothing()
                    .exec_without_returning(transaction)
                    .await?;
            if matches!(inserted, TryInsertResult::Inserted(rows) if rows > 0) {
                claimed.insert(record.resource_id);
            }
        }
        Ok(claimed)
    }

    /// Inserted as given. A capture writes entries without a payment, so the next
    /// position follows both the payments and the entries of the batch's clients.
    async fn write(
        &self,
        transaction: &DatabaseTransaction,
        rows: &mut BatchRows,
    ) -> Result<u64, DbErr> {
        let clients: Vec<Uuid> = rows
            .payments
            .iter()
            .map(|row| row.client_id)
            .chain(rows.entries.iter().map(|row| row.client_id))
            .collect();
        let feed_seq = next_feed_seq::<payment::Entity>(
            transaction,
            payment::Column::ClientId,
            clients.iter().copied(),
        )
        .await?
        .max(
            next_feed_seq::<ledger_entry::Entity>(
                transaction,
                ledger_entry::Column::ClientId,
                clients,
            )
            .await?,
        );
        rows.set_feed_seq(feed_seq);
        write_rows(transaction, rows).await
    }

    fn has_one_trip(&self) -> bool {
        false
    }

    async fn write_in_one_trip(
        &self,
        _connection: &DatabaseConnection,
        _rows: &mut BatchRows,
        _decided_on: &[account::Model],
        _keys: &[idempotency_key::Model],
    ) -> Result<OneTripAnswer, DbErr> {
        Err(DbErr::Custom(
            "SQLite has no one-statement batch: it has no round trips to save".to_owned(),
        ))
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

/// The batch's rows, table by table. Settlements and entries before the moves: the
/// database accepts a move only over entries it can see, of payments that posted (the
/// guards migrations).
async fn write_rows(transaction: &DatabaseTransaction, rows: &BatchRows) -> Result<u64, DbErr> {
    let writes = &rows.writes;
    insert_all::<payment_group::ActiveModel, _>(transaction, &writes.groups).await?;
    insert_all::<payment::ActiveModel, _>(transaction, &rows.payments).await?;
    insert_all::<payment_metadata::ActiveModel, _>(transaction, &writes.pairs).await?;
    insert_all::<payment_settlement::ActiveModel, _>(transaction, &writes.settlements).await?;
    if !writes.settled.is_empty() {
        live_hold::Entity::delete_many()
            .filter(live_hold::Column::PaymentId.is_in(writes.settled.iter().copied()))
            .exec(transaction)
            .await?;
    }
    if let (false, Some(expired_at)) = (writes.expired_on.is_empty(), writes.expired_at) {
        live_hold::Entity::delete_many()
            .filter(live_hold::Column::AccountId.is_in(writes.expired_on.iter().copied()))
            .filter(live_hold::Column::ExpiresAt.lte(expired_at))
            .exec(transaction)
            .await?;
    }
    insert_all::<live_hold::ActiveModel, _>(transaction, &writes.placed).await?;
    insert_all::<ledger_entry::ActiveModel, _>(transaction, &rows.entries).await?;
    let mut moved = 0;
    for account_move in &rows.moves {
        moved += move_account(transaction, account_move).await?;
    }
    Ok(moved)
}

/// Inserts `rows`, if any, in one statement.
async fn insert_all<Active, Row>(
    transaction: &DatabaseTransaction,
    rows: &[Row],
) -> Result<(), DbErr>
where
    Active: ActiveModelTrait + From<Row> + Send,
    Row: Clone,
{
    if rows.is_empty() {
        return Ok(());
    }
    Active::Entity::insert_many(rows.iter().cloned().map(Active::from))
        .exec_without_returning(transaction)
        .await
        .map(drop)
}

/// Moves one account from the version and hold sequence it was locked at; 1 if it
/// moved.
async fn move_account(
    transaction: &DatabaseTransaction,
    account_move: &AccountMove,
) -> Result<u64, DbErr> {
    Ok(account::Entity::update_many()
        .col_expr(
            account::Column::BalanceMinor,
            Expr::value(account_move.balance_minor),
        )
        .col_expr(account::Column::Version, Expr::value(account_move.version))
        .col_expr(
            account::Column::LastEntryAt,
            Expr::value(account_move.last_entry_at),
        )
        .col_expr(
            account::Column::PendingMinor,
            Expr::value(account_move.pending_minor),
        )
        .col_expr(account::Column::HoldSeq, Expr::value(account_move.hold_seq))
        .filter(account::Column::Id.eq(account_move.id))
        .filter(account::Column::Version.eq(account_move.locked_version))
        .filter(account::Column::HoldSeq.eq(account_move.locked_hold_seq))
        .exec(transaction)
        .await?
        .rows_affected)
}
