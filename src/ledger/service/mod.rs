//! The ledger service: the only code that opens write transactions.
//!
//! Read top-down, a payment goes: `Ledger::create_payment` (here) -> `move_money` (here:
//! the shape every money movement shares) -> `create_once` (here: the idempotent shape
//! every creating mutation shares, around a `KeyedRequest`) -> `PaymentBatches::commit`
//! (`batch`: group commit, the queue being `commit_queue`) -> `Batcher::run` (`batch`:
//! the ladder from one trip to one job at a time, each transaction run by `write`'s
//! `Writer`) -> `batch::decide` and `batch::rows` (pure) and `batch::store` (the
//! statements). Each payment keeps its own outcome: one whose key someone else owns
//! turns into a replay of that owner's outcome, one with a bad account fails alone
//! before anything is stored. Reads are in `reads`; account changes in
//! `account_changes`.

mod account_changes;
mod batch;
mod bulk;
mod commit_queue;
mod keyed;
mod known_accounts;
mod reads;
mod write;
mod write_gate;

pub use self::account_changes::AccountChanged;
pub use self::bulk::ItemOutcome;
pub use self::reads::{PaymentFilter, PaymentGroup};

use std::sync::Arc;

use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, DatabaseConnection, DatabaseTransaction, EntityTrait,
};
use uuid::Uuid;

use self::batch::{BatchStore, Job, PaymentBatches, Work, next_feed_seq, store_for};
use self::keyed::KeyedRequest;
use self::write::{WriteError, Writer, is_unique_violation};
use crate::cache::Caches;
use crate::config::WriteIsolation;
use crate::db::Backend;
use crate::db::replicas::ReplicaSet;
use crate::entity::payment::StoredStatus;
use crate::entity::{account, payment};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Operation};
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
    /// The most payments one `createPaymentBatch` carries.
    pub payment_batch_max: usize,
    /// How long a hold lives when its request names no `holdExpiresAt`.
    pub hold_ttl: chrono::Duration,
    /// Whether a batch of plain payments may go as one statement outside a transaction,
    /// at the write pool's default isolation; not behind a transaction-mode pooler,
    /// where no session default of the server's holds.
    pub one_statement_batches: bool,
}

/// The ledger service. Cloned for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct Ledger(Arc<LedgerParts>);

pub struct LedgerParts {
    db: DatabaseConnection,
    /// Replicas for the reads that may lag (`reads::Ledger::lagging_read`).
    replicas: Option<Arc<ReplicaSet>>,
    hold_ttl: chrono::Duration,
    payment_batch_max: usize,
    writer: Arc<Writer>,
    /// The database's side of a write: row locks and key claims (`batch::store`).
    store: Box<dyn BatchStore>,
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
        replicas: Option<Arc<ReplicaSet>>,
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
            settings.one_statement_batches,
        );
        Self(Arc::new(LedgerParts {
            db,
            replicas,
            hold_ttl: settings.hold_ttl,
            payment_batch_max: settings.payment_batch_max,
            store: store_for(writer.backend()),
            writer,
            payments,
            caches,
            metrics,
        }))
    }

    /// The pool write transactions run on; it runs nothing but transactions.
    pub fn write_connection(&self) -> &DatabaseConnection {
        self.writer.connection()
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
        let keyed = KeyedRequest {
            client,
            key: request.idempotency_key.clone(),
            operation: Operation::CreatePayment,
            fingerprint: request.fingerprint(),
            resource_id: PaymentId::generate().0,
        };
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
        let load = |id| self.payment_by_id(client, id);
        self.move_money(keyed, load, prepare, async |payment| Ok(payment))
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
        let group_id = PaymentGroupId::generate().0;
        let keyed = KeyedRequest {
            client,
            key: request.idempotency_key.clone(),
            operation: Operation::CreatePayments,
            fingerprint: request.fingerprint(),
            resource_id: group_id,
        };
        let hold_ttl = self.hold_ttl;
        let prepare = async move {
            let now = crate::entity::stored_now();
            let hold_expiries = request
                .payments
                .iter()
                .map(|payment| {
                    payment
                        .hold
                        .map(|hold| lifecycle::hold_expiry(hold.expires_at, now, hold_ttl))
                        .transpose()
                })
                .collect::<AppResult<Vec<_>>>()?;
            let payment_ids = request
                .payments
                .iter()
                .map(|_| PaymentId::generate().0)
                .collect();
            Ok(Work::Group {
                group: request,
                payment_ids,
                hold_expiries,
            })
        };
        let load = |id| self.payment_group(client, id);
        // The batch answers a group's first payment; the group is read back whole.
        let answer = async |_first_payment| {
            load(group_id)
                .await
                .map_err(WriteError::Failed)?
                .ok_or_else(|| {
                    WriteError::Failed(AppError::internal(anyhow::anyhow!(
                        "a committed group was not found"
                    )))
                })
        };
        self.move_money(keyed, load, prepare, answer).await
    }

    /// Captures all or part of a live hold; answers the hold's payment.
    #[tracing::instrument(skip_all, fields(client = %client.0, payment = %request.payment))]
    pub async fn capture_payment(
        &self,
        client: ClientId,
        request: NewCapture,
    ) -> AppResult<Created<payment::Model>> {
        let keyed = KeyedRequest::settling(
            client,
            &request.idempotency_key,
            Operation::CapturePayment,
            request.fingerprint(),
        );
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
        let load = |id| self.payment_settled_by(client, id);
        self.move_money(keyed, load, prepare, async |hold| Ok(hold))
            .await
    }

    /// Releases a live hold whole; answers the hold's payment.
    #[tracing::instrument(skip_all, fields(client = %client.0, payment = %request.payment))]
    pub async fn void_payment(
        &self,
        client: ClientId,
        request: NewVoid,
    ) -> AppResult<Created<payment::Model>> {
        let keyed = KeyedRequest::settling(
            client,
            &request.idempotency_key,
            Operation::VoidPayment,
            request.fingerprint(),
        );
        let prepare = async {
            let hold = self.hold_of(client, request.payment).await?;
            Ok(Work::Void { hold })
        };
        let load = |id| self.payment_settled_by(client, id);
        self.move_money(keyed, load, prepare, async |hold| Ok(hold))
            .await
    }

    /// Gives back all or part of a posted payment as a new payment the other way.
    #[tracing::instrument(skip_all, fields(client = %client.0, payment = %request.payment))]
    pub async fn refund_payment(
        &self,
        client: ClientId,
        request: NewRefund,
    ) -> AppResult<Created<payment::Model>> {
        let keyed = KeyedRequest {
            client,
            key: request.idempotency_key.clone(),
            operation: Operation::RefundPayment,
            fingerprint: request.fingerprint(),
            resource_id: PaymentId::generate().0,
        };
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
        let load = |id| self.payment_by_id(client, id);
        self.move_money(keyed, load, prepare, async |refund| Ok(refund))
            .await
    }

    /// The shape every money movement shares: `prepare` reads and checks what needs no
    /// lock (its refusals go through `create_once` as `Invalid`, so a key that names an
    /// earlier request still replays or says IDEMPOTENCY_KEY_REUSED), the job goes
    /// through group commit, and `answer` turns the payment the batch answered into
    /// what the request answers. Payments, refunds and groups are counted by outcome.
    async fn move_money<T, Load, LoadFuture>(
        &self,
        keyed: KeyedRequest,
        load: Load,
        prepare: impl Future<Output = AppResult<Work>>,
        answer: impl AsyncFnOnce(payment::Model) -> Result<T, WriteError>,
    ) -> AppResult<Created<T>>
    where
        T: PaymentStatuses,
        Load: Fn(Uuid) -> LoadFuture,
        LoadFuture: Future<Output = AppResult<Option<T>>>,
    {
        let execute = async {
            let work = prepare.await.map_err(WriteError::Invalid)?;
            let job = Job {
                request: keyed.clone(),
                work,
                span: tracing::Span::current(),
            };
            let committed = self.payments.commit(job).await?;
            answer(committed).await
        };
        let created = self.create_once(&keyed, load, execute).await;
        if matches!(
            keyed.operation,
            Operation::CreatePayment | Operation::RefundPayment | Operation::CreatePayments
        ) {
            match &created {
                Ok(created) if created.replayed => self.metrics.payment(PaymentOutcome::Replayed),
                Ok(created) => {
                    for status in created.value.statuses() {
                        self.metrics.payment(payment_outcome(status));
                    }
                }
                Err(_) => self.metrics.payment(PaymentOutcome::Rejected),
            }
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
        let account_id = AccountId::generate();
        let keyed = KeyedRequest {
            client,
            key: request.idempotency_key.clone(),
            operation: Operation::CreateAccount,
            fingerprint: request.fingerprint(),
            resource_id: account_id.0,
        };
        let created = self
            .create_once(
                &keyed,
                |id| async move { Ok(self.accounts_by_ids(client, &[id]).await?.pop()) },
                self.writer.run(&[account_id.0], || async {
                    let transaction = self.writer.begin().await?;
                    claim_key(self.store.as_ref(), &transaction, &keyed).await?;
                    let row = account_row(client, &request, account_id);
                    let row = insert_account(&transaction, &request, row).await?;
                    write::commit(transaction).await?;
                    Ok(row)
                }),
            )
            .await?;
        if !created.replayed {
            self.caches.write_through(&[], &[client.0]).await;
        }
        Ok(created)
    }

    /// The shape every creating mutation shares. A key this instance has seen replays
    /// from memory without touching the database. Otherwise `execute` runs the write,
    /// which claims the key in the effect's transaction; a key another request claimed
    /// first turns into a replay of that request's outcome, read from the database (the
    /// only judge). A request that cannot be carried out still answers
    /// IDEMPOTENCY_KEY_REUSED if its key already names something else.
    async fn create_once<T, Load, LoadFuture>(
        &self,
        key: &KeyedRequest,
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
                self.count_replay(key.operation);
            }
            let value = load(resource_id).await?.ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "idempotency key names {resource_id}, which does not exist"
                ))
            })?;
            Ok(Created { value, replayed })
        };
        let replay = |resource_id: Uuid| found(resource_id, true);
        if let Some((fingerprint, resource_id)) = self.caches.known_key(key.client, &key.key).await
        {
            if fingerprint != key.fingerprint {
                return Err(AppError::IdempotencyKeyReused);
            }
            return replay(resource_id).await;
        }
        match execute.await {
            Ok(value) => {
                self.caches
                    .remember_key(key.client, &key.key, &key.fingerprint, key.resource_id)
                    .await;
                Ok(Created {
                    value,
                    replayed: false,
                })
            }
            Err(WriteError::KeyTaken) => {
                let resource_id =
                    idempotency::find_replay(&self.db, key.client, &key.key, &key.fingerprint)
                        .await?
                        // The owner of the key committed, so its record is there.
                        .ok_or(AppError::RetryLater)?;
                self.caches
                    .remember_key(key.client, &key.key, &key.fingerprint, resource_id)
                    .await;
                // The key names what this very request would have created: its own
                // earlier attempt committed, and only the COMMIT's answer was lost.
                found(resource_id, resource_id != key.resource_id).await
            }
            Err(WriteError::Invalid(error)) => {
                match idempotency::find_replay(&self.db, key.client, &key.key, &key.fingerprint)
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

impl Ledger {
    fn count_replay(&self, operation: Operation) {
        self.metrics
            .idempotent_replays
            .get_or_create(&OperationLabels {
                operation: operation.as_str(),
            })
            .inc();
    }
}

/// Claims `keyed`'s key in the caller's transaction: `KeyTaken` when another request
/// owns it (the caller rolls back and replays that request's outcome). The one way
/// every write claims a key; a batch claims many at once the same way.
async fn claim_key(
    store: &dyn BatchStore,
    transaction: &DatabaseTransaction,
    keyed: &KeyedRequest,
) -> Result<(), WriteError> {
    let owned = store.claim_keys(transaction, &[keyed.record()]).await?;
    if owned.contains(&keyed.resource_id) {
        Ok(())
    } else {
        Err(WriteError::KeyTaken)
    }
}

/// What a money movement answers, as the payments it counts by outcome.
trait PaymentStatuses {
    fn statuses(&self) -> Vec<StoredStatus>;
}

impl PaymentStatuses for payment::Model {
    fn statuses(&self) -> Vec<StoredStatus> {
        vec![self.status]
    }
}

impl PaymentStatuses for PaymentGroup {
    fn statuses(&self) -> Vec<StoredStatus> {
        self.payments.iter().map(|payment| payment.status).collect()
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

/// Inserts the account, in the caller's transaction (which claimed its key).
async fn insert_account(
    transaction: &DatabaseTransaction,
    request: &NewAccount,
    row: account::Model,
) -> Result<account::Model, WriteError> {
    let mut active = account::ActiveModel::from(row.clone());
    active.feed_seq = match Backend::of(transaction) {
        // The column default, the transaction's id; RETURNING brings it back.
        Backend::Postgres => NotSet,
        Backend::Sqlite => Set(next_feed_seq::<account::Entity>(
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
