//! Account lifecycle: `updateAccount`, `freezeAccount`, `unfreezeAccount` and
//! `closeAccount`. Each locks the account row (so it orders with every payment batch
//! that touches the account), decides with `account_lifecycle::plan_change`, claims its
//! key, records the change and moves the account's settings, in one transaction.

use sea_orm::sea_query::{Expr, ExprTrait, Query, SimpleExpr};
use sea_orm::{
    ActiveEnum, ColumnTrait, DatabaseTransaction, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::batch::{AccountClaim, BatchStore};
use super::keyed::KeyedRequest;
use super::write::{self, WriteError, is_unique_violation};
use super::{Created, Ledger, claim_key};
use crate::cache::VersionedBalance;
use crate::db::Backend;
use crate::entity::account_change;
use crate::entity::{account, live_hold, payment};
use crate::error::{AppError, AppResult};
use crate::ids::{AccountId, ClientId};
use crate::ledger::account_lifecycle::{Holdings, NewAccountChange, plan_change};

/// A recorded change and the account as it is now.
#[derive(Debug, Clone)]
pub struct AccountChanged {
    pub change: account_change::Model,
    pub account: account::Model,
}

impl Ledger {
    #[tracing::instrument(skip_all, fields(client = %client.0, account = %request.account))]
    pub async fn change_account(
        &self,
        client: ClientId,
        request: NewAccountChange,
    ) -> AppResult<Created<AccountChanged>> {
        let keyed = KeyedRequest {
            client,
            key: request.idempotency_key.clone(),
            operation: request.operation(),
            fingerprint: request.fingerprint(),
            resource_id: Uuid::now_v7(),
        };
        let accounts = [request.account.0];
        let execute = self.writer.run(&accounts, || async {
            let transaction = self.writer.begin().await?;
            let changed =
                record_change(self.store.as_ref(), &transaction, &keyed, &request).await?;
            write::commit(transaction).await?;
            Ok(changed)
        });
        let created = self
            .create_once(&keyed, |id| self.account_change(client, id), execute)
            .await?;
        if !created.replayed {
            let account = &created.value.account;
            self.caches.account_changed(account).await;
            self.caches
                .write_through(
                    &[(
                        account.id,
                        VersionedBalance::posted(
                            account.balance_minor,
                            account.version,
                            account.hold_seq,
                        ),
                    )],
                    &[client.0],
                )
                .await;
        }
        Ok(created)
    }

    /// A change of the caller's, with its account as it is now.
    async fn account_change(
        &self,
        client: ClientId,
        id: Uuid,
    ) -> AppResult<Option<AccountChanged>> {
        let Some(change) = account_change::Entity::find_by_id(id)
            .filter(account_change::Column::ClientId.eq(client.0))
            .one(&self.db)
            .await?
        else {
            return Ok(None);
        };
        let account = self
            .accounts_by_ids(client, &[change.account_id])
            .await?
            .pop()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("a change without its account")))?;
        Ok(Some(AccountChanged { change, account }))
    }

    /// An account's recorded changes, oldest first.
    pub async fn account_changes(
        &self,
        client: ClientId,
        account: AccountId,
    ) -> AppResult<Vec<account_change::Model>> {
        Ok(account_change::Entity::find()
            .filter(account_change::Column::ClientId.eq(client.0))
            .filter(account_change::Column::AccountId.eq(account.0))
            .order_by_asc(account_change::Column::ChangeSeq)
            .all(&self.db)
            .await?)
    }
}

/// Locks, decides, claims the key, records the change and moves the account.
async fn record_change(
    store: &dyn BatchStore,
    transaction: &DatabaseTransaction,
    keyed: &KeyedRequest,
    request: &NewAccountChange,
) -> Result<AccountChanged, WriteError> {
    let client = keyed.client;
    let backend = Backend::of(transaction);
    let claim = AccountClaim {
        id: request.account.0,
        client: client.0,
    };
    let locked = store
        .lock_accounts(transaction, &[claim])
        .await?
        .into_iter()
        .find(|row| row.client_id == client.0)
        .ok_or_else(|| {
            WriteError::Invalid(AppError::not_found(format!(
                "account {} not found",
                request.account
            )))
        })?;
    let closing = matches!(
        request.change,
        crate::ledger::account_lifecycle::ChangeRequest::Close
    );
    let holdings = if closing {
        holdings(transaction, backend, locked.id).await?
    } else {
        Holdings::default()
    };
    let settings = plan_change(&locked, &request.change, holdings).map_err(WriteError::Invalid)?;
    claim_key(store, transaction, keyed).await?;
    // Closing releases the holds that expired on it, so it holds nothing once closed.
    let released = closing && locked.pending_minor > 0;
    if released {
        live_hold::Entity::delete_many()
            .filter(live_hold::Column::AccountId.eq(locked.id))
            .filter(Expr::col(live_hold::Column::ExpiresAt).lte(clock(backend)))
            .exec(transaction)
            .await?;
    }
    let change = account_change::Model {
        id: keyed.resource_id,
        client_id: client.0,
        account_id: locked.id,
        change_seq: locked.change_seq + 1,
        kind: settings.kind,
        idempotency_key: request.idempotency_key.as_str().to_owned(),
        old_status: locked.status,
        new_status: settings.status,
        old_credit_limit_minor: locked.credit_limit_minor,
        new_credit_limit_minor: settings.credit_limit_minor,
        old_external_ref: locked.external_ref.clone(),
        new_external_ref: settings.external_ref.clone(),
        created_at: crate::entity::stored_now(),
    };
    account_change::Entity::insert(account_change::ActiveModel::from(change.clone()))
        .exec_without_returning(transaction)
        .await?;
    let account = account::Model {
        status: settings.status,
        credit_limit_minor: settings.credit_limit_minor,
        external_ref: settings.external_ref,
        change_seq: change.change_seq,
        pending_minor: if released { 0 } else { locked.pending_minor },
        hold_seq: locked.hold_seq + i64::from(released),
        ..locked.clone()
    };
    move_settings(transaction, &locked, &account).await?;
    Ok(AccountChanged { change, account })
}

/// Writes the account's new settings (and, on closing, its released holds), from the
/// change sequence it was locked at.
async fn move_settings(
    transaction: &DatabaseTransaction,
    locked: &account::Model,
    account: &account::Model,
) -> Result<(), WriteError> {
    let moved = account::Entity::update_many()
        .col_expr(
            account::Column::Status,
            Expr::value(account.status.to_value()),
        )
        .col_expr(
            account::Column::CreditLimitMinor,
            Expr::value(account.credit_limit_minor),
        )
        .col_expr(
            account::Column::ExternalRef,
            Expr::value(account.external_ref.clone()),
        )
        .col_expr(account::Column::ChangeSeq, Expr::value(account.change_seq))
        .col_expr(
            account::Column::PendingMinor,
            Expr::value(account.pending_minor),
        )
        .col_expr(account::Column::HoldSeq, Expr::value(account.hold_seq))
        .filter(account::Column::Id.eq(locked.id))
        .filter(account::Column::ChangeSeq.eq(locked.change_seq))
        .exec(transaction)
        .await;
    match moved {
        Ok(done) if done.rows_affected == 1 => Ok(()),
        Ok(_) => Err(AppError::internal(anyhow::anyhow!(
            "account {} changed while locked",
            AccountId(locked.id)
        ))
        .into()),
        // The only unique index the update can break is the external ref's.
        Err(error) if is_unique_violation(&error) => {
            Err(WriteError::Failed(AppError::bad_input(format!(
                "externalRef {:?} is already used by another account",
                account.external_ref.as_deref().unwrap_or_default()
            ))))
        }
        Err(error) => Err(WriteError::Db(error)),
    }
}

/// The database's clock where expiry is judged by it (PostgreSQL, as the payment
/// batches do), this process's on SQLite (one process writes).
fn clock(backend: Backend) -> SimpleExpr {
    match backend {
        Backend::Postgres => Expr::cust("clock_timestamp()"),
        Backend::Sqlite => Expr::value(crate::entity::stored_now()),
    }
}

/// The live holds from and to `account`, under its lock.
async fn holdings(
    transaction: &DatabaseTransaction,
    backend: Backend,
    account: Uuid,
) -> Result<Holdings, WriteError> {
    let live_holds_from = live_hold::Entity::find()
        .filter(live_hold::Column::AccountId.eq(account))
        .filter(Expr::col(live_hold::Column::ExpiresAt).gt(clock(backend)))
        .count(transaction)
        .await?;
    let live_holds_to = payment::Entity::find()
        .filter(payment::Column::ToAccountId.eq(account))
        .filter(payment::Column::Status.eq(payment::StoredStatus::Pending))
        .filter(
            payment::Column::Id.in_subquery(
                Query::select()
                    .column(live_hold::Column::PaymentId)
                    .from(live_hold::Entity)
                    .and_where(Expr::col(live_hold::Column::ExpiresAt).gt(clock(backend)))
                    .to_owned(),
            ),
        )
        .select_only()
        .column(payment::Column::Id)
        .count(transaction)
        .await?;
    Ok(Holdings {
        live_holds_from,
        live_holds_to,
    })
}
