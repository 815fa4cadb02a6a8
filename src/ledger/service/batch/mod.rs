//! Group commit for money movements: a batch of queued payments, holds, captures, voids,
//! refunds and groups in one transaction, each job keeping its own outcome.
//!
//! One concept per file: `job` (what waits in the queue), `decide` (each job checked
//! and decided against the locked accounts, pure), `rows` (what a decided batch writes,
//! and what it answers, pure), `store` (the database: one seam, a PostgreSQL and a
//! SQLite side). All I/O is here, in `Batcher::run`, which reads top to bottom as the
//! ladder a batch goes down until it commits:
//!
//! 1. **one trip**: plain payments on accounts this instance knows (`known_accounts`),
//!    decided here and sent as one statement that checks the rows under its locks;
//! 2. **the long way**: lock, read the context, decide, claim keys, write, commit;
//! 3. **reruns** of the long way on conflicts (`Writer::run`);
//! 4. **settle**: after a one-statement batch whose answer was lost, the long way again,
//!    whose key claims find out whether it committed (`Writer::settle`);
//! 5. **one at a time**: a batch that failed for a reason other than contention runs
//!    its jobs one per transaction, so one job the database refuses cannot fail others.
//!
//! docs/consistency.md ("Group commit", "One round trip") argues why no guarantee is
//! weaker than with one transaction per job.

mod decide;
#[cfg(test)]
mod fixtures;
mod job;
mod rows;
mod store;

pub(super) use self::job::{Job, JobResult, Work};
pub(super) use self::store::{AccountClaim, BatchStore, next_feed_seq, store_for};

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::DatabaseTransaction;
use tracing::Instrument;
use uuid::Uuid;

use self::decide::{BatchContext, Decisions, decide, screen};
use self::rows::{CommittedBatch, build_rows, finish};
use self::store::OneTripAnswer;
use super::commit_queue::{CommitQueue, Queued};
use super::keyed::KeyedRequest;
use super::known_accounts::KnownAccounts;
use super::write::{self, WriteError, Writer};
use crate::cache::Caches;
use crate::db::{self, Backend};
use crate::entity::{account, idempotency_key};
use crate::error::AppError;
use crate::metrics::Metrics;

/// Group commit for one instance: the queue jobs wait in, and what runs a batch.
pub(super) struct PaymentBatches {
    queue: CommitQueue<Job, JobResult>,
    batcher: Arc<Batcher>,
}

/// Runs batches. Shared with the task each batch runs on.
struct Batcher {
    writer: Arc<Writer>,
    store: Box<dyn BatchStore>,
    one_statement_batches: bool,
    caches: Arc<Caches>,
    metrics: Arc<Metrics>,
    known: KnownAccounts,
}

/// How a batch's one trip went.
enum OneTrip {
    Committed(CommittedBatch),
    /// Not tried, or refused by the database: nothing was written.
    NotTaken,
    /// Sent, and its answer lost with the connection: it may have committed.
    Unanswered,
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
        one_statement_batches: bool,
    ) -> Self {
        let batches_in_flight = match writer.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => batches_in_flight,
        };
        Self {
            queue: CommitQueue::new(batches_in_flight, batch_max),
            batcher: Arc::new(Batcher {
                store: store_for(writer.backend()),
                one_statement_batches,
                writer,
                caches,
                metrics,
                known: KnownAccounts::new(),
            }),
        }
    }

    /// Queues a job for the next batch and waits for its outcome.
    pub(super) async fn commit(&self, job: Job) -> JobResult {
        self.commit_all(vec![job])
            .await
            .pop()
            .unwrap_or_else(unanswered)
    }

    /// Queues `jobs` as one unit: they go into one batch together and are decided in
    /// this order, each against what the earlier ones left. Their outcomes, in order.
    pub(super) async fn commit_all(&self, jobs: Vec<Job>) -> Vec<JobResult> {
        let batcher = Arc::clone(&self.batcher);
        self.queue
            .submit_all(jobs, move |batch| {
                let batcher = Arc::clone(&batcher);
                // A batch serves many requests; what it logs about one job is logged in
                // that job's own span (`Job::span`).
                let span =
                    tracing::info_span!(parent: None, "payment_batch", payments = batch.len());
                async move { batcher.run(batch).await }.instrument(span)
            })
            .await
            .into_iter()
            .map(|outcome| outcome.unwrap_or_else(unanswered))
            .collect()
    }
}

/// A job whose batch ended without answering it: the batch may or may not have
/// committed; a retry with the key will tell.
fn unanswered() -> JobResult {
    Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
        "a payment batch ended without answering"
    ))))
}

impl Batcher {
    /// The ladder: runs one batch down it until it commits, and answers each job.
    async fn run(&self, batch: Vec<Queued<Job, JobResult>>) {
        self.metrics
            .write_batch_payments
            .observe(batch.len() as f64);
        let jobs: Vec<&Job> = batch.iter().map(|queued| &queued.job).collect();
        let (claims, accounts) = account_claims(&jobs);
        let long_way = || self.long_way(&jobs, &claims);
        // 1. One trip; 2. the long way, 3. rerun on conflicts; 4. settled after a lost
        // answer.
        let committed = match self.one_trip(&jobs, &accounts).await {
            OneTrip::Committed(committed) => Ok(committed),
            OneTrip::NotTaken => self.writer.run(&accounts, long_way).await,
            OneTrip::Unanswered => self.writer.settle(&accounts, long_way).await,
        };
        match committed {
            Ok(committed) => {
                let outcomes = self.hand_off(committed).await;
                for (queued, outcome) in batch.into_iter().zip(outcomes) {
                    queued.answer(outcome);
                }
            }
            // 5. One at a time.
            Err(error) if batch.len() > 1 && splits_batch(&error) => {
                for queued in &batch {
                    queued.job.span.in_scope(|| {
                        if matches!(error, WriteError::Contended) {
                            tracing::info!(payments = batch.len(), "payment batch lost every attempt to concurrent writers; running its payments one per transaction");
                        } else {
                            tracing::warn!(error = ?error, payments = batch.len(), "payment batch failed; running its payments one per transaction");
                        }
                    });
                }
                for queued in batch {
                    let outcome = self.alone(&queued.job).await;
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

    /// One job in a transaction of its own, the long way (rerun on conflicts).
    async fn alone(&self, job: &Job) -> JobResult {
        let jobs = [job];
        let (claims, accounts) = account_claims(&jobs);
        let committed = self
            .writer
            .run(&accounts, || self.long_way(&jobs, &claims))
            .await;
        match committed {
            Ok(committed) => self.hand_off(committed).await.pop().unwrap_or_else(|| {
                Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
                    "a batch of one answered nothing"
                ))))
            }),
            Err(error) => {
                job.span.in_scope(|| {
                    tracing::warn!(error = ?error, "payment failed alone");
                });
                Err(WriteError::Failed(error.into_app_error()))
            }
        }
    }

    /// After the commit: the rows to this instance's known accounts, the payments and
    /// settlements to L1, the balances through to the caches; then each job's outcome.
    async fn hand_off(&self, committed: CommittedBatch) -> Vec<JobResult> {
        let clients = committed.clients();
        self.known.remember(committed.accounts);
        for (payment, entries) in committed.decided {
            self.caches.remember_payment(&payment, entries).await;
        }
        for (settlement, entries) in committed.settlements {
            self.caches.remember_settlement(&settlement, entries).await;
        }
        self.caches
            .write_through(&committed.balances, &clients)
            .await;
        committed.outcomes
    }

    /// A batch of plain payments (no holds, refunds, metadata or groups) whose accounts
    /// this instance knows without holds, in one statement and one round trip: decided
    /// here against the rows as this instance last committed them, then sent with the
    /// rows it was decided on, which the statement locks in id order and checks before
    /// it claims the keys and writes (why that is the same as locking first, in
    /// docs/consistency.md). When the batch does not qualify, or the database wrote
    /// nothing (an account moved, a key was taken, or any error), it goes the long way
    /// next, whose key claims find out; unless the answer was lost with the connection.
    async fn one_trip(&self, jobs: &[&Job], accounts: &[Uuid]) -> OneTrip {
        let store = self.store.as_ref();
        if !self.one_statement_batches
            || !store.has_one_trip()
            || !jobs.iter().all(|job| job.is_plain_payment())
            || jobs
                .iter()
                .any(|job| self.known.key_committed(&job.request))
        {
            return OneTrip::NotTaken;
        }
        let Some(known) = self.known.rows_without_holds(accounts) else {
            return OneTrip::NotTaken;
        };
        let (outcomes, candidates) = screen(jobs, &known);
        let (decisions, states) = decide(jobs, &candidates, &known, None);
        if decisions.iter().any(|(_, decision)| decision.is_err()) {
            return OneTrip::NotTaken;
        }
        let Ok(mut rows) = build_rows(jobs, decisions, &known, &states, None) else {
            return OneTrip::NotTaken;
        };
        let mut decided_on: Vec<account::Model> = candidates
            .iter()
            .flat_map(|&index| jobs[index].accounts())
            .filter_map(|id| known.get(&id).cloned())
            .collect();
        decided_on.sort_unstable_by_key(|row| row.id);
        decided_on.dedup_by_key(|row| row.id);
        let keys = keys_in_claim_order(jobs, candidates.clone());
        let write = async {
            let written = store
                .write_in_one_trip(self.writer.connection(), &mut rows, &decided_on, &keys)
                .await;
            if let Ok(OneTripAnswer::Written) = written {
                self.known.remember_keys(requests_of(jobs, &candidates));
            }
            written
        };
        let written = self.writer.run_once(accounts, write).await;
        match written {
            Ok(OneTripAnswer::Written) => {
                self.metrics.write_one_trip_batches.inc();
                OneTrip::Committed(finish(outcomes, rows, &known, None))
            }
            Ok(OneTripAnswer::AccountsMoved) => {
                self.metrics.write_one_trip_fallbacks.inc();
                self.known.forget(accounts);
                tracing::debug!(
                    "an account of a one-statement batch moved; running it the long way"
                );
                OneTrip::NotTaken
            }
            Err(error) => {
                self.metrics.write_one_trip_fallbacks.inc();
                self.known.forget(accounts);
                // No connection means nothing was sent; an answer means the database
                // judged the statement, and a refused statement wrote nothing.
                let sent = !matches!(error, sea_orm::DbErr::ConnectionAcquire(_));
                if !sent || db::has_database_answer(&error) {
                    tracing::debug!(error = %error, "a one-statement batch was refused; running it the long way");
                    OneTrip::NotTaken
                } else {
                    tracing::warn!(error = %error, "a one-statement batch got no answer; running it the long way to learn its outcome");
                    OneTrip::Unanswered
                }
            }
        }
    }

    /// One attempt at a batch the long way: lock every account in id order, check each
    /// job against its accounts, read the context holds and refunds need, decide the
    /// jobs in queue order and claim the keys of those that can be carried out, write
    /// everything with one statement, commit.
    async fn long_way(
        &self,
        jobs: &[&Job],
        claims: &[AccountClaim],
    ) -> Result<CommittedBatch, WriteError> {
        let store = self.store.as_ref();
        let transaction = self.writer.begin().await?;
        let locked: HashMap<Uuid, account::Model> = store
            .lock_accounts(&transaction, claims)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        let (mut outcomes, candidates) = screen(jobs, &locked);
        let context = read_context(store, &transaction, jobs, &candidates, &locked).await?;
        let (decisions, states) = decide_and_claim(
            store,
            &transaction,
            jobs,
            (&candidates, &mut outcomes),
            &locked,
            context.as_ref(),
        )
        .await?;
        let mut rows = build_rows(jobs, decisions, &locked, &states, context.as_ref())?;
        if !rows.is_empty() {
            let moved = store.write(&transaction, &mut rows).await?;
            // The version conditions can only fail if a row lock did not hold: a bug,
            // and committing would break "version = entry count".
            let expected = rows.moves.len() as u64;
            if moved != expected {
                return Err(AppError::internal(anyhow::anyhow!(
                    "{} of {expected} accounts changed while locked",
                    expected - moved.min(expected)
                ))
                .into());
            }
        }
        write::commit(transaction).await?;
        // Before the batch leaves its write lanes (see `KnownAccounts::key_committed`).
        let carried_out: Vec<usize> = (0..jobs.len())
            .filter(|&index| outcomes[index].is_none())
            .collect();
        self.known.remember_keys(requests_of(jobs, &carried_out));
        Ok(finish(outcomes, rows, &locked, context.as_ref()))
    }
}

/// Decides the `candidates` first, so a job that cannot be carried out (a hold already
/// settled, a refund that does not fit) claims no key and stores nothing; then claims
/// the keys of the rest. A job whose key someone else owns replays that owner's
/// outcome, and the batch is decided again without it: what it would have done must
/// not count. Every claimed job must still be carried out and every refused one still
/// refused; when leaving a job out changed that (a hold it would have settled is free
/// again, a refund it made room for), the batch is `Tangled` and runs one job at a
/// time instead.
async fn decide_and_claim(
    store: &dyn BatchStore,
    transaction: &DatabaseTransaction,
    jobs: &[&Job],
    (candidates, outcomes): (&[usize], &mut [Option<JobResult>]),
    locked: &HashMap<Uuid, account::Model>,
    context: Option<&BatchContext>,
) -> Result<
    (
        Decisions,
        HashMap<Uuid, crate::ledger::posting::AccountState>,
    ),
    WriteError,
> {
    let (first, first_states) = decide(jobs, candidates, locked, context);
    let mut carried_out: Decisions = Vec::with_capacity(candidates.len());
    let mut refused = Vec::new();
    for (index, decision) in first {
        match decision {
            Ok(decision) => carried_out.push((index, Ok(decision))),
            Err(error) => {
                refused.push(index);
                outcomes[index] = Some(Err(WriteError::Invalid(error)));
            }
        }
    }
    let to_claim: Vec<usize> = carried_out.iter().map(|(index, _)| *index).collect();
    let records = keys_in_claim_order(jobs, to_claim.clone());
    let owned = store.claim_keys(transaction, &records).await?;
    let mut claimed = Vec::with_capacity(to_claim.len());
    for index in to_claim {
        if owned.contains(&jobs[index].request.resource_id) {
            claimed.push(index);
        } else {
            outcomes[index] = Some(Err(WriteError::KeyTaken));
        }
    }
    // With every key ours the first decisions stand: a refused job changed no state.
    if claimed.len() == records.len() {
        return Ok((carried_out, first_states));
    }
    claimed.sort_unstable();
    if !refused.is_empty() {
        let mut again: Vec<usize> = claimed.iter().chain(&refused).copied().collect();
        again.sort_unstable();
        let (decisions, _) = decide(jobs, &again, locked, context);
        let changed = decisions
            .iter()
            .any(|(index, decision)| decision.is_ok() == refused.contains(index));
        if changed {
            return Err(WriteError::Tangled);
        }
    }
    let (decisions, states) = decide(jobs, &claimed, locked, context);
    // Leaving jobs out only frees balance, holds and refund room; a claimed job that
    // could not be carried out any more is a dependency this batch cannot keep.
    if decisions.iter().any(|(_, decision)| decision.is_err()) {
        return Err(WriteError::Tangled);
    }
    Ok((decisions, states))
}

/// Reads the batch context when the batch needs one: when it settles or refunds, or a
/// locked account has holds. A batch of plain payments between accounts without holds
/// reads nothing more.
async fn read_context(
    store: &dyn BatchStore,
    transaction: &DatabaseTransaction,
    jobs: &[&Job],
    candidates: &[usize],
    locked: &HashMap<Uuid, account::Model>,
) -> Result<Option<BatchContext>, WriteError> {
    let mut held_accounts: Vec<Uuid> = locked
        .values()
        .filter(|row| row.pending_minor > 0)
        .map(|row| row.id)
        .collect();
    held_accounts.sort_unstable();
    let mut holds = Vec::new();
    let mut originals = Vec::new();
    for &index in candidates {
        match &jobs[index].work {
            Work::Capture { hold, .. } | Work::Void { hold } => holds.push(hold.id),
            Work::Refund { original, .. } => originals.push(original.id),
            Work::Pay { .. } | Work::Group { .. } => {}
        }
    }
    if held_accounts.is_empty() && holds.is_empty() && originals.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        store
            .read_context(transaction, &held_accounts, &holds, &originals)
            .await?,
    ))
}

/// The accounts a batch locks, sorted and distinct with the client that names each
/// (the order in which the transaction locks them), and their ids.
fn account_claims(jobs: &[&Job]) -> (Vec<AccountClaim>, Vec<Uuid>) {
    let mut claims: Vec<AccountClaim> = jobs
        .iter()
        .flat_map(|job| {
            job.accounts().into_iter().map(|account| AccountClaim {
                id: account,
                client: job.request.client.0,
            })
        })
        .collect();
    claims.sort_unstable();
    claims.dedup();
    let mut accounts: Vec<Uuid> = claims.iter().map(|claim| claim.id).collect();
    accounts.dedup();
    (claims, accounts)
}

/// The requests of the `selected` jobs.
fn requests_of<'a>(
    jobs: &'a [&'a Job],
    selected: &'a [usize],
) -> impl Iterator<Item = &'a KeyedRequest> + 'a {
    selected.iter().map(|&index| &jobs[index].request)
}

/// The key records of `selected` jobs in one global order, so two batches holding some
/// of the same keys wait for each other in one direction only.
fn keys_in_claim_order(jobs: &[&Job], mut selected: Vec<usize>) -> Vec<idempotency_key::Model> {
    selected.sort_by(|&a, &b| {
        let (a, b) = (&jobs[a].request, &jobs[b].request);
        (a.client.0, a.key.as_str()).cmp(&(b.client.0, b.key.as_str()))
    });
    selected
        .iter()
        .map(|&index| jobs[index].request.record())
        .collect()
}

/// Whether a failed batch should run again one job per transaction: when one job's
/// account was locked too long, when every attempt lost to concurrent writers (small
/// transactions conflict less), or the database refused something, but not when the
/// database itself is unavailable (each job would only fail again, and after a COMMIT
/// without an answer `Writer::run` has already tried to settle it).
fn splits_batch(error: &WriteError) -> bool {
    !matches!(
        error,
        WriteError::Failed(AppError::RetryLater | AppError::OutcomeUnknown)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contended_or_blocked_batch_splits_but_an_unavailable_database_does_not() {
        assert!(splits_batch(&WriteError::Contended));
        assert!(splits_batch(&WriteError::Blocked));
        assert!(!splits_batch(&WriteError::Failed(AppError::RetryLater)));
        assert!(!splits_batch(&WriteError::Failed(AppError::OutcomeUnknown)));
    }
}
