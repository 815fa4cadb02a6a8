//! The ledger service: the only code that opens write transactions.
//!
//! Payments are group-committed (`payment_batch`): concurrent payments queue
//! (`commit_queue`) and run together in one transaction that locks their accounts in id order, claims their
//! keys, decides them one after another with the pure rules in `posting`, writes, and
//! commits. Each payment keeps its own outcome: one whose key someone else owns turns
//! into a replay of that owner's outcome, one with a bad account fails alone before
//! anything is stored. A retryable conflict (serialization failure, deadlock, SQLite
//! busy) reruns the whole transaction a bounded number of times. Reads are in `reads`.

mod payment_batch;
mod reads;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use self::payment_batch::{JobOutcome, PaymentJob};
use crate::cache::Caches;
use crate::db::{Backend, WriteIsolation};
use crate::entity::{account, idempotency_key, payment};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint, IdempotencyKey};
use crate::ids::{AccountId, ClientId, PaymentId};
use crate::ledger::commit_queue::CommitQueue;
use crate::ledger::money::Currency;
use crate::ledger::posting::PaymentStatus;
use crate::ledger::requests::{NewAccount, NewPayment};
use crate::ledger::write_gate::WriteGate;
use crate::metrics::{Metrics, OperationLabels, PaymentOutcome};

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
