//! Group commit for payments: a batch of queued payments in one transaction.
//!
//! Lock every account of the batch in id order, check each payment against its
//! accounts, claim the valid payments' keys, decide them in queue order against the
//! balances the earlier ones left, write everything with one statement, commit. Each
//! payment keeps its own outcome; docs/consistency.md ("Group commit") argues why no
//! guarantee is weaker than with one transaction per payment.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use uuid::Uuid;

use super::{AttemptError, Ledger, stored_value};
use crate::cache::VersionedBalance;
use crate::entity::{account, idempotency_key, ledger_entry, payment};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint};
use crate::ids::{ClientId, LedgerEntryId, PaymentId};
use crate::ledger::batch_sql::{self, AccountMove};
use crate::ledger::commit_queue::Queued;
use crate::ledger::posting::{
    AccountState, BalanceRule, EntryPlan, PaymentStatus, PostingPlan, plan_in_order,
};
use crate::ledger::requests::NewPayment;

/// A payment waiting for its batch, with everything decided before the database.
pub(super) struct PaymentJob {
    pub(super) client: ClientId,
    pub(super) request: NewPayment,
    pub(super) fingerprint: Fingerprint,
    pub(super) payment_id: PaymentId,
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
pub(super) enum JobOutcome {
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

impl Ledger {
    /// Queues a payment for the next batch and waits for its outcome.
    pub(super) async fn commit_payment(
        &self,
        job: PaymentJob,
    ) -> Result<payment::Model, AttemptError> {
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
        // Sorted and distinct: the order in which the transaction locks them.
        let mut accounts: Vec<Uuid> = jobs
            .iter()
            .flat_map(|job| [job.request.from.0, job.request.to.0])
            .collect();
        accounts.sort_unstable();
        accounts.dedup();
        let committed = {
            let _lanes = self.write_gate.enter(&accounts).await;
            self.with_retries(|| self.try_payment_batch(jobs, &accounts))
                .await
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
        account_ids: &[Uuid],
    ) -> Result<CommittedBatch, AttemptError> {
        let transaction = self.begin_write().await?;
        let locked: HashMap<Uuid, account::Model> =
            batch_sql::lock_accounts(&transaction, self.backend, account_ids)
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
