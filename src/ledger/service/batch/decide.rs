//! Deciding a batch, pure: each job checked against its locked accounts, then decided
//! in queue order against the states the earlier ones left (holds they settled and
//! refunds they posted included). Payments and holds follow `posting`'s rules; the
//! capture, void and refund rules are here, beside them. Nothing here reads or writes
//! the database.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::super::write::WriteError;
use super::job::{Job, JobResult, Work};
use crate::entity::{account, payment};
use crate::error::{AppError, AppResult};
use crate::ledger::lifecycle;
use crate::ledger::money::PositiveAmount;
use crate::ledger::posting::{
    AccountState, DeclineReason, Movement, PostingPlan, plan_in_order, plan_linked,
};
use crate::ledger::requests::NewPayment;

/// What deciding a job came to, before anything is written.
#[derive(Debug, Clone)]
pub(super) enum Decision {
    /// A payment, hold, capture, void or refund: its plan, and what it moves (a
    /// capture's or refund's amount; a payment's own otherwise; a void, nothing).
    Single {
        plan: PostingPlan,
        amount_minor: i64,
    },
    /// A group: one plan per payment, in order.
    Group(Vec<PostingPlan>),
}

/// Each decided job (an index into the batch) and what deciding it came to.
pub(super) type Decisions = Vec<(usize, AppResult<Decision>)>;

/// Live holds on an account at a batch's decision time.
#[derive(Debug, Clone, Copy, Default)]
pub(in crate::ledger::service) struct LivePending {
    pub(super) sum_minor: i64,
    pub(super) next_expiry: Option<DateTime<Utc>>,
    /// Whether expired holds are still in `live_holds` (and in `pending_minor`).
    pub(super) has_expired: bool,
}

/// What a batch reads after its locks, beyond the account rows: the decision time
/// (PostgreSQL's clock, so every instance judges expiry by one clock), live pending
/// amounts, the holds it settles, and what the payments it refunds have posted and
/// given back so far.
#[derive(Debug, Clone)]
pub(in crate::ledger::service) struct BatchContext {
    pub(super) now: DateTime<Utc>,
    pub(super) pending: HashMap<Uuid, LivePending>,
    /// Live holds by payment id: their expiry.
    pub(super) live_holds: HashMap<Uuid, DateTime<Utc>>,
    /// Posted refunds so far, by refunded payment.
    pub(super) refunded: HashMap<Uuid, i64>,
    /// Captured amounts, by hold.
    pub(super) captured: HashMap<Uuid, i64>,
}

impl BatchContext {
    /// A context decided at `now` with nothing read yet.
    pub(super) fn at(now: DateTime<Utc>) -> Self {
        Self {
            now,
            pending: HashMap::new(),
            live_holds: HashMap::new(),
            refunded: HashMap::new(),
            captured: HashMap::new(),
        }
    }
}

/// Each job's check against its accounts and against the batch's other keys: the jobs
/// that go on to be decided (indexes into `jobs`), and an outcome for each that does
/// not.
pub(super) fn screen(
    jobs: &[&Job],
    locked: &HashMap<Uuid, account::Model>,
) -> (Vec<Option<JobResult>>, Vec<usize>) {
    let mut outcomes: Vec<Option<JobResult>> = jobs.iter().map(|_| None).collect();
    let mut candidates: Vec<usize> = Vec::with_capacity(jobs.len());
    let mut keys_in_batch = HashSet::with_capacity(jobs.len());
    for (index, job) in jobs.iter().enumerate() {
        if let Err(error) = check_accounts(job, locked) {
            outcomes[index] = Some(Err(WriteError::Invalid(error)));
        } else if !keys_in_batch.insert((job.request.client, job.request.key.as_str())) {
            // The same key twice in one batch: the first claims it, the second
            // replays it once the batch has committed.
            outcomes[index] = Some(Err(WriteError::KeyTaken));
        } else {
            candidates.push(index);
        }
    }
    (outcomes, candidates)
}

/// Decides `selected` jobs (indexes into `jobs`, in queue order) one after another
/// against the locked states: each sees what the earlier ones left, holds they settled
/// and refunds they posted included. Returns each job's decision (or why it cannot be
/// carried out) and the accounts' states after all of them.
pub(super) fn decide(
    jobs: &[&Job],
    selected: &[usize],
    locked: &HashMap<Uuid, account::Model>,
    context: Option<&BatchContext>,
) -> (Decisions, HashMap<Uuid, AccountState>) {
    let mut decider = Decider {
        states: locked
            .values()
            .map(|row| (row.id, account_state(row, context)))
            .collect(),
        live_holds: context
            .map(|context| context.live_holds.clone())
            .unwrap_or_default(),
        refunded: context
            .map(|context| context.refunded.clone())
            .unwrap_or_default(),
        now: context.map(|context| context.now),
        captured: context.map(|context| &context.captured),
    };
    let decisions = selected
        .iter()
        .map(|&index| (index, decider.decide(&jobs[index].work)))
        .collect();
    (decisions, decider.states)
}

/// The batch's state as its jobs are decided in order.
struct Decider<'a> {
    states: HashMap<Uuid, AccountState>,
    /// Live holds by payment id, with their expiry; a settled hold leaves.
    live_holds: HashMap<Uuid, DateTime<Utc>>,
    /// Posted refunds so far, by refunded payment.
    refunded: HashMap<Uuid, i64>,
    /// The decision time, when the batch read its context (only batches with holds,
    /// settlements or refunds need one).
    now: Option<DateTime<Utc>>,
    captured: Option<&'a HashMap<Uuid, i64>>,
}

impl Decider<'_> {
    fn decide(&mut self, work: &Work) -> AppResult<Decision> {
        match work {
            Work::Pay {
                request,
                hold_expires_at,
            } => {
                let plan = self.plan(movement_of(request, hold_expires_at.is_some()))?;
                Ok(Decision::Single {
                    plan,
                    amount_minor: request.amount.minor(),
                })
            }
            Work::Capture { hold, amount } => self.capture(hold, *amount),
            Work::Void { hold } => {
                let held = self.take_live_hold(hold)?;
                let plan = self.plan(Movement::Void {
                    from: hold.from_account_id,
                    held,
                })?;
                Ok(Decision::Single {
                    plan,
                    amount_minor: 0,
                })
            }
            Work::Refund {
                original, amount, ..
            } => self.refund(original, *amount),
            Work::Group {
                group,
                hold_expiries,
                ..
            } => {
                let movements: Vec<Movement<Uuid>> = group
                    .payments
                    .iter()
                    .zip(hold_expiries)
                    .map(|(request, expiry)| movement_of(request, expiry.is_some()))
                    .collect();
                plan_linked(&mut self.states, &movements)
                    .map(Decision::Group)
                    .ok_or_else(unplanned)
            }
        }
    }

    /// A capture posts `amount` of a live hold and releases the rest; one that cannot
    /// post (a frozen or closed account) leaves the hold as it was.
    fn capture(&mut self, hold: &payment::Model, amount: PositiveAmount) -> AppResult<Decision> {
        let held = self.take_live_hold(hold)?;
        let plan = self.plan(Movement::Capture {
            from: hold.from_account_id,
            to: hold.to_account_id,
            held,
            amount,
        })?;
        if let PostingPlan::Decline(reason) = plan {
            self.live_holds
                .insert(hold.id, hold.hold_expires_at.unwrap_or_default());
            let message = format!("the capture cannot post: {}", reason.as_str());
            return Err(match reason {
                DeclineReason::AccountFrozen => AppError::AccountFrozen(message),
                DeclineReason::AccountClosed => AppError::AccountClosed(message),
                _ => AppError::bad_input(message),
            });
        }
        Ok(Decision::Single {
            plan,
            amount_minor: amount.minor(),
        })
    }

    /// A refund gives back what is asked (or all that is left) of what the payment
    /// posted, never more than posted minus refunded so far, batch included.
    fn refund(
        &mut self,
        original: &payment::Model,
        amount: Option<PositiveAmount>,
    ) -> AppResult<Decision> {
        let captured = self
            .captured
            .and_then(|captured| captured.get(&original.id).copied());
        let posted = lifecycle::posted_amount(original.status, original.amount_minor, captured);
        let given = self.refunded.get(&original.id).copied().unwrap_or(0);
        let amount_minor =
            lifecycle::refund_amount(posted, given, amount.map(PositiveAmount::minor))?;
        let amount = PositiveAmount::from_minor(amount_minor).ok_or_else(unplanned)?;
        let plan = self.plan(Movement::Pay {
            from: original.to_account_id,
            to: original.from_account_id,
            amount,
        })?;
        if matches!(plan, PostingPlan::Post { .. }) {
            *self.refunded.entry(original.id).or_default() += amount_minor;
        }
        Ok(Decision::Single { plan, amount_minor })
    }

    fn plan(&mut self, movement: Movement<Uuid>) -> AppResult<PostingPlan> {
        plan_in_order(&mut self.states, [movement])
            .pop()
            .flatten()
            .ok_or_else(unplanned)
    }

    /// Takes a hold out of the live set for settling: it must be there and not have
    /// expired at the decision time.
    fn take_live_hold(&mut self, hold: &payment::Model) -> AppResult<PositiveAmount> {
        let live = match (self.live_holds.get(&hold.id), self.now) {
            (Some(&expires_at), Some(now)) => lifecycle::is_live(expires_at, now),
            _ => false,
        };
        if !live {
            return Err(AppError::PaymentNotPending(format!(
                "payment {} is not a live hold: it was captured, voided or declined, or it expired",
                crate::ids::PaymentId(hold.id)
            )));
        }
        self.live_holds.remove(&hold.id);
        PositiveAmount::from_minor(hold.amount_minor)
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("a hold of nothing")))
    }
}

fn movement_of(request: &NewPayment, hold: bool) -> Movement<Uuid> {
    let (from, to, amount) = (request.from.0, request.to.0, request.amount);
    if hold {
        Movement::Hold { from, to, amount }
    } else {
        Movement::Pay { from, to, amount }
    }
}

/// Every job's accounts were locked and checked before it is decided.
fn unplanned() -> AppError {
    AppError::internal(anyhow::anyhow!("a checked job has no locked accounts"))
}

/// A job's own check against its locked accounts: they exist and are the caller's, and
/// a new payment's currency is theirs. Accounts never change owner or currency, so a
/// job that fails here fails the same way every time. (Captures, voids and refunds
/// name accounts of a payment already checked to be the caller's.)
fn check_accounts(job: &Job, locked: &HashMap<Uuid, account::Model>) -> AppResult<()> {
    let owned = |id: Uuid| {
        locked
            .get(&id)
            .filter(|account| account.client_id == job.request.client.0)
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

/// An account's state for deciding: pending as live at the decision time when the
/// batch read its holds (an account it did not read has none).
pub(super) fn account_state(
    account: &account::Model,
    context: Option<&BatchContext>,
) -> AccountState {
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{account, at, job, locked, pay, stored};
    use super::*;
    use crate::entity::account::BalanceRule;
    use crate::entity::payment::StoredStatus;
    use crate::ledger::posting::DeclineReason;

    fn plan_of(decision: &AppResult<Decision>) -> PostingPlan {
        match decision {
            Ok(Decision::Single { plan, .. }) => *plan,
            other => panic!("not a single decision: {other:?}"),
        }
    }

    /// A context read at `at(60)` with `holds` live until `at(3_600)`.
    fn context_with(holds: &[u128], refunded: &[(u128, i64)]) -> BatchContext {
        let mut context = BatchContext::at(at(60));
        for &hold in holds {
            context.live_holds.insert(Uuid::from_u128(hold), at(3_600));
        }
        for &(original, amount) in refunded {
            context.refunded.insert(Uuid::from_u128(original), amount);
        }
        context
    }

    #[test]
    fn jobs_are_decided_in_order_against_what_the_earlier_ones_left() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let jobs = [
            job("a", 10, pay(1, 2, 700, None)),
            job("b", 11, pay(1, 2, 700, None)),
            job("c", 12, pay(1, 2, 300, None)),
        ];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let (decisions, states) = decide(&jobs, &[0, 1, 2], &rows, None);
        assert!(matches!(plan_of(&decisions[0].1), PostingPlan::Post { .. }));
        assert_eq!(
            plan_of(&decisions[1].1),
            PostingPlan::Decline(DeclineReason::InsufficientFunds)
        );
        assert!(matches!(plan_of(&decisions[2].1), PostingPlan::Post { .. }));
        let payer = &states[&Uuid::from_u128(1)];
        assert_eq!((payer.balance_minor, payer.version), (0, 3));
        assert_eq!(states[&Uuid::from_u128(2)].balance_minor, 1_000);
    }

    #[test]
    fn a_hold_settles_once_per_batch() {
        let mut payer = account(1, BalanceRule::NonNegative, 1_000);
        payer.pending_minor = 400;
        let rows = locked(vec![payer, account(2, BalanceRule::NonNegative, 0)]);
        let hold = stored(50, (1, 2), 400, StoredStatus::Pending);
        let jobs = [
            job("void", 10, Work::Void { hold: hold.clone() }),
            job(
                "capture",
                11,
                Work::Capture {
                    hold,
                    amount: PositiveAmount::from_minor(400).unwrap(),
                },
            ),
        ];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let context = context_with(&[50], &[]);
        let (decisions, _) = decide(&jobs, &[0, 1], &rows, Some(&context));
        assert_eq!(plan_of(&decisions[0].1), PostingPlan::Release);
        let refused = decisions[1].1.as_ref().unwrap_err();
        assert_eq!(refused.code(), "PAYMENT_NOT_PENDING", "{refused}");
    }

    #[test]
    fn an_expired_hold_is_not_captured() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let hold = stored(50, (1, 2), 400, StoredStatus::Pending);
        let jobs = [job(
            "capture",
            10,
            Work::Capture {
                hold,
                amount: PositiveAmount::from_minor(100).unwrap(),
            },
        )];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let mut context = context_with(&[50], &[]);
        context.now = at(3_600);
        let (decisions, _) = decide(&jobs, &[0], &rows, Some(&context));
        let refused = decisions[0].1.as_ref().unwrap_err();
        assert_eq!(refused.code(), "PAYMENT_NOT_PENDING", "{refused}");
    }

    #[test]
    fn refunds_never_give_back_more_than_was_posted_batch_included() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 0),
            account(2, BalanceRule::NonNegative, 1_000),
        ]);
        let original = stored(60, (1, 2), 1_000, StoredStatus::Posted);
        let refund = |key: &str, resource: u128, amount: i64| {
            job(
                key,
                resource,
                Work::Refund {
                    original: original.clone(),
                    amount: PositiveAmount::from_minor(amount),
                    reason: None,
                },
            )
        };
        // 300 given back before this batch: 700 left.
        let jobs = [
            refund("r1", 10, 600),
            refund("r2", 11, 200),
            refund("r3", 12, 100),
        ];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let context = context_with(&[], &[(60, 300)]);
        let (decisions, states) = decide(&jobs, &[0, 1, 2], &rows, Some(&context));
        assert!(matches!(
            decisions[0].1,
            Ok(Decision::Single {
                amount_minor: 600,
                ..
            })
        ));
        let refused = decisions[1].1.as_ref().unwrap_err();
        assert_eq!(refused.code(), "REFUND_EXCEEDS_PAYMENT", "{refused}");
        assert!(matches!(
            decisions[2].1,
            Ok(Decision::Single {
                amount_minor: 100,
                ..
            })
        ));
        // The refunds move money back from the payee to the payer.
        assert_eq!(states[&Uuid::from_u128(1)].balance_minor, 700);
    }

    #[test]
    fn screening_refuses_foreign_accounts_other_currencies_and_a_repeated_key() {
        let mut foreign = account(3, BalanceRule::NonNegative, 1_000);
        foreign.client_id = Uuid::from_u128(99);
        let mut euros = account(4, BalanceRule::NonNegative, 1_000);
        euros.currency = "EUR".to_owned();
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
            foreign,
            euros,
        ]);
        let jobs = [
            job("ok", 10, pay(1, 2, 100, None)),
            job("foreign", 11, pay(3, 2, 100, None)),
            job("euros", 12, pay(4, 2, 100, None)),
            job("ok", 13, pay(1, 2, 100, None)),
            job("missing", 14, pay(1, 5, 100, None)),
        ];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let (outcomes, candidates) = screen(&jobs, &rows);
        assert_eq!(candidates, [0]);
        let code = |index: usize| match &outcomes[index] {
            Some(Err(WriteError::Invalid(error))) => error.code(),
            Some(Err(WriteError::KeyTaken)) => "KEY_TAKEN",
            other => panic!("job {index}: {other:?}"),
        };
        assert_eq!(
            code(1),
            "NOT_FOUND",
            "another client's account is not found"
        );
        assert_eq!(code(2), "CURRENCY_MISMATCH");
        assert_eq!(
            code(3),
            "KEY_TAKEN",
            "the second use of a key replays the first"
        );
        assert_eq!(code(4), "NOT_FOUND");
    }

    #[test]
    fn a_hold_counts_as_pending_and_a_void_releases_it() {
        let rows = locked(vec![
            account(1, BalanceRule::NonNegative, 1_000),
            account(2, BalanceRule::NonNegative, 0),
        ]);
        let jobs = [
            job("hold", 10, pay(1, 2, 800, Some(at(3_600)))),
            job("after", 11, pay(1, 2, 300, None)),
        ];
        let jobs: Vec<&Job> = jobs.iter().collect();
        let (decisions, states) = decide(&jobs, &[0, 1], &rows, None);
        assert_eq!(plan_of(&decisions[0].1), PostingPlan::Hold);
        assert_eq!(
            plan_of(&decisions[1].1),
            PostingPlan::Decline(DeclineReason::InsufficientFunds),
            "800 of 1000 is held, so 300 more does not fit"
        );
        assert_eq!(states[&Uuid::from_u128(1)].pending_minor, 800);
    }
}
