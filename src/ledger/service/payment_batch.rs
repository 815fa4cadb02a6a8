//! Group commit for payments: a batch of queued payments in one transaction.
//!
//! Lock every account of the batch in id order, check each payment against its
//! accounts, claim the valid payments' keys, decide them in queue order against the
//! balances the earlier ones left, write everything with one statement, commit. Each
//! payment keeps its own outcome; docs/consistency.md ("Group commit") argues why no
//! guarantee is weaker than with one transaction per payment.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use tracing::Instrument;
use uuid::Uuid;

use super::batch_sql::{self, AccountClaim, AccountMove};
use super::commit_queue::{CommitQueue, Queued};
use super::write::{self, WriteError, Writer};
use crate::cache::{Caches, VersionedBalance};
use crate::db::Backend;
use crate::entity::{account, idempotency_key, ledger_entry, payment};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint};
use crate::ids::{ClientId, LedgerEntryId, PaymentId};
use crate::ledger::posting::{AccountState, EntryPlan, PaymentStatus, PostingPlan, plan_in_order};
use crate::ledger::requests::NewPayment;
use crate::metrics::Metrics;

/// A payment waiting for its batch, with everything decided before the database.
pub(super) struct PaymentJob {
    pub(super) client: ClientId,
    pub(super) request: NewPayment,
    pub(super) fingerprint: Fingerprint,
    pub(super) payment_id: PaymentId,
    /// The request's span, so what the batch logs about this payment carries the
    /// request's id.
    pub(super) span: tracing::Span,
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

/// What a batch did for one of its payments: the committed payment, or why not.
pub(super) type CommitResult = Result<payment::Model, WriteError>;

/// A committed batch: each payment's outcome, the payments it wrote with their entries
/// (for L1), and the accounts' new balances (for the write-through).
struct CommittedBatch {
    outcomes: Vec<CommitResult>,
    decided: Vec<(payment::Model, Vec<ledger_entry::Model>)>,
    balances: Vec<(Uuid, VersionedBalance)>,
}

/// Group commit for one instance: the queue payments wait in, and what runs a batch.
pub(super) struct PaymentBatches {
    queue: CommitQueue<PaymentJob, CommitResult>,
    batcher: Arc<Batcher>,
}

/// Runs batches. Shared with the task each batch runs on.
struct Batcher {
    writer: Arc<Writer>,
    caches: Arc<Caches>,
    metrics: Arc<Metrics>,
}

impl PaymentBatches {
    /// `batches_in_flight` is forced to 1 on SQLite, whose single writer would only make
    /// more batches wait for each other.
    pub(super) fn new(
        writer: Arc<Writer>,
        caches: Arc<Caches>,
        metrics: Arc<Metrics>,
        batch_max: usize,
        batches_in_flight: usize,
    ) -> Self {
        let batches_in_flight = match writer.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => batches_in_flight,
        };
        Self {
            queue: CommitQueue::new(batches_in_flight, batch_max),
            batcher: Arc::new(Batcher {
                writer,
                caches,
                metrics,
            }),
        }
    }

    /// Queues a payment for the next batch and waits for its outcome.
    pub(super) async fn commit(&self, job: PaymentJob) -> CommitResult {
        let batcher = Arc::clone(&self.batcher);
        self.queue
            .submit(job, move |batch| {
                let batcher = Arc::clone(&batcher);
                // A batch serves many requests; what it logs about one payment is
                // logged in that payment's own span (`PaymentJob::span`).
                let span =
                    tracing::info_span!(parent: None, "payment_batch", payments = batch.len());
                async move { batcher.run(batch).await }.instrument(span)
            })
            .await
            // The batch may or may not have committed; a retry with the key will tell.
            .unwrap_or_else(|| {
                Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
                    "a payment batch ended without answering"
                ))))
            })
    }
}

impl Batcher {
    /// Runs one batch and answers each of its payments. If the batch fails for a reason
    /// other than contention, its payments run again one per transaction, so one
    /// payment the database refuses cannot fail the others.
    async fn run(&self, batch: Vec<Queued<PaymentJob, CommitResult>>) {
        self.metrics
            .write_batch_payments
            .observe(batch.len() as f64);
        let jobs: Vec<&PaymentJob> = batch.iter().map(|queued| &queued.job).collect();
        match self.commit(&jobs).await {
            Ok(outcomes) => {
                for (queued, outcome) in batch.into_iter().zip(outcomes) {
                    queued.answer(outcome);
                }
            }
            Err(error) if batch.len() > 1 && splits_batch(&error) => {
                for queued in &batch {
                    queued.job.span.in_scope(|| {
                        tracing::warn!(error = ?error, payments = batch.len(), "payment batch failed; running its payments one per transaction");
                    });
                }
                for queued in batch {
                    let outcome = match self.commit(&[&queued.job]).await {
                        Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| {
                            Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
                                "a batch of one answered nothing"
                            ))))
                        }),
                        Err(error) => {
                            queued.job.span.in_scope(|| {
                                tracing::warn!(error = ?error, "payment failed alone");
                            });
                            Err(WriteError::Failed(error.into_app_error()))
                        }
                    };
                    queued.answer(outcome);
                }
            }
            Err(error) => {
                let error = error.into_app_error();
                for queued in batch {
                    queued.job.span.in_scope(|| {
                        tracing::warn!(error = %error, "payment batch not committed");
                    });
                    queued.answer(Err(WriteError::Failed(error.clone())));
                }
            }
        }
    }

    /// One batch in one transaction (rerun on conflicts); after the commit, its payments
    /// and balances go to the caches.
    async fn commit(&self, jobs: &[&PaymentJob]) -> Result<Vec<CommitResult>, WriteError> {
        // Sorted and distinct: the order in which the transaction locks them.
        let mut claims: Vec<AccountClaim> = jobs
            .iter()
            .flat_map(|job| {
                [job.request.from, job.request.to].map(|account| AccountClaim {
                    id: account.0,
                    client: job.client.0,
                })
            })
            .collect();
        claims.sort_unstable();
        claims.dedup();
        let mut accounts: Vec<Uuid> = claims.iter().map(|claim| claim.id).collect();
        accounts.dedup();
        let committed = self
            .writer
            .run(&accounts, || self.attempt(jobs, &claims))
            .await?;
        for (payment, entries) in committed.decided {
            self.caches.remember_payment(&payment, entries).await;
        }
        self.caches.write_through(&committed.balances).await;
        Ok(committed.outcomes)
    }

    /// One attempt at a batch: lock every account in id order, check each payment
    /// against its accounts, claim the keys of the valid ones, decide them in queue
    /// order, write everything with one statement, commit.
    async fn attempt(
        &self,
        jobs: &[&PaymentJob],
        claims: &[AccountClaim],
    ) -> Result<CommittedBatch, WriteError> {
        let backend = self.writer.backend();
        let transaction = self.writer.begin().await?;
        let locked: HashMap<Uuid, account::Model> =
            batch_sql::lock_accounts(&transaction, backend, claims)
                .await?
                .into_iter()
                .map(|row| (row.id, row))
                .collect();

        let mut outcomes: Vec<Option<CommitResult>> = jobs.iter().map(|_| None).collect();
        let mut claims: Vec<usize> = Vec::with_capacity(jobs.len());
        let mut keys_in_batch = HashSet::with_capacity(jobs.len());
        for (index, job) in jobs.iter().enumerate() {
            if let Err(error) = check_accounts(job, &locked) {
                outcomes[index] = Some(Err(WriteError::Invalid(error)));
            } else if !keys_in_batch.insert((job.client, job.request.idempotency_key.as_str())) {
                // The same key twice in one batch: the first claims it, the second
                // replays it once the batch has committed.
                outcomes[index] = Some(Err(WriteError::KeyTaken));
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
        let owned = batch_sql::claim_keys(&transaction, backend, &records).await?;
        let mut to_post = Vec::with_capacity(claims.len());
        for (index, job) in jobs.iter().enumerate() {
            if outcomes[index].is_none() {
                if owned.contains(&job.payment_id.0) {
                    to_post.push(index);
                } else {
                    outcomes[index] = Some(Err(WriteError::KeyTaken));
                }
            }
        }

        let mut states: HashMap<Uuid, AccountState> = locked
            .values()
            .map(|row| (row.id, account_state(row)))
            .collect();
        let plans = plan_in_order(
            &mut states,
            to_post.iter().map(|&index| {
                let request = &jobs[index].request;
                (request.from.0, request.to.0, request.amount)
            }),
        );
        let now = crate::entity::stored_now();
        let mut payments = Vec::with_capacity(to_post.len());
        let mut entries = Vec::with_capacity(to_post.len() * 2);
        for (&index, plan) in to_post.iter().zip(plans) {
            let plan = plan.ok_or_else(|| {
                AppError::internal(anyhow::anyhow!("a checked payment has no locked accounts"))
            })?;
            let payment = payment_row(jobs[index], &plan, now);
            if let PostingPlan::Post { debit, credit } = plan {
                entries.extend(entry_rows(&payment, [debit, credit]));
            }
            payments.push(payment);
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
            let moved = batch_sql::write_postings(
                &transaction,
                backend,
                &mut payments,
                &moves,
                &mut entries,
            )
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
        write::commit(transaction).await?;
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
        let mut entries_of: HashMap<Uuid, Vec<ledger_entry::Model>> = HashMap::new();
        for entry in entries {
            entries_of.entry(entry.payment_id).or_default().push(entry);
        }
        let mut decided = Vec::with_capacity(payments.len());
        for (&index, payment) in to_post.iter().zip(payments) {
            outcomes[index] = Some(Ok(payment.clone()));
            let payment_entries = entries_of.remove(&payment.id).unwrap_or_default();
            decided.push((payment, payment_entries));
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| {
                outcome.unwrap_or_else(|| {
                    Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
                        "a payment in a batch got no outcome"
                    ))))
                })
            })
            .collect();
        Ok(CommittedBatch {
            outcomes,
            decided,
            balances,
        })
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
        status,
        decline_reason,
        description: request.description.clone(),
        created_at: now,
        // Set when the batch is written (`batch_sql::write_postings`).
        feed_seq: 0,
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
        direction: entry.direction,
        amount_minor: entry.amount_minor,
        balance_after_minor: entry.balance_after_minor,
        account_version: entry.account_version,
        created_at: payment.created_at,
        feed_seq: payment.feed_seq,
    })
}

fn account_state(account: &account::Model) -> AccountState {
    AccountState {
        rule: account.balance_rule,
        credit_limit_minor: account.credit_limit_minor,
        balance_minor: account.balance_minor,
        version: account.version,
    }
}

/// Whether a failed batch should run again one payment per transaction: when one
/// payment's account was locked too long, or the database refused something, but not
/// when the database itself is unavailable (each payment would only fail again, and
/// after a COMMIT without an answer `Writer::run` has already tried to settle it).
fn splits_batch(error: &WriteError) -> bool {
    !matches!(
        error,
        WriteError::Failed(AppError::RetryLater | AppError::OutcomeUnknown)
    )
}
