//! Group commit for money movements: a batch of queued payments, holds, captures, voids
//! and refunds in one transaction.
//!
//! Lock every account of the batch in id order, check each job against its accounts,
//! read what holds and refunds need (`batch_sql::batch_context`, only when the batch has
//! any), decide the jobs in queue order against the states the earlier ones left, claim
//! the keys of those that can be carried out, write everything with one statement,
//! commit. Each job keeps its own outcome; docs/consistency.md ("Group commit") argues
//! why no guarantee is weaker than with one transaction per job.
//!
//! On PostgreSQL a batch of plain payments whose account rows the instance knows
//! (`known_accounts`) skips the round trips before the write: it is decided on those
//! rows and sent as one statement that checks them under its locks (`Batcher::one_trip`;
//! docs/consistency.md, "One round trip").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use super::batch_sql::{
    self, AccountClaim, AccountMove, BatchContext, LifecycleWrites, OneTripAnswer,
};
use super::commit_queue::{CommitQueue, Queued};
use super::known_accounts::KnownAccounts;
use super::write::{self, WriteError, Writer};
use crate::cache::{Caches, VersionedBalance};
use crate::db::{self, Backend};
use crate::entity::payment::StoredStatus;
use crate::entity::payment_settlement::SettlementKind;
use crate::entity::{
    account, idempotency_key, ledger_entry, live_hold, payment, payment_group, payment_metadata,
    payment_settlement,
};
use crate::error::{AppError, AppResult};
use crate::idempotency::{self, Fingerprint, IdempotencyKey};
use crate::ids::{ClientId, LedgerEntryId};
use crate::ledger::lifecycle;
use crate::ledger::metadata::Metadata;
use crate::ledger::money::PositiveAmount;
use crate::ledger::posting::{
    AccountState, DeclineReason, EntryPlan, Movement, PostingPlan, plan_in_order, plan_linked,
    posting_time,
};
use crate::ledger::requests::{NewPayment, NewPaymentGroup};
use crate::metrics::Metrics;

/// What a job does.
pub(super) enum Work {
    /// A payment, or with `hold_expires_at` a hold.
    Pay {
        request: NewPayment,
        hold_expires_at: Option<DateTime<Utc>>,
    },
    /// Captures `amount` of a hold (the stored payment, checked to be the caller's).
    Capture {
        hold: payment::Model,
        amount: PositiveAmount,
    },
    Void {
        hold: payment::Model,
    },
    /// Gives back `amount` (or all that is left) of a posted payment.
    Refund {
        original: payment::Model,
        amount: Option<PositiveAmount>,
        reason: Option<String>,
    },
    /// Payments all together or none (the job's resource is the group): each payment's
    /// id, and its hold's expiry if it is one.
    Group {
        group: NewPaymentGroup,
        payment_ids: Vec<Uuid>,
        hold_expiries: Vec<Option<DateTime<Utc>>>,
    },
}

/// A movement waiting for its batch, with everything decided before the database.
pub(super) struct PaymentJob {
    pub(super) client: ClientId,
    pub(super) idempotency_key: IdempotencyKey,
    pub(super) operation: idempotency::Operation,
    pub(super) fingerprint: Fingerprint,
    /// What the job creates: the payment (or refund), or the settlement of a hold.
    pub(super) resource_id: Uuid,
    pub(super) work: Work,
    /// The request's span, so what the batch logs about this job carries the request's
    /// id.
    pub(super) span: tracing::Span,
}

impl PaymentJob {
    fn key_record(&self) -> idempotency_key::Model {
        idempotency::record(
            self.client,
            &self.idempotency_key,
            self.operation,
            &self.fingerprint,
            self.resource_id,
        )
    }

    /// A payment alone: no hold, no metadata (what the one-statement batch carries).
    fn is_plain_payment(&self) -> bool {
        matches!(
            &self.work,
            Work::Pay {
                request,
                hold_expires_at: None,
            } if request.metadata.is_none()
        )
    }

    /// The accounts the job changes, each payment's payer first.
    fn accounts(&self) -> Vec<Uuid> {
        match &self.work {
            Work::Pay { request, .. } => vec![request.from.0, request.to.0],
            Work::Capture { hold, .. } | Work::Void { hold } => {
                vec![hold.from_account_id, hold.to_account_id]
            }
            Work::Refund { original, .. } => {
                vec![original.to_account_id, original.from_account_id]
            }
            Work::Group { group, .. } => group
                .payments
                .iter()
                .flat_map(|request| [request.from.0, request.to.0])
                .collect(),
        }
    }
}

/// What deciding a job came to, before anything is written.
#[derive(Debug, Clone, Copy)]
struct Decision {
    plan: PostingPlan,
    /// What a capture or refund moves (a payment's own amount otherwise).
    amount_minor: i64,
}

/// A job's decision: one, or one per payment of a group.
#[derive(Debug, Clone)]
enum Decided {
    One(Decision),
    Group(Vec<PostingPlan>),
}

/// How a batch's one round trip went.
enum OneTrip {
    Committed(CommittedBatch),
    /// Not tried, or refused by the database: nothing was written.
    NotTaken,
    /// Sent, and its answer lost with the connection: it may have committed.
    Unanswered,
}

/// What a batch did for one of its jobs: the committed payment (for a capture or void,
/// the hold's), or why not.
pub(super) type CommitResult = Result<payment::Model, WriteError>;

/// A committed batch: each job's outcome, the payments it wrote with their entries and
/// the settlements (for L1), and the accounts' new balances (for the write-through).
struct CommittedBatch {
    outcomes: Vec<CommitResult>,
    decided: Vec<(payment::Model, Vec<ledger_entry::Model>)>,
    settlements: Vec<(payment_settlement::Model, Vec<ledger_entry::Model>)>,
    balances: Vec<(Uuid, VersionedBalance)>,
    /// The batch's account rows as it committed them.
    accounts: Vec<account::Model>,
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
    known: KnownAccounts,
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
                known: KnownAccounts::new(),
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
                job.accounts().into_iter().map(|account| AccountClaim {
                    id: account,
                    client: job.client.0,
                })
            })
            .collect();
        claims.sort_unstable();
        claims.dedup();
        let mut accounts: Vec<Uuid> = claims.iter().map(|claim| claim.id).collect();
        accounts.dedup();
        let long_way = || self.attempt(jobs, &claims);
        let committed = match self.one_trip(jobs, &accounts).await {
            OneTrip::Committed(committed) => committed,
            OneTrip::NotTaken => self.writer.run(&accounts, long_way).await?,
            OneTrip::Unanswered => self.writer.settle(&accounts, long_way).await?,
        };
        self.known.remember(committed.accounts);
        for (payment, entries) in committed.decided {
            self.caches.remember_payment(&payment, entries).await;
        }
        for (settlement, entries) in committed.settlements {
            self.caches.remember_settlement(&settlement, entries).await;
        }
        self.caches.write_through(&committed.balances).await;
        Ok(committed.outcomes)
    }

    /// A batch of plain payments (no holds, refunds, metadata or groups) whose accounts
    /// this instance knows without holds, in one statement and one round trip: decided
    /// here against the rows as this instance last committed them, then sent with the
    /// rows it was decided on, which the statement locks in id order and checks before
    /// it claims the keys and writes (`batch_sql::write_postings_in_one_trip`; why
    /// that is the same as locking first, in docs/consistency.md). `None` when the
    /// batch does not qualify, or the database refused it: an account moved since, a
    /// key was taken, or anything else. Nothing was written then, unless the answer
    /// was lost with the connection; either way the batch runs the long way next, whose
    /// key claims find out.
    async fn one_trip(&self, jobs: &[&PaymentJob], accounts: &[Uuid]) -> OneTrip {
        if self.writer.backend() != Backend::Postgres
            || !jobs.iter().all(|job| job.is_plain_payment())
        {
            return OneTrip::NotTaken;
        }
        let Some(known) = self.known.rows_without_holds(accounts) else {
            return OneTrip::NotTaken;
        };
        let (outcomes, candidates) = screen(jobs, &known);
        let (decisions, states) = decide(jobs, &candidates, &known, None);
        if decisions.iter().any(|(_, decided)| decided.is_err()) {
            return OneTrip::NotTaken;
        }
        let Ok(mut built) = build_rows(jobs, decisions, &known, &states, None) else {
            return OneTrip::NotTaken;
        };
        let mut decided_on: Vec<account::Model> = candidates
            .iter()
            .flat_map(|&index| jobs[index].accounts())
            .filter_map(|id| known.get(&id).cloned())
            .collect();
        decided_on.sort_unstable_by_key(|row| row.id);
        decided_on.dedup_by_key(|row| row.id);
        let keys = key_records_in_claim_order(jobs, candidates);
        let written = self
            .writer
            .run_once(
                accounts,
                batch_sql::write_postings_in_one_trip(
                    self.writer.connection(),
                    &mut built.payments,
                    &built.moves,
                    &mut built.entries,
                    &decided_on,
                    &keys,
                ),
            )
            .await;
        match written {
            Ok(OneTripAnswer::Written) => {
                self.metrics.write_one_trip_batches.inc();
                OneTrip::Committed(finish(outcomes, built, &known, None))
            }
            Ok(refused) => {
                self.metrics.write_one_trip_fallbacks.inc();
                // A taken key leaves the rows as this instance knows them.
                if refused == OneTripAnswer::AccountsMoved {
                    self.known.forget(accounts);
                }
                tracing::debug!(
                    ?refused,
                    "a one-statement batch wrote nothing; running it the long way"
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

    /// One attempt at a batch: lock every account in id order, check each job against
    /// its accounts, read the context holds and refunds need, decide the jobs in queue
    /// order, claim the keys of those that can be carried out, write everything with one
    /// statement, commit.
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

        let (mut outcomes, candidates) = screen(jobs, &locked);
        let context = read_context(&transaction, backend, jobs, &candidates, &locked).await?;

        // Decide first, so a job that cannot be carried out (a hold already settled, a
        // refund that does not fit) claims no key and stores nothing.
        let (first, first_states) = decide(jobs, &candidates, &locked, context.as_ref());
        let mut to_claim = Vec::with_capacity(candidates.len());
        let mut carried_out: Decisions = Vec::with_capacity(candidates.len());
        let mut refused = Vec::new();
        for (index, decision) in first {
            match decision {
                Ok(decision) => {
                    to_claim.push(index);
                    carried_out.push((index, Ok(decision)));
                }
                Err(error) => {
                    refused.push(index);
                    outcomes[index] = Some(Err(WriteError::Invalid(error)));
                }
            }
        }
        let records = key_records_in_claim_order(jobs, to_claim.clone());
        let owned = batch_sql::claim_keys(&transaction, backend, &records).await?;
        let mut claimed = Vec::with_capacity(to_claim.len());
        for index in to_claim {
            if owned.contains(&jobs[index].resource_id) {
                claimed.push(index);
            } else {
                outcomes[index] = Some(Err(WriteError::KeyTaken));
            }
        }
        claimed.sort_unstable();
        // When a key was someone else's, decided again without its job: what it would
        // have done must not count. Every claimed job must still be carried out and
        // every refused one still refused; when leaving a job out changed that (a hold
        // it would have settled is free again, a refund it made room for), the batch
        // runs one job at a time instead.
        if claimed.len() < records.len() && !refused.is_empty() {
            let mut again: Vec<usize> = claimed.iter().chain(&refused).copied().collect();
            again.sort_unstable();
            let (decisions, _) = decide(jobs, &again, &locked, context.as_ref());
            let changed = decisions
                .iter()
                .any(|(index, decision)| decision.is_ok() == refused.contains(index));
            if changed {
                return Err(WriteError::Tangled);
            }
        }
        // With every key ours the first decisions stand: a refused job changed no state.
        let (decisions, states) = if claimed.len() == records.len() {
            (carried_out, first_states)
        } else {
            decide(jobs, &claimed, &locked, context.as_ref())
        };
        let Built {
            mut payments,
            mut entries,
            writes,
            answers,
            moves,
        } = build_rows(jobs, decisions, &locked, &states, context.as_ref())?;
        if !payments.is_empty() || !moves.is_empty() || !writes.settlements.is_empty() {
            let moved = batch_sql::write_postings(
                &transaction,
                backend,
                &mut payments,
                &moves,
                &mut entries,
                &writes,
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
        Ok(finish(
            outcomes,
            Built {
                payments,
                entries,
                writes,
                answers,
                moves,
            },
            &locked,
            context.as_ref(),
        ))
    }
}

/// The key records of `selected` jobs in one global order, so two batches holding some
/// of the same keys wait for each other in one direction only.
fn key_records_in_claim_order(
    jobs: &[&PaymentJob],
    mut selected: Vec<usize>,
) -> Vec<idempotency_key::Model> {
    selected.sort_by(|&a, &b| {
        (jobs[a].client.0, jobs[a].idempotency_key.as_str())
            .cmp(&(jobs[b].client.0, jobs[b].idempotency_key.as_str()))
    });
    selected
        .iter()
        .map(|&index| jobs[index].key_record())
        .collect()
}

/// Everything a batch writes once its jobs are decided, and what each job answers.
struct Built {
    payments: Vec<payment::Model>,
    entries: Vec<ledger_entry::Model>,
    writes: LifecycleWrites,
    answers: Vec<(usize, payment::Model)>,
    moves: Vec<AccountMove>,
}

/// Each job's check against its accounts and against the batch's other keys: the jobs
/// that go on to be decided (indexes into `jobs`), and an outcome for each that does
/// not.
fn screen(
    jobs: &[&PaymentJob],
    locked: &HashMap<Uuid, account::Model>,
) -> (Vec<Option<CommitResult>>, Vec<usize>) {
    let mut outcomes: Vec<Option<CommitResult>> = jobs.iter().map(|_| None).collect();
    let mut candidates: Vec<usize> = Vec::with_capacity(jobs.len());
    let mut keys_in_batch = HashSet::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        if let Err(error) = check_accounts(job, locked) {
            outcomes[index] = Some(Err(WriteError::Invalid(error)));
        } else if !keys_in_batch.insert((job.client, job.idempotency_key.as_str())) {
            // The same key twice in one batch: the first claims it, the second
            // replays it once the batch has committed.
            outcomes[index] = Some(Err(WriteError::KeyTaken));
        } else {
            candidates.push(index);
        }
    }
    (outcomes, candidates)
}

/// The rows that carry out `decisions` (made against `locked`, leaving `states`):
/// payments stamped in order, their entries, hold and metadata writes, and the
/// accounts' moves.
fn build_rows(
    jobs: &[&PaymentJob],
    decisions: Decisions,
    locked: &HashMap<Uuid, account::Model>,
    states: &HashMap<Uuid, AccountState>,
    context: Option<&BatchContext>,
) -> Result<Built, WriteError> {
    let now = crate::entity::stored_now();
    let mut rows = BatchRows::default();
    let mut last_entry_at: HashMap<Uuid, DateTime<Utc>> = locked
        .values()
        .filter_map(|row| Some((row.id, row.last_entry_at?)))
        .collect();
    // Entries are stamped no earlier than the last entry on either account.
    let mut stamp = |plan: &PostingPlan, from: Uuid, to: Uuid| match plan {
        PostingPlan::Post { .. } => {
            let at = posting_time(
                now,
                [last_entry_at.get(&from), last_entry_at.get(&to)].map(|at| at.copied()),
            );
            last_entry_at.insert(from, at);
            last_entry_at.insert(to, at);
            at
        }
        _ => now,
    };
    for (index, decided) in decisions {
        let job = jobs[index];
        match (decided, &job.work) {
            (
                Ok(Decided::One(decision)),
                Work::Pay {
                    request,
                    hold_expires_at,
                },
            ) => {
                let posted_at = stamp(&decision.plan, request.from.0, request.to.0);
                let payment = requested_payment(
                    job,
                    job.resource_id,
                    request,
                    *hold_expires_at,
                    &decision,
                    posted_at,
                )?;
                rows.add_payment(index, payment, decision.plan, request.metadata.as_ref());
            }
            (
                Ok(Decided::One(decision)),
                Work::Refund {
                    original, reason, ..
                },
            ) => {
                let (from, to) = (original.to_account_id, original.from_account_id);
                let posted_at = stamp(&decision.plan, from, to);
                let payment = payment::Model {
                    from_account_id: from,
                    to_account_id: to,
                    currency: original.currency.clone(),
                    description: reason.clone(),
                    refund_of: Some(original.id),
                    ..decided_payment(job, job.resource_id, &decision, posted_at)?
                };
                rows.add_payment(index, payment, decision.plan, None);
            }
            (Ok(Decided::One(decision)), Work::Capture { hold, .. } | Work::Void { hold }) => {
                let posted_at = stamp(&decision.plan, hold.from_account_id, hold.to_account_id);
                let (kind, amount_minor) = match decision.plan {
                    PostingPlan::Post { debit, credit } => {
                        // A capture's entries are the hold's, written now.
                        rows.entries
                            .extend(entry_rows(hold, [debit, credit]).map(|row| {
                                ledger_entry::Model {
                                    created_at: posted_at,
                                    ..row
                                }
                            }));
                        (SettlementKind::Capture, decision.amount_minor)
                    }
                    _ => (SettlementKind::Void, 0),
                };
                rows.writes.settled.push(hold.id);
                rows.writes.settlements.push(payment_settlement::Model {
                    id: job.resource_id,
                    client_id: job.client.0,
                    payment_id: hold.id,
                    kind,
                    amount_minor,
                    created_at: now,
                });
                rows.answers.push((index, hold.clone()));
            }
            (
                Ok(Decided::Group(plans)),
                Work::Group {
                    group,
                    payment_ids,
                    hold_expiries,
                },
            ) => {
                rows.writes.groups.push(payment_group::Model {
                    id: job.resource_id,
                    client_id: job.client.0,
                    idempotency_key: job.idempotency_key.as_str().to_owned(),
                    payment_count: i32::try_from(plans.len()).unwrap_or(i32::MAX),
                    metadata: group.metadata.as_ref().map(Metadata::to_json),
                    created_at: now,
                });
                let members = group.payments.iter().zip(payment_ids).zip(hold_expiries);
                for (group_index, (plan, ((request, &id), &hold_expires_at))) in
                    plans.into_iter().zip(members).enumerate()
                {
                    let posted_at = stamp(&plan, request.from.0, request.to.0);
                    let decision = Decision {
                        plan,
                        amount_minor: request.amount.minor(),
                    };
                    let payment = payment::Model {
                        group_id: Some(job.resource_id),
                        group_index: i32::try_from(group_index).ok(),
                        ..requested_payment(
                            job,
                            id,
                            request,
                            hold_expires_at,
                            &decision,
                            posted_at,
                        )?
                    };
                    rows.add_payment(index, payment, plan, request.metadata.as_ref());
                }
            }
            _ => return Err(WriteError::Tangled),
        }
    }
    let BatchRows {
        payments,
        entries,
        mut writes,
        answers,
    } = rows;
    let moves = account_moves(locked, states, &last_entry_at, &writes, context);
    if let Some(context) = context {
        writes.expired_on = context
            .pending
            .iter()
            .filter(|(_, pending)| pending.has_expired)
            .map(|(account, _)| *account)
            .collect();
        writes.expired_at = Some(context.now);
    }
    Ok(Built {
        payments,
        entries,
        writes,
        answers,
        moves,
    })
}

/// A committed batch's answers: each job's outcome, and what the caches learn.
fn finish(
    mut outcomes: Vec<Option<CommitResult>>,
    built: Built,
    locked: &HashMap<Uuid, account::Model>,
    context: Option<&BatchContext>,
) -> CommittedBatch {
    let Built {
        payments,
        entries,
        writes,
        answers,
        moves,
    } = built;
    let balances = new_balances(&moves, &writes, context);
    let accounts = rows_after(locked, &moves);
    let feed_seq_of: HashMap<Uuid, i64> =
        payments.iter().map(|row| (row.id, row.feed_seq)).collect();
    let mut entries_of: HashMap<Uuid, Vec<ledger_entry::Model>> = HashMap::new();
    for entry in entries {
        entries_of.entry(entry.payment_id).or_default().push(entry);
    }
    let mut decided = Vec::with_capacity(payments.len());
    for (index, mut payment) in answers {
        if let Some(&feed_seq) = feed_seq_of.get(&payment.id) {
            payment.feed_seq = feed_seq;
            let payment_entries = entries_of.remove(&payment.id).unwrap_or_default();
            decided.push((payment.clone(), payment_entries));
        }
        // A group answers with its first payment; the service reads the group.
        outcomes[index].get_or_insert(Ok(payment));
    }
    let settlements = writes
        .settlements
        .into_iter()
        .map(|settlement| {
            let settled = entries_of
                .remove(&settlement.payment_id)
                .unwrap_or_default();
            (settlement, settled)
        })
        .collect();
    let outcomes = outcomes
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| {
                Err(WriteError::Failed(AppError::internal(anyhow::anyhow!(
                    "a job in a batch got no outcome"
                ))))
            })
        })
        .collect();
    CommittedBatch {
        outcomes,
        decided,
        settlements,
        balances,
        accounts,
    }
}

/// The batch's account rows as it committed them: as locked, with its moves applied.
fn rows_after(
    locked: &HashMap<Uuid, account::Model>,
    moves: &[AccountMove],
) -> Vec<account::Model> {
    let mut rows = locked.clone();
    for moved in moves {
        if let Some(row) = rows.get_mut(&moved.id) {
            row.balance_minor = moved.balance_minor;
            row.version = moved.version;
            row.pending_minor = moved.pending_minor;
            row.hold_seq = moved.hold_seq;
            if moved.version > moved.locked_version {
                row.last_entry_at = moved.last_entry_at;
            }
        }
    }
    rows.into_values().collect()
}

/// Each decided job (an index into the batch) and what deciding it came to.
type Decisions = Vec<(usize, AppResult<Decided>)>;

/// What a batch writes, gathered as its jobs are decided.
#[derive(Default)]
struct BatchRows {
    payments: Vec<payment::Model>,
    entries: Vec<ledger_entry::Model>,
    writes: LifecycleWrites,
    /// What each carried-out job answers (a group: each of its payments, in order).
    answers: Vec<(usize, payment::Model)>,
}

impl BatchRows {
    /// A payment (or refund, or a group's payment) of job `index`, with its entries,
    /// placed hold and metadata pairs.
    fn add_payment(
        &mut self,
        index: usize,
        payment: payment::Model,
        plan: PostingPlan,
        metadata: Option<&Metadata>,
    ) {
        if let PostingPlan::Post { debit, credit } = plan {
            self.entries.extend(entry_rows(&payment, [debit, credit]));
        }
        if let (PostingPlan::Hold, Some(expires_at)) = (plan, payment.hold_expires_at) {
            self.writes.placed.push(live_hold::Model {
                payment_id: payment.id,
                client_id: payment.client_id,
                account_id: payment.from_account_id,
                amount_minor: payment.amount_minor,
                expires_at,
            });
        }
        if let Some(metadata) = metadata {
            self.writes
                .pairs
                .extend(
                    metadata
                        .pairs()
                        .iter()
                        .map(|(key, value)| payment_metadata::Model {
                            client_id: payment.client_id,
                            key: key.clone(),
                            value: value.clone(),
                            payment_id: payment.id,
                        }),
                );
        }
        self.answers.push((index, payment.clone()));
        self.payments.push(payment);
    }
}

/// Reads the batch context when the batch needs one: when it settles or refunds, or a
/// locked account has holds. A batch of plain payments between accounts without holds
/// reads nothing more.
async fn read_context(
    transaction: &sea_orm::DatabaseTransaction,
    backend: Backend,
    jobs: &[&PaymentJob],
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
        batch_sql::batch_context(transaction, backend, &held_accounts, &holds, &originals).await?,
    ))
}

/// Decides `selected` jobs (indexes into `jobs`, in queue order) one after another
/// against the locked states: each sees what the earlier ones left, holds they settled
/// and refunds they posted included. Returns each job's decision (or why it cannot be
/// carried out) and the accounts' states after all of them.
fn decide(
    jobs: &[&PaymentJob],
    selected: &[usize],
    locked: &HashMap<Uuid, account::Model>,
    context: Option<&BatchContext>,
) -> (Decisions, HashMap<Uuid, AccountState>) {
    let mut states: HashMap<Uuid, AccountState> = locked
        .values()
        .map(|row| (row.id, account_state(row, context)))
        .collect();
    let mut live_holds = context
        .map(|context| context.live_holds.clone())
        .unwrap_or_default();
    let mut refunded = context
        .map(|context| context.refunded.clone())
        .unwrap_or_default();
    let now = context.map(|context| context.now);
    let mut decisions = Vec::with_capacity(selected.len());
    for &index in selected {
        let job = jobs[index];
        let decided = decide_one(
            job,
            &mut states,
            &mut live_holds,
            &mut refunded,
            now,
            context,
        );
        decisions.push((index, decided));
    }
    (decisions, states)
}

fn decide_one(
    job: &PaymentJob,
    states: &mut HashMap<Uuid, AccountState>,
    live_holds: &mut HashMap<Uuid, DateTime<Utc>>,
    refunded: &mut HashMap<Uuid, i64>,
    now: Option<DateTime<Utc>>,
    context: Option<&BatchContext>,
) -> AppResult<Decided> {
    let Work::Group {
        group,
        hold_expiries,
        ..
    } = &job.work
    else {
        return decide_single(job, states, live_holds, refunded, now, context).map(Decided::One);
    };
    let movements: Vec<Movement<Uuid>> = group
        .payments
        .iter()
        .zip(hold_expiries)
        .map(|(request, hold_expires_at)| {
            let (from, to, amount) = (request.from.0, request.to.0, request.amount);
            match hold_expires_at {
                Some(_) => Movement::Hold { from, to, amount },
                None => Movement::Pay { from, to, amount },
            }
        })
        .collect();
    plan_linked(states, &movements)
        .map(Decided::Group)
        .ok_or_else(|| {
            AppError::internal(anyhow::anyhow!("a checked group has no locked accounts"))
        })
}

fn decide_single(
    job: &PaymentJob,
    states: &mut HashMap<Uuid, AccountState>,
    live_holds: &mut HashMap<Uuid, DateTime<Utc>>,
    refunded: &mut HashMap<Uuid, i64>,
    now: Option<DateTime<Utc>>,
    context: Option<&BatchContext>,
) -> AppResult<Decision> {
    let unplanned = || AppError::internal(anyhow::anyhow!("a checked job has no locked accounts"));
    let plan_of = |states: &mut HashMap<Uuid, AccountState>, movement| {
        plan_in_order(states, [movement])
            .pop()
            .flatten()
            .ok_or_else(unplanned)
    };
    match &job.work {
        Work::Pay {
            request,
            hold_expires_at,
        } => {
            let (from, to, amount) = (request.from.0, request.to.0, request.amount);
            let movement = match hold_expires_at {
                Some(_) => Movement::Hold { from, to, amount },
                None => Movement::Pay { from, to, amount },
            };
            Ok(Decision {
                plan: plan_of(states, movement)?,
                amount_minor: amount.minor(),
            })
        }
        Work::Capture { hold, amount } => {
            let held = take_live_hold(hold, live_holds, now)?;
            let plan = plan_of(
                states,
                Movement::Capture {
                    from: hold.from_account_id,
                    to: hold.to_account_id,
                    held,
                    amount: *amount,
                },
            )?;
            if let PostingPlan::Decline(reason) = plan {
                // Put back: nothing happened to the hold.
                live_holds.insert(hold.id, hold.hold_expires_at.unwrap_or_default());
                let message = format!("the capture cannot post: {}", reason.as_str());
                return Err(match reason {
                    DeclineReason::AccountFrozen => AppError::AccountFrozen(message),
                    DeclineReason::AccountClosed => AppError::AccountClosed(message),
                    _ => AppError::bad_input(message),
                });
            }
            Ok(Decision {
                plan,
                amount_minor: amount.minor(),
            })
        }
        Work::Void { hold } => {
            let held = take_live_hold(hold, live_holds, now)?;
            Ok(Decision {
                plan: plan_of(
                    states,
                    Movement::Void {
                        from: hold.from_account_id,
                        held,
                    },
                )?,
                amount_minor: 0,
            })
        }
        Work::Refund {
            original, amount, ..
        } => {
            let captured = context.and_then(|context| context.captured.get(&original.id).copied());
            let posted = lifecycle::posted_amount(original.status, original.amount_minor, captured);
            let given = refunded.get(&original.id).copied().unwrap_or(0);
            let amount_minor =
                lifecycle::refund_amount(posted, given, amount.map(PositiveAmount::minor))?;
            let amount = PositiveAmount::from_minor(amount_minor).ok_or_else(unplanned)?;
            let plan = plan_of(
                states,
                Movement::Pay {
                    from: original.to_account_id,
                    to: original.from_account_id,
                    amount,
                },
            )?;
            if matches!(plan, PostingPlan::Post { .. }) {
                *refunded.entry(original.id).or_default() += amount_minor;
            }
            Ok(Decision { plan, amount_minor })
        }
        Work::Group { .. } => Err(unplanned()),
    }
}

/// Takes a hold out of the live set for settling: it must be there and not have expired
/// at the decision time.
fn take_live_hold(
    hold: &payment::Model,
    live_holds: &mut HashMap<Uuid, DateTime<Utc>>,
    now: Option<DateTime<Utc>>,
) -> AppResult<PositiveAmount> {
    let live = match (live_holds.get(&hold.id), now) {
        (Some(&expires_at), Some(now)) => lifecycle::is_live(expires_at, now),
        _ => false,
    };
    if !live {
        return Err(AppError::PaymentNotPending(format!(
            "payment {} is not a live hold: it was captured, voided or declined, or it expired",
            crate::ids::PaymentId(hold.id)
        )));
    }
    live_holds.remove(&hold.id);
    PositiveAmount::from_minor(hold.amount_minor)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a hold of nothing")))
}

/// The accounts the batch changed: balance and version, pending, or holds (placed,
/// settled, or expired ones released).
fn account_moves(
    locked: &HashMap<Uuid, account::Model>,
    states: &HashMap<Uuid, AccountState>,
    last_entry_at: &HashMap<Uuid, DateTime<Utc>>,
    holds: &LifecycleWrites,
    context: Option<&BatchContext>,
) -> Vec<AccountMove> {
    let mut holds_changed: HashSet<Uuid> = holds.placed.iter().map(|row| row.account_id).collect();
    if let Some(context) = context {
        holds_changed.extend(
            context
                .pending
                .iter()
                .filter(|(_, pending)| pending.has_expired)
                .map(|(account, _)| *account),
        );
    }
    // A settled hold changes its payer's pending (a void) or version (a capture), so
    // the payer moves without being named here.
    let mut moves: Vec<AccountMove> = states
        .iter()
        .filter_map(|(id, state)| {
            let row = locked.get(id)?;
            let holds_moved =
                holds_changed.contains(id) || state.pending_minor != row.pending_minor;
            (state.version != row.version || holds_moved).then_some(AccountMove {
                id: *id,
                locked_version: row.version,
                balance_minor: state.balance_minor,
                version: state.version,
                last_entry_at: last_entry_at.get(id).copied(),
                locked_hold_seq: row.hold_seq,
                pending_minor: state.pending_minor,
                hold_seq: row.hold_seq + i64::from(holds_moved),
            })
        })
        .collect();
    moves.sort_by_key(|row| row.id);
    moves
}

/// The new balances of the moved accounts for the caches: pending as decided, and until
/// when it holds (the earliest expiry among the holds it counts, or earlier).
fn new_balances(
    moves: &[AccountMove],
    holds: &LifecycleWrites,
    context: Option<&BatchContext>,
) -> Vec<(Uuid, VersionedBalance)> {
    moves
        .iter()
        .map(|row| {
            let known = context
                .and_then(|context| context.pending.get(&row.id))
                .and_then(|pending| pending.next_expiry);
            let placed = holds
                .placed
                .iter()
                .filter(|hold| hold.account_id == row.id)
                .map(|hold| hold.expires_at);
            let pending_until = known.into_iter().chain(placed).min();
            (
                row.id,
                VersionedBalance {
                    balance_minor: row.balance_minor,
                    version: row.version,
                    hold_seq: row.hold_seq,
                    pending_minor: row.pending_minor,
                    pending_until: pending_until.filter(|_| row.pending_minor > 0),
                },
            )
        })
        .collect()
}

/// A job's own check against its locked accounts: they exist and are the caller's, and
/// a new payment's currency is theirs. Accounts never change owner or currency, so a
/// job that fails here fails the same way every time. (Captures, voids and refunds
/// name accounts of a payment already checked to be the caller's.)
fn check_accounts(job: &PaymentJob, locked: &HashMap<Uuid, account::Model>) -> AppResult<()> {
    let owned = |id: Uuid| {
        locked
            .get(&id)
            .filter(|account| account.client_id == job.client.0)
            .ok_or_else(|| {
                AppError::not_found(format!("account {} not found", crate::ids::AccountId(id)))
            })
    };
    let requested = |request: &NewPayment| {
        for id in [request.from.0, request.to.0] {
            let account = owned(id)?;
            if account.currency != request.currency.code() {
                return Err(AppError::CurrencyMismatch(format!(
                    "payment is in {} but account {} holds {}",
                    request.currency,
                    crate::ids::AccountId(id),
                    account.currency
                )));
            }
        }
        Ok(())
    };
    match &job.work {
        Work::Pay { request, .. } => requested(request),
        Work::Group { group, .. } => group.payments.iter().try_for_each(requested),
        Work::Capture { .. } | Work::Void { .. } | Work::Refund { .. } => job
            .accounts()
            .into_iter()
            .try_for_each(|id| owned(id).map(drop)),
    }
}

/// The payment row a decision writes, with no accounts or currency yet: its status and
/// decline reason follow the plan.
fn decided_payment(
    job: &PaymentJob,
    id: Uuid,
    decision: &Decision,
    now: DateTime<Utc>,
) -> AppResult<payment::Model> {
    let (status, decline_reason) = match decision.plan {
        PostingPlan::Post { .. } => (StoredStatus::Posted, None),
        PostingPlan::Hold => (StoredStatus::Pending, None),
        PostingPlan::Decline(reason) => (StoredStatus::Declined, Some(reason.as_str().to_owned())),
        PostingPlan::Release => {
            return Err(AppError::internal(anyhow::anyhow!(
                "a payment was planned as a release"
            )));
        }
    };
    Ok(payment::Model {
        id,
        client_id: job.client.0,
        idempotency_key: job.idempotency_key.as_str().to_owned(),
        from_account_id: Uuid::nil(),
        to_account_id: Uuid::nil(),
        amount_minor: decision.amount_minor,
        currency: String::new(),
        status,
        decline_reason,
        description: None,
        created_at: now,
        hold_expires_at: None,
        refund_of: None,
        // Set when the batch is written (`batch_sql::write_postings`).
        feed_seq: 0,
        metadata: None,
        group_id: None,
        group_index: None,
    })
}

/// The payment (or hold) a request writes, alone or in a group.
fn requested_payment(
    job: &PaymentJob,
    id: Uuid,
    request: &NewPayment,
    hold_expires_at: Option<DateTime<Utc>>,
    decision: &Decision,
    now: DateTime<Utc>,
) -> AppResult<payment::Model> {
    Ok(payment::Model {
        from_account_id: request.from.0,
        to_account_id: request.to.0,
        currency: request.currency.code().to_owned(),
        description: request.description.clone(),
        hold_expires_at,
        metadata: request.metadata.as_ref().map(Metadata::to_json),
        ..decided_payment(job, id, decision, now)?
    })
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

/// An account's state for deciding: pending as live at the decision time when the
/// batch read its holds (an account it did not read has none).
fn account_state(account: &account::Model, context: Option<&BatchContext>) -> AccountState {
    let pending_minor = context
        .and_then(|context| context.pending.get(&account.id))
        .map_or(account.pending_minor, |pending| pending.sum_minor);
    AccountState {
        rule: account.balance_rule,
        credit_limit_minor: account.credit_limit_minor,
        balance_minor: account.balance_minor,
        version: account.version,
        pending_minor,
        status: account.status,
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
