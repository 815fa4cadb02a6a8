//! The ledger service: the only code that opens write transactions.
//!
//! Payments are group-committed: concurrent payments queue (`commit_queue`) and run
//! together in one transaction that locks their accounts in id order, claims their
//! keys, decides them one after another with the pure rules in `posting`, writes, and
//! commits. Each payment keeps its own outcome: one whose key someone else owns turns
//! into a replay of that owner's outcome, one with a bad account fails alone before
//! anything is stored. A retryable conflict (serialization failure, deadlock, SQLite
//! busy) reruns the whole transaction a bounded number of times.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
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
use crate::ledger::batch_sql::{self, AccountMove};
use crate::ledger::commit_queue::{CommitQueue, Queued};
use crate::ledger::money::Currency;
use crate::ledger::posting::{
    AccountState, BalanceRule, EntryPlan, PaymentStatus, PostingPlan, plan_in_order,
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

/// How writes run: isolation and group commit.
#[derive(Debug, Clone, Copy)]
pub struct WriteSettings {
    pub isolation: WriteIsolation,
    /// The most payments one transaction carries.
    pub batch_max: usize,
    /// How many payment transactions run at once (SQLite: 1).
    pub batches_in_flight: usize,
}

/// Why a write did not take effect for one request.
enum AttemptError {
    /// Another request committed this idempotency key first.
    KeyTaken,
    /// The request cannot be carried out (unknown account, currency mismatch); nothing
    /// was stored for it.
    Invalid(AppError),
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
    payment_queue: CommitQueue<PaymentJob, JobOutcome>,
    caches: Arc<Caches>,
    metrics: Arc<Metrics>,
}

/// A payment waiting for its batch, with everything decided before the database.
struct PaymentJob {
    client: ClientId,
    request: NewPayment,
    fingerprint: Fingerprint,
    payment_id: PaymentId,
}

impl PaymentJob {
    fn key_record(&self) -> idempotency_key::Model {
        idempotency::record(
            self.client,
            &self.request.idempotency_key,
            idempotency::Operation::CreatePayment,
            &self.fingerprint,
            self.payment_id.0,
        )
    }
}

/// What a batch did for one of its payments.
enum JobOutcome {
    Committed(payment::Model, Vec<ledger_entry::Model>),
    KeyTaken,
    Invalid(AppError),
    Failed(AppError),
}

/// A committed batch: each payment's outcome, and the accounts' new balances.
struct CommittedBatch {
    outcomes: Vec<JobOutcome>,
    balances: Vec<(Uuid, VersionedBalance)>,
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
        settings: WriteSettings,
        caches: Arc<Caches>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let backend = Backend::of(&db);
        let batches_in_flight = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => settings.batches_in_flight,
        };
        Self(Arc::new(LedgerParts {
            write_gate: WriteGate::new(backend.write_lanes()),
            payment_queue: CommitQueue::new(batches_in_flight, settings.batch_max),
            db,
            backend,
            write_isolation: settings.isolation,
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
    /// from memory without touching the database. Otherwise `execute` runs the write,
    /// which claims the key in the effect's transaction; a key another request claimed
    /// first turns into a replay of that request's outcome, read from the database (the
    /// only judge). A request that cannot be carried out still answers
    /// IDEMPOTENCY_KEY_REUSED if its key already names something else.
    async fn create_once<T, Load, LoadFuture>(
        &self,
        key: KeyUse<'_>,
        load: Load,
        execute: impl Future<Output = Result<T, AttemptError>>,
    ) -> AppResult<Created<T>>
    where
        Load: Fn(Uuid) -> LoadFuture,
        LoadFuture: Future<Output = AppResult<Vec<T>>>,
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
        match execute.await {
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
            Err(AttemptError::Invalid(error)) => {
                match idempotency::find_replay(&self.db, key.client, key.key, key.fingerprint)
                    .await?
                {
                    Some(resource_id) => replay(resource_id).await,
                    None => Err(error),
                }
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
            |id| async move { self.accounts_by_ids(client, &[id]).await },
            async {
                let _lanes = self.write_gate.enter(&[account_id.0]).await;
                self.with_retries(|| {
                    self.try_create_account(client, &request, &fingerprint, account_id)
                })
                .await
            },
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
        let idempotency_key = request.idempotency_key.clone();
        let key = KeyUse {
            client,
            key: &idempotency_key,
            operation: idempotency::Operation::CreatePayment,
            fingerprint: &fingerprint,
            resource_id: payment_id.0,
        };
        let job = PaymentJob {
            client,
            request,
            fingerprint: fingerprint.clone(),
            payment_id,
        };
        let created = self
            .create_once(
                key,
                |id| async move { self.payments_by_ids(client, &[id]).await },
                self.commit_payment(job),
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

    /// Queues a payment for the next batch and waits for its outcome.
    async fn commit_payment(&self, job: PaymentJob) -> Result<payment::Model, AttemptError> {
        let ledger = self.clone();
        let outcome = self
            .payment_queue
            .submit(job, move |batch| {
                let ledger = ledger.clone();
                async move { ledger.run_payment_batch(batch).await }
            })
            .await;
        match outcome {
            Some(JobOutcome::Committed(payment, _)) => Ok(payment),
            Some(JobOutcome::KeyTaken) => Err(AttemptError::KeyTaken),
            Some(JobOutcome::Invalid(error)) => Err(AttemptError::Invalid(error)),
            Some(JobOutcome::Failed(error)) => Err(AttemptError::App(error)),
            // The batch may or may not have committed; a retry with the key will tell.
            None => Err(AttemptError::App(AppError::internal(anyhow::anyhow!(
                "a payment batch ended without answering"
            )))),
        }
    }

    /// Runs one batch and answers each of its payments. If the batch fails for a reason
    /// other than contention, its payments run again one per transaction, so one
    /// payment the database refuses cannot fail the others.
    async fn run_payment_batch(&self, batch: Vec<Queued<PaymentJob, JobOutcome>>) {
        self.metrics
            .write_batch_payments
            .observe(batch.len() as f64);
        let jobs: Vec<&PaymentJob> = batch.iter().map(|queued| &queued.job).collect();
        match self.commit_payments(&jobs).await {
            Ok(outcomes) => {
                for (queued, outcome) in batch.into_iter().zip(outcomes) {
                    queued.answer(outcome);
                }
            }
            Err(error) if batch.len() > 1 && !matches!(error, AppError::RetryLater) => {
                tracing::warn!(error = %error, payments = batch.len(), "payment batch failed; running its payments one per transaction");
                for queued in batch {
                    let outcome = match self.commit_payments(&[&queued.job]).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                            JobOutcome::Failed(AppError::internal(anyhow::anyhow!(
                                "a batch of one answered nothing"
                            )))
                        }),
                        Err(error) => JobOutcome::Failed(error),
                    };
                    queued.answer(outcome);
                }
            }
            Err(error) => {
                for queued in batch {
                    queued.answer(JobOutcome::Failed(error.clone()));
                }
            }
        }
    }

    /// One batch in one transaction (rerun on conflicts); after the commit, its payments
    /// and balances go to the caches.
    async fn commit_payments(&self, jobs: &[&PaymentJob]) -> AppResult<Vec<JobOutcome>> {
        let accounts: Vec<Uuid> = jobs
            .iter()
            .flat_map(|job| [job.request.from.0, job.request.to.0])
            .collect();
        let committed = {
            let _lanes = self.write_gate.enter(&accounts).await;
            self.with_retries(|| self.try_payment_batch(jobs)).await
        };
        let committed = match committed {
            Ok(committed) => committed,
            Err(AttemptError::App(error) | AttemptError::Invalid(error)) => return Err(error),
            Err(AttemptError::Db(error)) => return Err(error.into()),
            Err(AttemptError::KeyTaken) => {
                return Err(AppError::internal(anyhow::anyhow!(
                    "a batch cannot lose its key as a whole"
                )));
            }
        };
        for outcome in &committed.outcomes {
            if let JobOutcome::Committed(payment, entries) = outcome {
                self.caches.remember_payment(payment, entries.clone()).await;
            }
        }
        self.caches.write_through(&committed.balances).await;
        Ok(committed.outcomes)
    }

    /// One attempt at a batch: lock every account in id order, check each payment
    /// against its accounts, claim the keys of the valid ones, decide them in queue
    /// order, write everything with one statement, commit.
    async fn try_payment_batch(
        &self,
        jobs: &[&PaymentJob],
    ) -> Result<CommittedBatch, AttemptError> {
        let transaction = self.begin_write().await?;
        let mut account_ids: Vec<Uuid> = jobs
            .iter()
            .flat_map(|job| [job.request.from.0, job.request.to.0])
            .collect();
        account_ids.sort_unstable();
        account_ids.dedup();
        let locked: HashMap<Uuid, account::Model> =
            batch_sql::lock_accounts(&transaction, self.backend, &account_ids)
                .await?
                .into_iter()
                .map(|row| (row.id, row))
                .collect();

        let mut outcomes: Vec<Option<JobOutcome>> = jobs.iter().map(|_| None).collect();
        let mut claims: Vec<usize> = Vec::with_capacity(jobs.len());
        let mut keys_in_batch = HashSet::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            if let Err(error) = check_accounts(job, &locked) {
                outcomes[index] = Some(JobOutcome::Invalid(error));
            } else if !keys_in_batch.insert((job.client, job.request.idempotency_key.as_str())) {
                // The same key twice in one batch: the first claims it, the second
                // replays it once the batch has committed.
                outcomes[index] = Some(JobOutcome::KeyTaken);
            } else {
                claims.push(index);
            }
        }
        // Keys are inserted in one global order, so two batches holding some of the
        // same keys wait for each other in one direction only.
        claims.sort_by(|&a, &b| {
            (jobs[a].client.0, jobs[a].request.idempotency_key.as_str())
                .cmp(&(jobs[b].client.0, jobs[b].request.idempotency_key.as_str()))
        });
        let records: Vec<idempotency_key::Model> = claims
            .iter()
            .map(|&index| jobs[index].key_record())
            .collect();
        let owned = batch_sql::claim_keys(&transaction, self.backend, &records)
            .await
            .map_err(AttemptError::Db)?;
        let mut to_post = Vec::with_capacity(claims.len());
        for (index, job) in jobs.iter().enumerate() {
            if outcomes[index].is_none() {
                if owned.contains(&job.payment_id.0) {
                    to_post.push(index);
                } else {
                    outcomes[index] = Some(JobOutcome::KeyTaken);
                }
            }
        }

        let mut states = HashMap::with_capacity(locked.len());
        for row in locked.values() {
            states.insert(row.id, account_state(row)?);
        }
        let plans = plan_in_order(
            &mut states,
            to_post.iter().map(|&index| {
                let request = &jobs[index].request;
                (request.from.0, request.to.0, request.amount)
            }),
        );
        let now = Utc::now();
        let mut payments = Vec::with_capacity(to_post.len());
        let mut entries = Vec::with_capacity(to_post.len() * 2);
        for (&index, plan) in to_post.iter().zip(plans) {
            let plan = plan.ok_or_else(|| {
                AppError::internal(anyhow::anyhow!("a checked payment has no locked accounts"))
            })?;
            let payment = payment_row(jobs[index], &plan, now);
            let payment_entries = match plan {
                PostingPlan::Post { debit, credit } => {
                    entry_rows(&payment, [debit, credit]).to_vec()
                }
                PostingPlan::Decline(_) => Vec::new(),
            };
            entries.extend(payment_entries.iter().cloned());
            payments.push(payment.clone());
            outcomes[index] = Some(JobOutcome::Committed(payment, payment_entries));
        }
        let moves: Vec<AccountMove> = states
            .iter()
            .filter_map(|(id, state)| {
                let locked_version = locked.get(id)?.version;
                (state.version != locked_version).then_some(AccountMove {
                    id: *id,
                    locked_version,
                    balance_minor: state.balance_minor,
                    version: state.version,
                })
            })
            .collect();
        if !payments.is_empty() {
            let moved =
                batch_sql::write_postings(&transaction, self.backend, &payments, &moves, &entries)
                    .await?;
            // The version conditions can only fail if a row lock did not hold: a bug,
            // and committing would break "version = entry count".
            if moved != moves.len() as u64 {
                return Err(AppError::internal(anyhow::anyhow!(
                    "{} of {} accounts changed while locked",
                    moves.len() as u64 - moved.min(moves.len() as u64),
                    moves.len()
                ))
                .into());
            }
        }
        transaction.commit().await?;
        let balances = moves
            .iter()
            .map(|row| {
                (
                    row.id,
                    VersionedBalance {
                        balance_minor: row.balance_minor,
                        version: row.version,
                    },
                )
            })
            .collect();
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    JobOutcome::Failed(AppError::internal(anyhow::anyhow!(
                        "a payment in a batch got no outcome"
                    )))
                })
            })
            .collect();
        Ok(CommittedBatch { outcomes, balances })
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

/// A payment's own check against its locked accounts: both exist, are the caller's,
/// and hold the payment's currency. Accounts never change owner or currency, so a
/// payment that fails here fails the same way every time.
fn check_accounts(job: &PaymentJob, locked: &HashMap<Uuid, account::Model>) -> AppResult<()> {
    for id in [job.request.from, job.request.to] {
        let account = locked
            .get(&id.0)
            .filter(|account| account.client_id == job.client.0)
            .ok_or_else(|| AppError::not_found(format!("account {id} not found")))?;
        if account.currency != job.request.currency.code() {
            return Err(AppError::CurrencyMismatch(format!(
                "payment is in {} but account {id} holds {}",
                job.request.currency, account.currency
            )));
        }
    }
    Ok(())
}

fn payment_row(job: &PaymentJob, plan: &PostingPlan, now: chrono::DateTime<Utc>) -> payment::Model {
    let (status, decline_reason) = match plan {
        PostingPlan::Post { .. } => (PaymentStatus::Posted, None),
        PostingPlan::Decline(reason) => (PaymentStatus::Declined, Some(reason.as_str().to_owned())),
    };
    let request = &job.request;
    payment::Model {
        id: job.payment_id.0,
        client_id: job.client.0,
        idempotency_key: request.idempotency_key.as_str().to_owned(),
        from_account_id: request.from.0,
        to_account_id: request.to.0,
        amount_minor: request.amount.minor(),
        currency: request.currency.code().to_owned(),
        status: status.as_str().to_owned(),
        decline_reason,
        description: request.description.clone(),
        created_at: now,
    }
}

/// The two entries of a posting: the debit on the source, the credit on the destination.
fn entry_rows(
    payment: &payment::Model,
    [debit, credit]: [EntryPlan; 2],
) -> [ledger_entry::Model; 2] {
    [
        (payment.from_account_id, debit),
        (payment.to_account_id, credit),
    ]
    .map(|(account_id, entry)| ledger_entry::Model {
        id: LedgerEntryId::generate().0,
        client_id: payment.client_id,
        account_id,
        payment_id: payment.id,
        currency: payment.currency.clone(),
        direction: entry.direction.as_str().to_owned(),
        amount_minor: entry.amount_minor,
        balance_after_minor: entry.balance_after_minor,
        account_version: entry.account_version,
        created_at: payment.created_at,
    })
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
