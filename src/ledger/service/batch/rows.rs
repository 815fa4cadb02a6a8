//! Building a decided batch's rows, pure: payments stamped in order, their entries, hold
//! and metadata writes, groups, and the accounts' moves; and, once it committed, each
//! job's answer and what the caches learn. Nothing here reads or writes the database.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::super::write::WriteError;
use super::decide::{BatchContext, Decision, Decisions};
use super::job::{Job, JobResult, Work};
use crate::cache::VersionedBalance;
use crate::entity::payment::StoredStatus;
use crate::entity::payment_settlement::SettlementKind;
use crate::entity::{
    account, ledger_entry, live_hold, payment, payment_group, payment_metadata, payment_settlement,
};
use crate::error::{AppError, AppResult};
use crate::ids::LedgerEntryId;
use crate::ledger::metadata::Metadata;
use crate::ledger::posting::{AccountState, EntryPlan, PostingPlan, posting_time};
use crate::ledger::requests::{NewPayment, NewPaymentGroup};

/// An account a batch changed: its balance (from `locked_version` to `version`), its
/// holds (from `locked_hold_seq` to `hold_seq`), or both.
pub(super) struct AccountMove {
    pub(super) id: Uuid,
    pub(super) locked_version: i64,
    pub(super) balance_minor: i64,
    pub(super) version: i64,
    /// The time of its last entry once the batch is written.
    pub(super) last_entry_at: Option<DateTime<Utc>>,
    pub(super) locked_hold_seq: i64,
    pub(super) pending_minor: i64,
    pub(super) hold_seq: i64,
}

/// What a batch writes besides its payments, entries and account moves: hold changes,
/// metadata pairs and payment groups.
#[derive(Default)]
pub(super) struct LifecycleWrites {
    pub(super) settlements: Vec<payment_settlement::Model>,
    /// Holds placed.
    pub(super) placed: Vec<live_hold::Model>,
    /// Holds that leave because they were settled (payment ids).
    pub(super) settled: Vec<Uuid>,
    /// Accounts whose expired holds leave, and the moment that decides "expired".
    pub(super) expired_on: Vec<Uuid>,
    pub(super) expired_at: Option<DateTime<Utc>>,
    pub(super) pairs: Vec<payment_metadata::Model>,
    pub(super) groups: Vec<payment_group::Model>,
}

impl LifecycleWrites {
    pub(super) fn is_empty(&self) -> bool {
        self.settlements.is_empty()
            && self.placed.is_empty()
            && self.settled.is_empty()
            && self.expired_on.is_empty()
            && self.pairs.is_empty()
            && self.groups.is_empty()
    }
}

/// A committed batch: each job's outcome, the payments it wrote with their entries and
/// the settlements (for L1), and the accounts' new balances (for the write-through).
pub(super) struct CommittedBatch {
    pub(super) outcomes: Vec<JobResult>,
    pub(super) decided: Vec<(payment::Model, Vec<ledger_entry::Model>)>,
    pub(super) settlements: Vec<(payment_settlement::Model, Vec<ledger_entry::Model>)>,
    pub(super) balances: Vec<(Uuid, VersionedBalance)>,
    /// The batch's account rows as it committed them.
    pub(super) accounts: Vec<account::Model>,
}

impl CommittedBatch {
    /// The clients whose data the batch changed, each once.
    pub(super) fn clients(&self) -> Vec<Uuid> {
        let mut clients: Vec<Uuid> = self
            .decided
            .iter()
            .map(|(payment, _)| payment.client_id)
            .chain(
                self.settlements
                    .iter()
                    .map(|(settlement, _)| settlement.client_id),
            )
            .chain(self.accounts.iter().map(|account| account.client_id))
            .collect();
        clients.sort_unstable();
        clients.dedup();
        clients
    }
}

/// Everything a batch writes once its jobs are decided, and what each job answers.
#[derive(Default)]
pub(in crate::ledger::service) struct BatchRows {
    pub(super) payments: Vec<payment::Model>,
    pub(super) entries: Vec<ledger_entry::Model>,
    pub(super) writes: LifecycleWrites,
    /// What each carried-out job answers (a group: each of its payments, in order).
    answers: Vec<(usize, payment::Model)>,
    pub(super) moves: Vec<AccountMove>,
}

impl BatchRows {
    /// Whether the batch writes nothing at all (every job refused or replayed).
    pub(super) fn is_empty(&self) -> bool {
        self.payments.is_empty() && self.moves.is_empty() && self.writes.settlements.is_empty()
    }

    /// Sets the position in the feeds the database gave the batch's new rows.
    pub(super) fn set_feed_seq(&mut self, feed_seq: i64) {
        for payment in &mut self.payments {
            payment.feed_seq = feed_seq;
        }
        for entry in &mut self.entries {
            entry.feed_seq = feed_seq;
        }
    }

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

    /// A capture or void of job `index`: the settlement, the hold leaving the live set,
    /// and for a capture the hold's entries, written now.
    fn add_settlement(
        &mut self,
        index: usize,
        job: &Job,
        hold: &payment::Model,
        decision: (PostingPlan, i64),
        times: (DateTime<Utc>, DateTime<Utc>),
    ) {
        let ((plan, amount_minor), (now, posted_at)) = (decision, times);
        let (kind, amount_minor) = match plan {
            PostingPlan::Post { debit, credit } => {
                self.entries
                    .extend(
                        entry_rows(hold, [debit, credit]).map(|row| ledger_entry::Model {
                            created_at: posted_at,
                            ..row
                        }),
                    );
                (SettlementKind::Capture, amount_minor)
            }
            _ => (SettlementKind::Void, 0),
        };
        self.writes.settled.push(hold.id);
        self.writes.settlements.push(payment_settlement::Model {
            id: job.request.resource_id,
            client_id: job.request.client.0,
            payment_id: hold.id,
            kind,
            amount_minor,
            created_at: now,
        });
        self.answers.push((index, hold.clone()));
    }
}

/// When each posting happens: now, but no earlier than the last entry on either of its
/// accounts, so an account's entries never go back in time.
struct Stamps {
    now: DateTime<Utc>,
    last_entry_at: HashMap<Uuid, DateTime<Utc>>,
}

impl Stamps {
    fn stamp(&mut self, plan: &PostingPlan, from: Uuid, to: Uuid) -> DateTime<Utc> {
        if !matches!(plan, PostingPlan::Post { .. }) {
            return self.now;
        }
        let at = posting_time(
            self.now,
            [self.last_entry_at.get(&from), self.last_entry_at.get(&to)].map(|at| at.copied()),
        );
        self.last_entry_at.insert(from, at);
        self.last_entry_at.insert(to, at);
        at
    }
}

/// The rows that carry out `decisions` (made against `locked`, leaving `states`):
/// payments stamped in order, their entries, hold and metadata writes, and the
/// accounts' moves. A decision that does not fit its job is a bug: INTERNAL, logged
/// with the job's request, and nothing of the batch is written.
pub(super) fn build_rows(
    jobs: &[&Job],
    decisions: Decisions,
    locked: &HashMap<Uuid, account::Model>,
    states: &HashMap<Uuid, AccountState>,
    context: Option<&BatchContext>,
) -> Result<BatchRows, WriteError> {
    let mut stamps = Stamps {
        now: crate::entity::stored_now(),
        last_entry_at: locked
            .values()
            .filter_map(|row| Some((row.id, row.last_entry_at?)))
            .collect(),
    };
    let mut rows = BatchRows::default();
    for (index, decision) in decisions {
        let job = jobs[index];
        let Ok(decision) = decision else {
            continue;
        };
        if let Err(error) = add_job(&mut rows, &mut stamps, index, job, decision) {
            job.span.in_scope(|| {
                tracing::error!(error = %error, "a batch decision does not fit its job");
            });
            return Err(WriteError::Failed(error));
        }
    }
    rows.moves = account_moves(locked, states, &stamps.last_entry_at, &rows.writes, context);
    if let Some(context) = context {
        rows.writes.expired_on = context
            .pending
            .iter()
            .filter(|(_, pending)| pending.has_expired)
            .map(|(account, _)| *account)
            .collect();
        rows.writes.expired_at = Some(context.now);
    }
    Ok(rows)
}

/// The rows of one carried-out job.
fn add_job(
    rows: &mut BatchRows,
    stamps: &mut Stamps,
    index: usize,
    job: &Job,
    decision: Decision,
) -> AppResult<()> {
    let now = stamps.now;
    match (decision, &job.work) {
        (
            Decision::Single { plan, amount_minor },
            Work::Pay {
                request,
                hold_expires_at,
            },
        ) => {
            let posted_at = stamps.stamp(&plan, request.from.0, request.to.0);
            let payment = requested_payment(
                job,
                job.request.resource_id,
                request,
                *hold_expires_at,
                (plan, amount_minor),
                posted_at,
            )?;
            rows.add_payment(index, payment, plan, request.metadata.as_ref());
        }
        (
            Decision::Single { plan, amount_minor },
            Work::Refund {
                original, reason, ..
            },
        ) => {
            let (from, to) = (original.to_account_id, original.from_account_id);
            let posted_at = stamps.stamp(&plan, from, to);
            let payment = payment::Model {
                from_account_id: from,
                to_account_id: to,
                currency: original.currency.clone(),
                description: reason.clone(),
                refund_of: Some(original.id),
                ..decided_payment(
                    job,
                    job.request.resource_id,
                    (plan, amount_minor),
                    posted_at,
                )?
            };
            rows.add_payment(index, payment, plan, None);
        }
        (
            Decision::Single { plan, amount_minor },
            Work::Capture { hold, .. } | Work::Void { hold },
        ) => {
            let posted_at = stamps.stamp(&plan, hold.from_account_id, hold.to_account_id);
            rows.add_settlement(index, job, hold, (plan, amount_minor), (now, posted_at));
        }
        (
            Decision::Group(plans),
            Work::Group {
                group,
                payment_ids,
                hold_expiries,
            },
        ) => add_group(
            rows,
            stamps,
            (index, job),
            plans,
            (group, payment_ids, hold_expiries),
        )?,
        (decision, _) => {
            return Err(AppError::internal(anyhow::anyhow!(
                "decision {decision:?} does not fit its job"
            )));
        }
    }
    Ok(())
}

/// The group of job `index` and its payments, in order.
fn add_group(
    rows: &mut BatchRows,
    stamps: &mut Stamps,
    (index, job): (usize, &Job),
    plans: Vec<PostingPlan>,
    (group, payment_ids, hold_expiries): (&NewPaymentGroup, &[Uuid], &[Option<DateTime<Utc>>]),
) -> AppResult<()> {
    rows.writes.groups.push(payment_group::Model {
        id: job.request.resource_id,
        client_id: job.request.client.0,
        idempotency_key: job.request.key.as_str().to_owned(),
        payment_count: i32::try_from(plans.len()).unwrap_or(i32::MAX),
        metadata: group.metadata.as_ref().map(Metadata::to_json),
        created_at: stamps.now,
    });
    let members = group.payments.iter().zip(payment_ids).zip(hold_expiries);
    for (group_index, (plan, ((request, &id), &hold_expires_at))) in
        plans.into_iter().zip(members).enumerate()
    {
        let posted_at = stamps.stamp(&plan, request.from.0, request.to.0);
        let payment = payment::Model {
            group_id: Some(job.request.resource_id),
            group_index: i32::try_from(group_index).ok(),
            ..requested_payment(
                job,
                id,
                request,
                hold_expires_at,
                (plan, request.amount.minor()),
                posted_at,
            )?
        };
        rows.add_payment(index, payment, plan, request.metadata.as_ref());
    }
    Ok(())
}

/// A committed batch's answers: each job's outcome, and what the caches learn.
pub(super) fn finish(
    mut outcomes: Vec<Option<JobResult>>,
    rows: BatchRows,
    locked: &HashMap<Uuid, account::Model>,
    context: Option<&BatchContext>,
) -> CommittedBatch {
    let BatchRows {
        payments,
        entries,
        writes,
        answers,
        moves,
    } = rows;
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

/// The payment row a decision writes, with no accounts or currency yet: its status and
/// decline reason follow the plan.
fn decided_payment(
    job: &Job,
    id: Uuid,
    (plan, amount_minor): (PostingPlan, i64),
    now: DateTime<Utc>,
) -> AppResult<payment::Model> {
    let (status, decline_reason) = match plan {
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
        client_id: job.request.client.0,
        idempotency_key: job.request.key.as_str().to_owned(),
        from_account_id: Uuid::nil(),
        to_account_id: Uuid::nil(),
        amount_minor,
        currency: String::new(),
        status,
        decline_reason,
        description: None,
        created_at: now,
        hold_expires_at: None,
        refund_of: None,
        // Set when the batch is written (`BatchRows::set_feed_seq`).
        feed_seq: 0,
        metadata: None,
        group_id: None,
        group_index: None,
    })
}

/// The payment (or hold) a request writes, alone or in a group.
fn requested_payment(
    job: &Job,
    id: Uuid,
    request: &NewPayment,
    hold_expires_at: Option<DateTime<Utc>>,
    decision: (PostingPlan, i64),
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

#[cfg(test)]
mod tests {
    use super::super::decide::decide;
    use super::super::fixtures::{account, at, job, locked, pay};
    use super::*;
    use crate::entity::account::BalanceRule;
    use crate::entity::ledger_entry::EntryDirection;

    fn built(jobs: &[Job], rows: &HashMap<Uuid, account::Model>) -> BatchRows {
        let jobs: Vec<&Job> = jobs.iter().collect();
        let selected: Vec<usize> = (0..jobs.len()).collect();
        let (decisions, states) = decide(&jobs, &selected, rows, None);
        build_rows(&jobs, decisions, rows, &states, None).unwrap()
    }

    #[test]
    fn a_posted_payment_writes_two_entries_and_moves_both_accounts() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 50),
        ]);
        let batch = built(&[job("a", 10, pay(1, 2, 400, None))], &rows);
        assert_eq!(batch.payments.len(), 1);
        assert_eq!(batch.payments[0].status, StoredStatus::Posted);
        let entries: Vec<_> = batch
            .entries
            .iter()
            .map(|entry| {
                (
                    entry.account_id,
                    entry.direction,
                    entry.amount_minor,
                    entry.balance_after_minor,
                    entry.account_version,
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                (Uuid::from_u128(1), EntryDirection::Debit, 400, 600, 2),
                (Uuid::from_u128(2), EntryDirection::Credit, 400, 450, 2),
            ]
        );
        let moves: Vec<_> = batch
            .moves
            .iter()
            .map(|moved| {
                (
                    moved.id,
                    moved.locked_version,
                    moved.version,
                    moved.balance_minor,
                )
            })
            .collect();
        assert_eq!(
            moves,
            [
                (Uuid::from_u128(1), 1, 2, 600),
                (Uuid::from_u128(2), 1, 2, 450)
            ]
        );
    }

    #[test]
    fn a_declined_payment_is_stored_and_moves_nothing() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 100),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let batch = built(&[job("a", 10, pay(1, 2, 400, None))], &rows);
        assert_eq!(batch.payments[0].status, StoredStatus::Declined);
        assert_eq!(
            batch.payments[0].decline_reason.as_deref(),
            Some("INSUFFICIENT_FUNDS")
        );
        assert!(batch.entries.is_empty());
        assert!(batch.moves.is_empty());
    }

    #[test]
    fn entries_never_go_back_in_time_on_an_account() {
        let mut payer = account(1, BalanceRule::NonNegative, 1_000);
        // Its last entry is stamped after this machine's clock: the next one follows it.
        let later = crate::entity::stored_now() + chrono::Duration::hours(1);
        payer.last_entry_at = Some(later);
        let rows = locked(vec![payer, account(2, BalanceRule::NonNegative, 0)]);
        let batch = built(&[job("a", 10, pay(1, 2, 100, None))], &rows);
        assert!(batch.entries.iter().all(|entry| entry.created_at >= later));
        assert_eq!(
            batch.moves[0].last_entry_at,
            Some(batch.entries[0].created_at)
        );
    }

    #[test]
    fn a_hold_is_placed_and_only_the_holds_move() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let batch = built(&[job("h", 10, pay(1, 2, 300, Some(at(3_600))))], &rows);
        assert_eq!(batch.payments[0].status, StoredStatus::Pending);
        assert_eq!(batch.writes.placed.len(), 1);
        assert_eq!(batch.writes.placed[0].amount_minor, 300);
        assert!(batch.entries.is_empty());
        let payer = &batch.moves[0];
        assert_eq!(
            (payer.version, payer.pending_minor, payer.hold_seq),
            (1, 300, 1),
            "the balance stays; pending and the hold sequence move"
        );
        assert_eq!(batch.moves.len(), 1);
    }

    #[test]
    fn a_decision_that_does_not_fit_its_job_is_internal() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let jobs = [job("a", 10, pay(1, 2, 100, None))];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let (_, states) = decide(&jobs, &[0], &rows, None);
        let wrong = vec![(0, Ok(Decision::Group(vec![PostingPlan::Hold])))];
        match build_rows(&jobs, wrong, &rows, &states, None) {
            Err(WriteError::Failed(error)) => assert_eq!(error.code(), "INTERNAL"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a mismatched decision was built"),
        }
    }

    #[test]
    fn a_committed_batch_answers_every_job_and_keeps_earlier_outcomes() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let jobs = [
            job("a", 10, pay(1, 2, 100, None)),
            job("a", 11, pay(1, 2, 100, None)),
        ];
        let job_refs: Vec<&Job> = jobs.iter().collect();
        let (decisions, states) = decide(&job_refs, &[0], &rows, None);
        let mut batch = build_rows(&job_refs, decisions, &rows, &states, None).unwrap();
        batch.set_feed_seq(77);
        let committed = finish(
            vec![None, Some(Err(WriteError::KeyTaken))],
            batch,
            &rows,
            None,
        );
        let paid = committed.outcomes[0].as_ref().unwrap();
        assert_eq!((paid.id, paid.feed_seq), (Uuid::from_u128(10), 77));
        assert!(matches!(committed.outcomes[1], Err(WriteError::KeyTaken)));
        assert_eq!(committed.decided.len(), 1);
        assert_eq!(
            committed.decided[0].1.len(),
            2,
            "the payment with its entries"
        );
        let balances: HashMap<Uuid, i64> = committed
            .balances
            .iter()
            .map(|(id, balance)| (*id, balance.balance_minor))
            .collect();
        assert_eq!(balances[&Uuid::from_u128(1)], 900);
        assert_eq!(balances[&Uuid::from_u128(2)], 100);
    }
}
