//! The ledger service: the only code that opens write transactions.
//!
//! Every write follows one shape: claim the idempotency key, lock the accounts it
//! touches in id order, decide with the pure rules in `posting`, write, commit. A
//! retryable conflict (serialization failure, deadlock, SQLite busy) reruns the whole
//! transaction a bounded number of times; a key someone else already claimed turns
//! into a replay of their outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use crate::cache::{Caches, VersionedBalance};
use crate::db::{Backend, WriteIsolation};
use crate::entity::{account, idempotency_key, ledger_entry, payment};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint, IdempotencyKey};
use crate::ids::{AccountId, ClientId, LedgerEntryId, PaymentId};
use crate::ledger::fused;
use crate::ledger::money::Currency;
use crate::ledger::posting::{
    AccountState, BalanceRule, EntryPlan, PaymentStatus, PostingPlan, plan_posting,
};
use crate::ledger::requests::{NewAccount, NewPayment};
use crate::ledger::write_gate::WriteGate;
use crate::metrics::{Metrics, OperationLabels, PaymentOutcome};
use crate::pagination::{Page, PageRequest, fetch_page};

/// How many times one write transaction is attempted before the client is told to retry.
const WRITE_ATTEMPTS_MAX: u32 = 12;
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(2);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// The result of a creating mutation: the object, and whether it existed already.
#[derive(Debug, Clone)]
pub struct Created<T> {
    pub value: T,
    pub replayed: bool,
}

/// Why one attempt at a write transaction did not commit.
enum AttemptError {
    /// Another request committed this idempotency key first.
    KeyTaken,
    App(AppError),
    Db(DbErr),
}

impl From<DbErr> for AttemptError {
    fn from(error: DbErr) -> Self {
        Self::Db(error)
    }
}

impl From<AppError> for AttemptError {
    fn from(error: AppError) -> Self {
        Self::App(error)
    }
}

/// One request's use of an idempotency key: whose, for what, and what it would create.
#[derive(Clone, Copy)]
struct KeyUse<'a> {
    client: ClientId,
    key: &'a IdempotencyKey,
    operation: idempotency::Operation,
    fingerprint: &'a Fingerprint,
    resource_id: Uuid,
}

fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// The ledger service. Cloned for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct Ledger(Arc<LedgerParts>);

pub struct LedgerParts {
    db: DatabaseConnection,
    backend: Backend,
    write_isolation: WriteIsolation,
    write_gate: WriteGate,
    caches: Arc<Caches>,
    metrics: Arc<Metrics>,
}

impl std::ops::Deref for Ledger {
    type Target = LedgerParts;

    fn deref(&self) -> &LedgerParts {
        &self.0
    }
}

impl Ledger {
    pub fn new(
        db: DatabaseConnection,
        write_isolation: WriteIsolation,
        caches: Arc<Caches>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let backend = Backend::of(&db);
        Self(Arc::new(LedgerParts {
            write_gate: WriteGate::new(backend.write_lanes()),
            db,
            backend,
            write_isolation,
            caches,
            metrics,
        }))
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Runs one write transaction, again while it fails in a retryable way.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T, AttemptError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, AttemptError>>,
    {
        let mut attempt_number = 1;
        loop {
            match attempt().await {
                Err(AttemptError::Db(error)) if self.backend.is_retryable(&error) => {
                    if attempt_number >= WRITE_ATTEMPTS_MAX {
                        self.metrics.write_retries_exhausted.inc();
                        tracing::warn!(error = %error, attempts = attempt_number, "write retries exhausted");
                        return Err(AttemptError::App(AppError::RetryLater));
                    }
                    self.metrics.write_retries.inc();
                    tracing::debug!(error = %error, attempt = attempt_number, "retrying write");
                    tokio::time::sleep(retry_backoff(attempt_number)).await;
                    attempt_number += 1;
                }
                other => return other,
            }
        }
    }

    async fn begin_write(&self) -> Result<DatabaseTransaction, DbErr> {
        self.db
            .begin_with_options(self.backend.write_transaction_options(self.write_isolation))
            .await
    }

    /// The shape every creating mutation shares. A key this instance has seen replays
    /// from memory without touching the database. Otherwise: queue for the touched
    /// accounts and run the attempt with retries; its first statement claims the key,
    /// and a key another request claimed first turns into a replay of that request's
    /// outcome, read from the database (the only judge).
    async fn create_once<T, Load, LoadFuture, Attempt, AttemptFuture>(
        &self,
        key: KeyUse<'_>,
        accounts: &[Uuid],
        load: Load,
        attempt: Attempt,
    ) -> AppResult<Created<T>>
    where
        Load: Fn(Uuid) -> LoadFuture,
        LoadFuture: Future<Output = AppResult<Vec<T>>>,
        Attempt: FnMut() -> AttemptFuture,
        AttemptFuture: Future<Output = Result<T, AttemptError>>,
    {
        let replay = |resource_id: Uuid| async move {
            self.metrics
                .idempotent_replays
                .get_or_create(&OperationLabels {
                    operation: key.operation.as_str(),
                })
                .inc();
            let value = load(resource_id).await?.into_iter().next().ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "idempotency key names {resource_id}, which does not exist"
                ))
            })?;
            Ok(Created {
                value,
                replayed: true,
            })
        };
        if let Some((fingerprint, resource_id)) = self.caches.known_key(key.client, key.key).await {
            if &fingerprint != key.fingerprint {
                return Err(AppError::IdempotencyKeyReused);
            }
            return replay(resource_id).await;
        }
        let _lanes = self.write_gate.enter(accounts).await;
        match self.with_retries(attempt).await {
            Ok(value) => {
                self.caches
                    .remember_key(key.client, key.key, key.fingerprint, key.resource_id)
                    .await;
                Ok(Created {
                    value,
                    replayed: false,
                })
            }
            Err(AttemptError::KeyTaken) => {
                let resource_id =
                    idempotency::find_replay(&self.db, key.client, key.key, key.fingerprint)
                        .await?
                        // The owner of the key committed, so its record is there.
                        .ok_or(AppError::RetryLater)?;
                self.caches
                    .remember_key(key.client, key.key, key.fingerprint, resource_id)
                    .await;
                replay(resource_id).await
            }
            Err(AttemptError::App(error)) => Err(error),
            Err(AttemptError::Db(error)) => Err(error.into()),
        }
    }

    #[tracing::instrument(skip_all, fields(client = %client.0))]
    pub async fn create_account(
        &self,
        client: ClientId,
        request: NewAccount,
    ) -> AppResult<Created<account::Model>> {
        let fingerprint = request.fingerprint();
        let account_id = AccountId::generate();
        let key = KeyUse {
            client,
            key: &request.idempotency_key,
            operation: idempotency::Operation::CreateAccount,
            fingerprint: &fingerprint,
            resource_id: account_id.0,
        };
        self.create_once(
            key,
            &[account_id.0],
            |id| async move { self.accounts_by_ids(client, &[id]).await },
            || self.try_create_account(client, &request, &fingerprint, account_id),
        )
        .await
    }

    async fn try_create_account(
        &self,
        client: ClientId,
        request: &NewAccount,
        fingerprint: &Fingerprint,
        account_id: AccountId,
    ) -> Result<account::Model, AttemptError> {
        let transaction = self.begin_write().await?;
        let record = idempotency::record(
            client,
            &request.idempotency_key,
            idempotency::Operation::CreateAccount,
            fingerprint,
            account_id.0,
        );
        claim_key(&transaction, record).await?;
        let model = account::Model {
            id: account_id.0,
            client_id: client.0,
            currency: request.currency.code().to_owned(),
            balance_rule: request.balance_rule.as_str().to_owned(),
            credit_limit_minor: request.credit_limit_minor,
            external_ref: request.external_ref.clone(),
            balance_minor: 0,
            version: 0,
            created_at: Utc::now(),
        };
        let inserted = account::Entity::insert(account::ActiveModel::from(model.clone()))
            .exec_without_returning(&transaction)
            .await;
        match inserted {
            // The key is already ours, so the only unique index left is externalRef.
            Err(error) if is_unique_violation(&error) => {
                return Err(AppError::bad_input(format!(
                    "externalRef {:?} is already used by another account",
                    request.external_ref.as_deref().unwrap_or_default()
                ))
                .into());
            }
            other => other?,
        };
        transaction.commit().await?;
        Ok(model)
    }

    #[tracing::instrument(skip_all, fields(client = %client.0, from = %request.from, to = %request.to))]
    pub async fn create_payment(
        &self,
        client: ClientId,
        request: NewPayment,
    ) -> AppResult<Created<payment::Model>> {
        let fingerprint = request.fingerprint();
        let payment_id = PaymentId::generate();
        let key = KeyUse {
            client,
            key: &request.idempotency_key,
            operation: idempotency::Operation::CreatePayment,
            fingerprint: &fingerprint,
            resource_id: payment_id.0,
        };
        let created = self
            .create_once(
                key,
                &[request.from.0, request.to.0],
                |id| async move { self.payments_by_ids(client, &[id]).await },
                || self.try_create_payment(client, &request, &fingerprint, payment_id),
            )
            .await;
        self.metrics.payment(match &created {
            Ok(created) if created.replayed => PaymentOutcome::Replayed,
            Ok(created) if created.value.status == PaymentStatus::Posted.as_str() => {
                PaymentOutcome::Posted
            }
            Ok(_) => PaymentOutcome::Declined,
            Err(_) => PaymentOutcome::Rejected,
        });
        created
    }

    async fn try_create_payment(
        &self,
        client: ClientId,
        request: &NewPayment,
        fingerprint: &Fingerprint,
        payment_id: PaymentId,
    ) -> Result<payment::Model, AttemptError> {
        let transaction = self.begin_write().await?;
        let record = idempotency::record(
            client,
            &request.idempotency_key,
            idempotency::Operation::CreatePayment,
            fingerprint,
            payment_id.0,
        );
        let locked = self
            .claim_key_and_lock_accounts(&transaction, record, [request.from.0, request.to.0])
            .await?;
        let find = |id: AccountId| {
            locked
                .iter()
                .find(|account| account.id == id.0)
                .ok_or_else(|| AppError::not_found(format!("account {id} not found")))
        };
        let source = find(request.from)?;
        let destination = find(request.to)?;
        for account in [source, destination] {
            if account.currency != request.currency.code() {
                return Err(AppError::CurrencyMismatch(format!(
                    "payment is in {} but account {} holds {}",
                    request.currency,
                    AccountId(account.id),
                    account.currency
                ))
                .into());
            }
        }

        let plan = plan_posting(
            account_state(source)?,
            account_state(destination)?,
            request.amount,
        );
        let now = Utc::now();
        let (status, decline_reason) = match plan {
            PostingPlan::Post { .. } => (PaymentStatus::Posted, None),
            PostingPlan::Decline(reason) => (PaymentStatus::Declined, Some(reason)),
        };
        let payment = payment::Model {
            id: payment_id.0,
            client_id: client.0,
            idempotency_key: request.idempotency_key.as_str().to_owned(),
            from_account_id: request.from.0,
            to_account_id: request.to.0,
            amount_minor: request.amount.minor(),
            currency: request.currency.code().to_owned(),
            status: status.as_str().to_owned(),
            decline_reason: decline_reason.map(|reason| reason.as_str().to_owned()),
            description: request.description.clone(),
            created_at: now,
        };
        let entries = match plan {
            PostingPlan::Post { debit, credit } => {
                let postings = [(source, debit), (destination, credit)];
                let entries = entry_rows(&payment, &postings);
                let moved = self
                    .write_posting(&transaction, &payment, &postings, &entries)
                    .await?;
                // The version conditions can only fail if a row lock did not hold: a
                // bug, and committing would break "version = entry count".
                if moved != 2 {
                    return Err(AppError::internal(anyhow::anyhow!(
                        "accounts of payment {payment_id} changed while locked"
                    ))
                    .into());
                }
                entries.to_vec()
            }
            PostingPlan::Decline(_) => {
                payment::Entity::insert(payment::ActiveModel::from(payment.clone()))
                    .exec_without_returning(&transaction)
                    .await?;
                Vec::new()
            }
        };
        transaction.commit().await?;
        self.after_payment_commit(&payment, entries).await;
        Ok(payment)
    }

    /// Claims the key, then locks both accounts in id order (a foreign or unknown
    /// account is simply not returned). On PostgreSQL in one statement.
    async fn claim_key_and_lock_accounts(
        &self,
        transaction: &DatabaseTransaction,
        record: idempotency_key::Model,
        accounts: [Uuid; 2],
    ) -> Result<Vec<account::Model>, AttemptError> {
        if self.backend == Backend::Postgres {
            return fused::claim_key_and_lock_accounts(transaction, record, accounts)
                .await
                .map_err(claim_error);
        }
        let client = record.client_id;
        claim_key(transaction, record).await?;
        // Ordered by id: every transaction locks accounts in the same order, so two
        // payments between the same pair of accounts cannot deadlock.
        Ok(account::Entity::find()
            .filter(account::Column::ClientId.eq(client))
            .filter(account::Column::Id.is_in(accounts))
            .order_by_asc(account::Column::Id)
            .lock_exclusive()
            .all(transaction)
            .await?)
    }

    /// Writes a posted payment, both balances and both entries; returns how many
    /// accounts moved. On PostgreSQL in one statement.
    async fn write_posting(
        &self,
        transaction: &DatabaseTransaction,
        payment: &payment::Model,
        postings: &[(&account::Model, EntryPlan); 2],
        entries: &[ledger_entry::Model; 2],
    ) -> Result<u64, DbErr> {
        if self.backend == Backend::Postgres {
            let locked_versions = postings.map(|(account, _)| (account.id, account.version));
            return fused::write_posting(transaction, payment, locked_versions, entries).await;
        }
        write_posting_portable(transaction, payment, postings, entries).await
    }

    /// A committed payment is final: remember it, and spread its accounts' new
    /// balances to L1, L2 and every other instance.
    async fn after_payment_commit(
        &self,
        payment: &payment::Model,
        entries: Vec<ledger_entry::Model>,
    ) {
        let balances: Vec<(Uuid, VersionedBalance)> = entries
            .iter()
            .map(|entry| {
                (
                    entry.account_id,
                    VersionedBalance {
                        balance_minor: entry.balance_after_minor,
                        version: entry.account_version,
                    },
                )
            })
            .collect();
        self.caches.remember_payment(payment, entries).await;
        self.caches.write_through(&balances).await;
    }

    /// Accounts read from the database now, balances included; their balances also
    /// refresh L1.
    pub async fn accounts_by_ids(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<Vec<account::Model>> {
        let rows = account::Entity::find()
            .filter(account::Column::ClientId.eq(client.0))
            .filter(account::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?;
        self.observe_balances(&rows).await;
        Ok(rows)
    }

    async fn observe_balances(&self, rows: &[account::Model]) {
        for row in rows {
            self.caches
                .put_l1_balance(
                    row.id,
                    VersionedBalance {
                        balance_minor: row.balance_minor,
                        version: row.version,
                    },
                )
                .await;
        }
    }

    /// Account settings (everything but the balance, which never comes from here), from
    /// L1 or the database.
    pub async fn account_settings(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, account::Model>> {
        let mut found = self
            .caches
            .accounts(ids, |missing| async move {
                let rows = self.accounts_by_ids(client, &missing).await?;
                Ok(rows.into_iter().map(|row| (row.id, row)).collect())
            })
            .await?;
        found.retain(|_, row| row.client_id == client.0);
        Ok(found)
    }

    /// One account's settings if L1 has them, checked against the tenant.
    pub async fn peek_account_settings(
        &self,
        client: ClientId,
        id: AccountId,
    ) -> Option<account::Model> {
        self.caches
            .peek_account(id.0)
            .await
            .filter(|row| row.client_id == client.0)
    }

    /// One account's balance if L1 has it. Only for accounts already known to be the
    /// caller's.
    pub async fn peek_balance(&self, id: AccountId) -> Option<VersionedBalance> {
        self.caches.peek_balance(id.0).await
    }

    /// Balances through L1, L2 and the database.
    pub async fn cached_balances(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, VersionedBalance>> {
        self.caches
            .balances(ids, |missing| async move {
                let rows: Vec<(Uuid, i64, i64)> = account::Entity::find()
                    .select_only()
                    .columns([
                        account::Column::Id,
                        account::Column::BalanceMinor,
                        account::Column::Version,
                    ])
                    .filter(account::Column::ClientId.eq(client.0))
                    .filter(account::Column::Id.is_in(missing))
                    .into_tuple()
                    .all(&self.db)
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(|(id, balance_minor, version)| {
                        (
                            id,
                            VersionedBalance {
                                balance_minor,
                                version,
                            },
                        )
                    })
                    .collect())
            })
            .await
    }

    /// Balances read from the database now, bypassing every cache.
    pub async fn strong_balances(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, VersionedBalance>> {
        let rows = self.accounts_by_ids(client, ids).await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                (
                    row.id,
                    VersionedBalance {
                        balance_minor: row.balance_minor,
                        version: row.version,
                    },
                )
            })
            .collect())
    }

    pub async fn payments_by_ids(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<Vec<payment::Model>> {
        let found = self
            .caches
            .payments(ids, |missing| async move {
                let rows = payment::Entity::find()
                    .filter(payment::Column::ClientId.eq(client.0))
                    .filter(payment::Column::Id.is_in(missing))
                    .all(&self.db)
                    .await?;
                Ok(rows.into_iter().map(|row| (row.id, row)).collect())
            })
            .await?;
        Ok(found
            .into_values()
            .filter(|row| row.client_id == client.0)
            .collect())
    }

    pub async fn entries_by_ids(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<Vec<ledger_entry::Model>> {
        let found = self
            .caches
            .entries(ids, |missing| async move {
                let rows = ledger_entry::Entity::find()
                    .filter(ledger_entry::Column::ClientId.eq(client.0))
                    .filter(ledger_entry::Column::Id.is_in(missing))
                    .all(&self.db)
                    .await?;
                Ok(rows.into_iter().map(|row| (row.id, row)).collect())
            })
            .await?;
        Ok(found
            .into_values()
            .filter(|row| row.client_id == client.0)
            .collect())
    }

    /// Entries of several payments, debit before credit within each. Only call with
    /// ids of payments that exist: an unknown id is remembered as "no entries".
    pub async fn entries_by_payment_ids(
        &self,
        client: ClientId,
        payment_ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, Arc<Vec<ledger_entry::Model>>>> {
        let mut found = self
            .caches
            .payment_entries(payment_ids, |missing| async move {
                let rows = ledger_entry::Entity::find()
                    .filter(ledger_entry::Column::ClientId.eq(client.0))
                    .filter(ledger_entry::Column::PaymentId.is_in(missing.iter().copied()))
                    .order_by_desc(ledger_entry::Column::Direction)
                    .all(&self.db)
                    .await?;
                let mut grouped: HashMap<Uuid, Vec<ledger_entry::Model>> =
                    missing.into_iter().map(|id| (id, Vec::new())).collect();
                for row in rows {
                    grouped.entry(row.payment_id).or_default().push(row);
                }
                Ok(grouped
                    .into_iter()
                    .map(|(id, entries)| (id, Arc::new(entries)))
                    .collect())
            })
            .await?;
        found.retain(|_, entries| entries.iter().all(|entry| entry.client_id == client.0));
        Ok(found)
    }

    pub async fn payment_by_idempotency_key(
        &self,
        client: ClientId,
        key: &IdempotencyKey,
    ) -> AppResult<Option<payment::Model>> {
        Ok(payment::Entity::find()
            .filter(payment::Column::ClientId.eq(client.0))
            .filter(payment::Column::IdempotencyKey.eq(key.as_str()))
            .one(&self.db)
            .await?)
    }

    pub async fn account_by_external_ref(
        &self,
        client: ClientId,
        external_ref: &str,
    ) -> AppResult<Option<account::Model>> {
        let row = account::Entity::find()
            .filter(account::Column::ClientId.eq(client.0))
            .filter(account::Column::ExternalRef.eq(external_ref))
            .one(&self.db)
            .await?;
        self.observe_balances(row.as_slice()).await;
        Ok(row)
    }

    /// Fails with NOT_FOUND unless `account` belongs to `client`.
    async fn require_account(&self, client: ClientId, account: AccountId) -> AppResult<()> {
        if self
            .account_settings(client, &[account.0])
            .await?
            .contains_key(&account.0)
        {
            Ok(())
        } else {
            Err(AppError::not_found(format!("account {account} not found")))
        }
    }

    pub async fn list_accounts(
        &self,
        client: ClientId,
        page: &PageRequest<Uuid>,
    ) -> AppResult<Page<account::Model>> {
        let select = account::Entity::find().filter(account::Column::ClientId.eq(client.0));
        let page = fetch_page(&self.db, select, account::Column::Id, page).await?;
        self.observe_balances(&page.rows).await;
        Ok(page)
    }

    pub async fn list_payments(
        &self,
        client: ClientId,
        account: Option<AccountId>,
        page: &PageRequest<Uuid>,
    ) -> AppResult<Page<payment::Model>> {
        let mut select = payment::Entity::find().filter(payment::Column::ClientId.eq(client.0));
        if let Some(account) = account {
            self.require_account(client, account).await?;
            select = select.filter(
                Condition::any()
                    .add(payment::Column::FromAccountId.eq(account.0))
                    .add(payment::Column::ToAccountId.eq(account.0)),
            );
        }
        Ok(fetch_page(&self.db, select, payment::Column::Id, page).await?)
    }

    /// An account's entries in posting order (by account version): a poller that
    /// follows the cursor sees every entry exactly once.
    pub async fn list_entries(
        &self,
        client: ClientId,
        account: AccountId,
        page: &PageRequest<i64>,
    ) -> AppResult<Page<ledger_entry::Model>> {
        self.require_account(client, account).await?;
        let select = ledger_entry::Entity::find()
            .filter(ledger_entry::Column::AccountId.eq(account.0))
            .filter(ledger_entry::Column::ClientId.eq(client.0));
        Ok(fetch_page(&self.db, select, ledger_entry::Column::AccountVersion, page).await?)
    }
}

async fn claim_key(
    transaction: &DatabaseTransaction,
    record: idempotency_key::Model,
) -> Result<(), AttemptError> {
    idempotency::claim(transaction, record)
        .await
        .map_err(claim_error)
}

/// A unique violation while claiming a key means another request owns it.
fn claim_error(error: DbErr) -> AttemptError {
    if is_unique_violation(&error) {
        AttemptError::KeyTaken
    } else {
        AttemptError::Db(error)
    }
}

/// The two entries of a posting.
fn entry_rows(
    payment: &payment::Model,
    postings: &[(&account::Model, EntryPlan); 2],
) -> [ledger_entry::Model; 2] {
    postings.map(|(account, entry)| ledger_entry::Model {
        id: LedgerEntryId::generate().0,
        client_id: payment.client_id,
        account_id: account.id,
        payment_id: payment.id,
        currency: payment.currency.clone(),
        direction: entry.direction.as_str().to_owned(),
        amount_minor: entry.amount_minor,
        balance_after_minor: entry.balance_after_minor,
        account_version: entry.account_version,
        created_at: payment.created_at,
    })
}

/// Inserts a posted payment, moves both accounts to their entries' balances and versions
/// and appends the two entries: one statement each, on any backend. Returns how many
/// accounts moved.
async fn write_posting_portable(
    transaction: &DatabaseTransaction,
    payment: &payment::Model,
    postings: &[(&account::Model, EntryPlan); 2],
    entries: &[ledger_entry::Model; 2],
) -> Result<u64, DbErr> {
    // In scope here only: it gives every type `min` and `max`.
    use sea_orm::sea_query::ExprTrait as _;
    payment::Entity::insert(payment::ActiveModel::from(payment.clone()))
        .exec_without_returning(transaction)
        .await?;
    let new_value = |value: fn(&EntryPlan) -> i64| {
        let [(first, first_entry), (second, second_entry)] = postings;
        Expr::case(account::Column::Id.eq(first.id), value(first_entry))
            .case(account::Column::Id.eq(second.id), value(second_entry))
            .finally(Expr::val(0_i64))
    };
    let mut matches_locked_version = Condition::any();
    for (account, entry) in postings {
        matches_locked_version = matches_locked_version.add(
            account::Column::Id
                .eq(account.id)
                .and(account::Column::Version.eq(entry.account_version - 1)),
        );
    }
    let updated = account::Entity::update_many()
        .col_expr(
            account::Column::BalanceMinor,
            new_value(|entry| entry.balance_after_minor).into(),
        )
        .col_expr(
            account::Column::Version,
            new_value(|entry| entry.account_version).into(),
        )
        .filter(matches_locked_version)
        .exec(transaction)
        .await?;
    ledger_entry::Entity::insert_many(entries.iter().cloned().map(ledger_entry::ActiveModel::from))
        .exec_without_returning(transaction)
        .await?;
    Ok(updated.rows_affected)
}

fn account_state(account: &account::Model) -> AppResult<AccountState> {
    let rule = stored_value(
        BalanceRule::from_db(&account.balance_rule),
        "balance rule",
        &account.balance_rule,
    )?;
    Ok(AccountState {
        rule,
        credit_limit_minor: account.credit_limit_minor,
        balance_minor: account.balance_minor,
        version: account.version,
    })
}

/// Stored values were valid when written; one that no longer parses is a bug.
pub fn stored_value<T>(parsed: Option<T>, what: &str, stored: &str) -> AppResult<T> {
    parsed
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("stored {what} {stored:?} is not valid")))
}

pub fn stored_currency(code: &str) -> AppResult<Currency> {
    Currency::parse(code)
        .map_err(|_| AppError::internal(anyhow::anyhow!("stored currency {code:?} is not valid")))
}

/// Exponential backoff with full jitter, so retrying requests spread out.
fn retry_backoff(attempt_number: u32) -> Duration {
    let ceiling = RETRY_BACKOFF_BASE
        .saturating_mul(1 << attempt_number.min(16))
        .min(RETRY_BACKOFF_MAX);
    let ceiling_micros = u64::try_from(ceiling.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_micros(rand::rng().random_range(0..ceiling_micros))
}
