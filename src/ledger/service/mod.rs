//! The ledger service: the only code that opens write transactions.
//!
//! Read top-down, a payment goes: `Ledger::create_payment` (here) -> `create_once`
//! (here: the idempotent shape every creating mutation shares) -> `PaymentBatches::commit`
//! (`payment_batch`: group commit; the queue is `commit_queue`) -> `Writer::run`
//! (`write`: the in-process gate `write_gate`, the transaction and its retries) ->
//! `Batcher::attempt` (`payment_batch`: lock, check, claim keys, decide, write with the
//! statements in `batch_sql`, COMMIT). Each payment keeps its own outcome: one whose key
//! someone else owns turns into a replay of that owner's outcome, one with a bad account
//! fails alone before anything is stored. Reads are in `reads`.

mod account_changes;
mod batch_sql;
mod commit_queue;
mod known_accounts;
mod payment_batch;
mod reads;
mod write;
mod write_gate;

pub use self::account_changes::AccountChanged;
pub use self::reads::{PaymentFilter, PaymentGroup};

use std::sync::Arc;

use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, DatabaseConnection, DatabaseTransaction, EntityTrait,
};
use uuid::Uuid;

use self::payment_batch::{PaymentBatches, PaymentJob, Work};
use self::write::{WriteError, Writer, is_unique_violation};
use crate::cache::Caches;
use crate::config::WriteIsolation;
use crate::db::Backend;
use crate::entity::payment::StoredStatus;
use crate::entity::{account, payment};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint, IdempotencyKey};
use crate::ids::{AccountId, ClientId, PaymentGroupId, PaymentId};
use crate::ledger::lifecycle;
use crate::ledger::metadata::Metadata;
use crate::ledger::money::{Currency, PositiveAmount, from_minor_units};
use crate::ledger::requests::{
    NewAccount, NewCapture, NewPayment, NewPaymentGroup, NewRefund, NewVoid,
};
use crate::metrics::{Metrics, OperationLabels, PaymentOutcome};

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
    /// How long a hold lives when its request names no `holdExpiresAt`.
    pub hold_ttl: chrono::Duration,
}

/// A money movement's request: whose, its key and fingerprint, and what it creates (the
/// payment or refund, or the settlement of a hold).
struct Movement {
    client: ClientId,
    idempotency_key: IdempotencyKey,
    operation: idempotency::Operation,
    fingerprint: Fingerprint,
    resource_id: Uuid,
}

impl Movement {
    /// A capture or void: what it creates is the hold's settlement.
    fn settling(
        client: ClientId,
        idempotency_key: &IdempotencyKey,
        operation: idempotency::Operation,
        fingerprint: Fingerprint,
    ) -> Self {
        Self {
            client,
            idempotency_key: idempotency_key.clone(),
            operation,
            fingerprint,
            resource_id: Uuid::now_v7(),
        }
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

/// The ledger service. Cloned for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct Ledger(Arc<LedgerParts>);

pub struct LedgerParts {
    db: DatabaseConnection,
    hold_ttl: chrono::Duration,
    writer: Arc<Writer>,
    payments: PaymentBatches,
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
    /// `db` serves reads; `write_db`, a pool of its own, serves write transactions, so
    /// reads can never take the connections payments need.
    pub fn new(
        db: DatabaseConnection,
        write_db: DatabaseConnection,
        settings: WriteSettings,
        caches: Arc<Caches>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let writer = Arc::new(Writer::new(
            write_db,
            settings.isolation,
            Arc::clone(&metrics),
        ));
        let payments = PaymentBatches::new(
            Arc::clone(&writer),
            Arc::clone(&caches),
            Arc::clone(&metrics),
            settings.batch_max,
            settings.batches_in_flight,
        );
        Self(Arc::new(LedgerParts {
            db,
            hold_ttl: settings.hold_ttl,
            writer,
            payments,
            caches,
            metrics,
        }))
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A payment, or with `request.hold` a hold.
    #[tracing::instrument(skip_all, fields(client = %client.0, from = %request.from, to = %request.to))]
    pub async fn create_payment(
        &self,
        client: ClientId,
        request: NewPayment,
    ) -> AppResult<Created<payment::Model>> {
        let fingerprint = request.fingerprint();
        let idempotency_key = request.idempotency_key.clone();
        let hold_ttl = self.hold_ttl;
        // Inside the key's judgement: a retry of a hold made long ago replays, whatever
        // the clock says of its holdExpiresAt now.
        let prepare = async move {
            let hold_expires_at = request
                .hold
                .map(|hold| {
                    lifecycle::hold_expiry(hold.expires_at, crate::entity::stored_now(), hold_ttl)
                })
                .transpose()?;
            Ok(Work::Pay {
                request,
                hold_expires_at,
            })
        };
        let movement = Movement {
            client,
            idempotency_key,
            operation: idempotency::Operation::CreatePayment,
            fingerprint,
            resource_id: PaymentId::generate().0,
        };
        self.move_money(movement, |id| self.payment_by_id(client, id), prepare)
            .await
    }

    /// Payments (holds too) all together or none, decided in order, each against what
    /// the earlier ones left; answers the group.
    #[tracing::instrument(skip_all, fields(client = %client.0, payments = request.payments.len()))]
    pub async fn create_payments(
        &self,
        client: ClientId,
        request: NewPaymentGroup,
    ) -> AppResult<Created<PaymentGroup>> {
        let fingerprint = request.fingerprint();
        let group_id = PaymentGroupId::generate().0;
        let key = KeyUse {
            client,
            key: &request.idempotency_key,
            operation: idempotency::Operation::CreatePayments,
            fingerprint: &fingerprint,
            resource_id: group_id,
        };
        let load = |id| self.payment_group(client, id);
        let execute = async {
            let now = crate::entity::stored_now();
            let hold_expiries = request
                .payments
                .iter()
                .map(|payment| {
                    payment
                        .hold
                        .map(|hold| lifecycle::hold_expiry(hold.expires_at, now, self.hold_ttl))
                        .transpose()
                })
                .collect::<AppResult<Vec<_>>>()
                .map_err(WriteError::Invalid)?;
            let payment_ids = request
                .payments
                .iter()
                .map(|_| PaymentId::generate().0)
                .collect();
            self.payments
                .commit(PaymentJob {
                    client,
                    idempotency_key: request.idempotency_key.clone(),
                    operation: idempotency::Operation::CreatePayments,
                    fingerprint: fingerprint.clone(),
                    resource_id: group_id,
                    work: Work::Group {
                        group: request.clone(),
                        payment_ids,
                        hold_expiries,
                    },
                    span: tracing::Span::current(),
                })
                .await?;
            load(group_id)
                .await
                .map_err(WriteError::Failed)?
                .ok_or_else(|| {
                    WriteError::Failed(AppError::internal(anyhow::anyhow!(
                        "a committed group was not found"
                    )))
                })
        };
        let created = self.create_once(key, load, execute).await;
        match &created {
            Ok(created) if created.replayed => self.metrics.payment(PaymentOutcome::Replayed),
            Ok(created) => {
                for payment in &created.value.payments {
                    self.metrics.payment(payment_outcome(payment.status));
                }
            }
            Err(_) => self.metrics.payment(PaymentOutcome::Rejected),
        }
        created
    }

    /// Captures all or part of a live hold; answers the hold's payment.
    #[tracing::instrument(skip_all, fields(client = %client.0, payment = %request.payment))]
    pub async fn capture_payment(
        &self,
        client: ClientId,
        request: NewCapture,
    ) -> AppResult<Created<payment::Model>> {
        let prepare = async {
            let hold = self.hold_of(client, request.payment).await?;
            let currency = Currency::from_stored(&hold.currency)?;
            let held = hold.amount_minor;
            let amount = match request.amount {
                Some(amount) => amount.in_currency(currency)?,
                None => PositiveAmount::from_minor(held)
                    .ok_or_else(|| AppError::internal(anyhow::anyhow!("a hold of nothing")))?,
            };
            if amount.minor() > held {
                return Err(AppError::CaptureExceedsHold(format!(
                    "the capture of {} is more than the hold of {}",
                    from_minor_units(amount.minor(), currency),
                    from_minor_units(held, currency)
                )));
            }
            Ok(Work::Capture { hold, amount })
        };
        let movement = Movement::settling(
            client,
            &request.idempotency_key,
            idempotency::Operation::CapturePayment,
            request.fingerprint(),
        );
        self.move_money(movement, |id| self.payment_settled_by(client, id), prepare)
            .await
    }

    /// Releases a live hold whole; answers the hold's payment.
    #[tracing::instrument(skip_all, fields(client = %client.0, payment = %request.payment))]
    pub async fn void_payment(
        &self,
        client: ClientId,
        request: NewVoid,
    ) -> AppResult<Created<payment::Model>> {
        let prepare = async {
            let hold = self.hold_of(client, request.payment).await?;
            Ok(Work::Void { hold })
        };
        let movement = Movement::settling(
            client,
            &request.idempotency_key,
            idempotency::Operation::VoidPayment,
            request.fingerprint(),
        );
        self.move_money(movement, |id| self.payment_settled_by(client, id), prepare)
            .await
    }

    /// Gives back all or part of a posted payment as a new payment the other way.
    #[tracing::instrument(skip_all, fields(client = %client.0, payment = %request.payment))]
    pub async fn refund_payment(
        &self,
        client: ClientId,
        request: NewRefund,
    ) -> AppResult<Created<payment::Model>> {
        let original_id = request.payment;
        let prepare = async {
            let original = self.payment_of(client, original_id).await?;
            if original.refund_of.is_some() {
                return Err(AppError::bad_input(format!(
                    "payment {original_id} is a refund; refunds are not refunded (make a payment instead)"
                )));
            }
            if original.status == StoredStatus::Declined {
                return Err(AppError::RefundExceedsPayment(format!(
                    "payment {original_id} was declined and posted nothing to refund"
                )));
            }
            let currency = Currency::from_stored(&original.currency)?;
            let amount = request
                .amount
                .map(|amount| amount.in_currency(currency))
                .transpose()?;
            Ok(Work::Refund {
                original,
                amount,
                reason: request.reason.clone(),
            })
        };
        let movement = Movement {
            client,
            idempotency_key: request.idempotency_key.clone(),
            operation: idempotency::Operation::RefundPayment,
            fingerprint: request.fingerprint(),
            resource_id: PaymentId::generate().0,
        };
        self.move_money(movement, |id| self.payment_by_id(client, id), prepare)
            .await
    }

    /// The shape every money movement shares: `prepare` reads and checks what needs no
    /// lock (its refusals go through `create_once` as `Invalid`, so a key that names an
    /// earlier request still replays or says IDEMPOTENCY_KEY_REUSED), then the job goes
    /// through group commit. Payments and refunds are counted by outcome.
    async fn move_money<Load, LoadFuture>(
        &self,
        movement: Movement,
        load: Load,
        prepare: impl Future<Output = AppResult<Work>>,
    ) -> AppResult<Created<payment::Model>>
    where
        Load: Fn(Uuid) -> LoadFuture,
        LoadFuture: Future<Output = AppResult<Option<payment::Model>>>,
    {
        let Movement {
            client,
            idempotency_key,
            operation,
            fingerprint,
            resource_id,
        } = movement;
        let key = KeyUse {
            client,
            key: &idempotency_key,
            operation,
            fingerprint: &fingerprint,
            resource_id,
        };
        let execute = async {
            let work = prepare.await.map_err(WriteError::Invalid)?;
            self.payments
                .commit(PaymentJob {
                    client,
                    idempotency_key: idempotency_key.clone(),
                    operation,
                    fingerprint: fingerprint.clone(),
                    resource_id,
                    work,
                    span: tracing::Span::current(),
                })
                .await
        };
        let created = self.create_once(key, load, execute).await;
        if matches!(
            operation,
            idempotency::Operation::CreatePayment | idempotency::Operation::RefundPayment
        ) {
            self.metrics.payment(match &created {
                Ok(created) if created.replayed => PaymentOutcome::Replayed,
                Ok(created) => payment_outcome(created.value.status),
                Err(_) => PaymentOutcome::Rejected,
            });
        }
        created
    }

    async fn payment_by_id(&self, client: ClientId, id: Uuid) -> AppResult<Option<payment::Model>> {
        Ok(self.payments_by_ids(client, &[id]).await?.remove(&id))
    }

    /// The caller's payment, or NOT_FOUND.
    async fn payment_of(&self, client: ClientId, id: PaymentId) -> AppResult<payment::Model> {
        self.payments_by_ids(client, &[id.0])
            .await?
            .remove(&id.0)
            .ok_or_else(|| AppError::not_found(format!("payment {id} not found")))
    }

    /// The caller's payment if it was stored as a hold; PAYMENT_NOT_PENDING for any
    /// other payment (whether the hold is still live is for its batch to say).
    async fn hold_of(&self, client: ClientId, id: PaymentId) -> AppResult<payment::Model> {
        let payment = self.payment_of(client, id).await?;
        if payment.status != StoredStatus::Pending {
            return Err(AppError::PaymentNotPending(format!(
                "payment {id} is not a hold: it was {}",
                match payment.status {
                    StoredStatus::Declined => "declined",
                    _ => "posted when it was made",
                }
            )));
        }
        Ok(payment)
    }

    /// The hold a settlement settled.
    async fn payment_settled_by(
        &self,
        client: ClientId,
        settlement_id: Uuid,
    ) -> AppResult<Option<payment::Model>> {
        use sea_orm::{ColumnTrait, QueryFilter};
        let settlement = crate::entity::payment_settlement::Entity::find()
            .filter(crate::entity::payment_settlement::Column::Id.eq(settlement_id))
            .filter(crate::entity::payment_settlement::Column::ClientId.eq(client.0))
            .one(&self.db)
            .await?;
        let Some(settlement) = settlement else {
            return Ok(None);
        };
        Ok(self
            .payments_by_ids(client, &[settlement.payment_id])
            .await?
            .remove(&settlement.payment_id))
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
            |id| async move { Ok(self.accounts_by_ids(client, &[id]).await?.pop()) },
            self.writer.run(&[account_id.0], || async {
                let transaction = self.writer.begin().await?;
                let row = account_row(client, &request, account_id);
                let row = insert_account(&transaction, &request, &fingerprint, row).await?;
                write::commit(transaction).await?;
                Ok(row)
            }),
        )
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
        execute: impl Future<Output = Result<T, WriteError>>,
    ) -> AppResult<Created<T>>
    where
        Load: Fn(Uuid) -> LoadFuture,
        LoadFuture: Future<Output = AppResult<Option<T>>>,
    {
        let load = &load;
        let found = |resource_id: Uuid, replayed: bool| async move {
            if replayed {
                self.metrics
                    .idempotent_replays
                    .get_or_create(&OperationLabels {
                        operation: key.operation.as_str(),
                    })
                    .inc();
            }
            let value = load(resource_id).await?.ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "idempotency key names {resource_id}, which does not exist"
                ))
            })?;
            Ok(Created { value, replayed })
        };
        let replay = |resource_id: Uuid| found(resource_id, true);
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
            Err(WriteError::KeyTaken) => {
                let resource_id =
                    idempotency::find_replay(&self.db, key.client, key.key, key.fingerprint)
                        .await?
                        // The owner of the key committed, so its record is there.
                        .ok_or(AppError::RetryLater)?;
                self.caches
                    .remember_key(key.client, key.key, key.fingerprint, resource_id)
                    .await;
                // The key names what this very request would have created: its own
                // earlier attempt committed, and only the COMMIT's answer was lost.
                found(resource_id, resource_id != key.resource_id).await
            }
            Err(WriteError::Invalid(error)) => {
                match idempotency::find_replay(&self.db, key.client, key.key, key.fingerprint)
                    .await?
                {
                    Some(resource_id) => replay(resource_id).await,
                    None => Err(error),
                }
            }
            Err(error) => Err(error.into_app_error()),
        }
    }
}

fn payment_outcome(status: StoredStatus) -> PaymentOutcome {
    match status {
        StoredStatus::Posted => PaymentOutcome::Posted,
        StoredStatus::Pending => PaymentOutcome::Held,
        StoredStatus::Declined => PaymentOutcome::Declined,
    }
}

fn account_row(client: ClientId, request: &NewAccount, account_id: AccountId) -> account::Model {
    account::Model {
        id: account_id.0,
        client_id: client.0,
        currency: request.currency.code().to_owned(),
        balance_rule: request.balance_rule,
        credit_limit_minor: request.credit_limit_minor,
        external_ref: request.external_ref.clone(),
        balance_minor: 0,
        version: 0,
        pending_minor: 0,
        hold_seq: 0,
        last_entry_at: None,
        created_at: crate::entity::stored_now(),
        // Set in the inserting transaction (`insert_account`).
        feed_seq: 0,
        metadata: request.metadata.as_ref().map(Metadata::to_json),
        status: account::AccountStatus::Active,
        change_seq: 0,
    }
}

/// Claims the key and inserts the account, in the caller's transaction.
async fn insert_account(
    transaction: &DatabaseTransaction,
    request: &NewAccount,
    fingerprint: &Fingerprint,
    row: account::Model,
) -> Result<account::Model, WriteError> {
    let record = idempotency::record(
        ClientId(row.client_id),
        &request.idempotency_key,
        idempotency::Operation::CreateAccount,
        fingerprint,
        row.id,
    );
    idempotency::claim(transaction, record)
        .await
        .map_err(|error| {
            // A unique violation while claiming a key means another request owns it.
            if is_unique_violation(&error) {
                WriteError::KeyTaken
            } else {
                WriteError::Db(error)
            }
        })?;
    let mut active = account::ActiveModel::from(row.clone());
    active.feed_seq = match Backend::of(transaction) {
        // The column default, the transaction's id; RETURNING brings it back.
        Backend::Postgres => NotSet,
        Backend::Sqlite => Set(batch_sql::next_feed_seq::<account::Entity>(
            transaction,
            account::Column::ClientId,
            [row.client_id],
        )
        .await?),
    };
    let inserted = account::Entity::insert(active)
        .exec_with_returning(transaction)
        .await;
    match inserted {
        // The key is already ours, so the only unique index left is externalRef.
        Err(error) if is_unique_violation(&error) => {
            Err(WriteError::Failed(AppError::bad_input(format!(
                "externalRef {:?} is already used by another account",
                request.external_ref.as_deref().unwrap_or_default()
            ))))
        }
        other => other.map_err(WriteError::Db),
    }
}
