//! The pure rules of a posting: balance rules, declines, and the two entries a payment
//! writes. No I/O here, so every rule is unit-tested directly.

use chrono::{DateTime, Utc};

pub use crate::entity::account::{AccountStatus, BalanceRule};
pub use crate::entity::ledger_entry::EntryDirection;
use crate::ledger::money::PositiveAmount;

/// The lowest balance an account may reach: `None` means no bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalanceFloor(Option<i64>);

impl BalanceFloor {
    /// `credit_limit_minor` must be present (and non-negative) exactly for `CreditLimit`.
    pub fn new(rule: BalanceRule, credit_limit_minor: Option<i64>) -> Self {
        match rule {
            BalanceRule::NonNegative => Self(Some(0)),
            BalanceRule::CreditLimit => Self(Some(-credit_limit_minor.unwrap_or(0))),
            BalanceRule::Unbounded => Self(None),
        }
    }

    /// Whether `balance_minor` with `pending_minor` held keeps to the floor: the rules
    /// bind what is available, posted minus pending.
    pub fn allows(self, balance_minor: i64, pending_minor: i64) -> bool {
        self.0.is_none_or(|floor| {
            balance_minor
                .checked_sub(pending_minor)
                .is_some_and(|available| available >= floor)
        })
    }

    /// How much could still be debited or held; `None` when unbounded.
    pub fn available(self, balance_minor: i64, pending_minor: i64) -> Option<i64> {
        self.0.map(|floor| {
            balance_minor
                .saturating_sub(pending_minor)
                .saturating_sub(floor)
                .max(0)
        })
    }
}

impl EntryDirection {
    /// The entry's effect on its account's balance.
    pub fn signed(self, amount_minor: i64) -> i64 {
        match self {
            Self::Debit => -amount_minor,
            Self::Credit => amount_minor,
        }
    }
}

/// Why a payment was declined. The text is part of the API: clients switch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    /// A `NON_NEGATIVE` source would go below zero.
    InsufficientFunds,
    /// A `CREDIT_LIMIT` source would go below minus its limit.
    CreditLimitExceeded,
    /// A balance would leave the range the ledger can represent.
    BalanceOutOfRange,
    /// Another payment of its group was declined, so none of them moved.
    LinkedPaymentFailed,
    /// An account of the payment is FROZEN.
    AccountFrozen,
    /// An account of the payment is CLOSED.
    AccountClosed,
}

impl DeclineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::CreditLimitExceeded => "CREDIT_LIMIT_EXCEEDED",
            Self::BalanceOutOfRange => "BALANCE_OUT_OF_RANGE",
            Self::LinkedPaymentFailed => "LINKED_PAYMENT_FAILED",
            Self::AccountFrozen => "ACCOUNT_FROZEN",
            Self::AccountClosed => "ACCOUNT_CLOSED",
        }
    }
}

/// An account's state as locked for a posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountState {
    pub rule: BalanceRule,
    pub credit_limit_minor: Option<i64>,
    pub balance_minor: i64,
    pub version: i64,
    /// What live holds keep on the account as payer.
    pub pending_minor: i64,
    pub status: AccountStatus,
}

impl AccountState {
    fn floor(self) -> BalanceFloor {
        BalanceFloor::new(self.rule, self.credit_limit_minor)
    }

    /// Why the account takes part in no new movement, if it does not.
    fn status_decline(self) -> Option<DeclineReason> {
        match self.status {
            AccountStatus::Active => None,
            AccountStatus::Frozen => Some(DeclineReason::AccountFrozen),
            AccountStatus::Closed => Some(DeclineReason::AccountClosed),
        }
    }

    fn rule_decline(self) -> DeclineReason {
        match self.rule {
            BalanceRule::CreditLimit => DeclineReason::CreditLimitExceeded,
            _ => DeclineReason::InsufficientFunds,
        }
    }
}

/// One side of a posted payment: the account's new balance and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPlan {
    pub direction: EntryDirection,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub account_version: i64,
}

/// What a movement does to its accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostingPlan {
    /// Two entries: a payment, a refund, or a capture (whose hold is released too).
    Post {
        debit: EntryPlan,
        credit: EntryPlan,
    },
    /// A hold is placed: the amount is now pending on the payer; nothing posts.
    Hold,
    /// A void: the hold's amount is no longer pending; nothing posts.
    Release,
    Decline(DeclineReason),
}

/// A change to account states that `plan_in_order` decides: the accounts it names, and
/// amounts in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement<K> {
    /// Moves `amount` now (a payment or a refund).
    Pay {
        from: K,
        to: K,
        amount: PositiveAmount,
    },
    /// Holds `amount` on `from`, to be captured for `to` later.
    Hold {
        from: K,
        to: K,
        amount: PositiveAmount,
    },
    /// Releases a live hold of `held` on `from` and posts `amount` (at most `held`).
    Capture {
        from: K,
        to: K,
        held: PositiveAmount,
        amount: PositiveAmount,
    },
    /// Releases a live hold of `held` on `from`.
    Void { from: K, held: PositiveAmount },
}

/// The time a posting's entries are stamped with: `now`, or if that is not after the
/// last entry on an account it moves (two postings in one batch, or an entry written by
/// an instance whose clock runs ahead), one microsecond (the stored resolution) after
/// the latest of them. So an account's entries are strictly ordered in time as in
/// version, and the balance at any moment, or at any entry's time, is found by time
/// alone.
pub fn posting_time(
    now: DateTime<Utc>,
    last_entries: impl IntoIterator<Item = Option<DateTime<Utc>>>,
) -> DateTime<Utc> {
    last_entries
        .into_iter()
        .flatten()
        .map(|last| last + chrono::Duration::microseconds(1))
        .fold(now, DateTime::max)
}

/// Decides a payment of `amount` from `source` to `destination`.
pub fn plan_posting(
    source: AccountState,
    destination: AccountState,
    amount: PositiveAmount,
) -> PostingPlan {
    let amount_minor = amount.minor();
    let (Some(source_after), Some(destination_after)) = (
        source.balance_minor.checked_sub(amount_minor),
        destination.balance_minor.checked_add(amount_minor),
    ) else {
        return PostingPlan::Decline(DeclineReason::BalanceOutOfRange);
    };
    if !source.floor().allows(source_after, source.pending_minor) {
        return PostingPlan::Decline(source.rule_decline());
    }
    let (Some(source_version), Some(destination_version)) = (
        source.version.checked_add(1),
        destination.version.checked_add(1),
    ) else {
        return PostingPlan::Decline(DeclineReason::BalanceOutOfRange);
    };
    let debit = EntryPlan {
        direction: EntryDirection::Debit,
        amount_minor,
        balance_after_minor: source_after,
        account_version: source_version,
    };
    let credit = EntryPlan {
        direction: EntryDirection::Credit,
        amount_minor,
        balance_after_minor: destination_after,
        account_version: destination_version,
    };
    // A bug here would create or destroy money; stop rather than commit it.
    assert_eq!(
        debit.direction.signed(debit.amount_minor) + credit.direction.signed(credit.amount_minor),
        0,
        "a posting must balance"
    );
    PostingPlan::Post { debit, credit }
}

/// Decides a hold of `amount` on `source`: what is available must cover it.
pub fn plan_hold(source: AccountState, amount: PositiveAmount) -> PostingPlan {
    let Some(pending_after) = source.pending_minor.checked_add(amount.minor()) else {
        return PostingPlan::Decline(DeclineReason::BalanceOutOfRange);
    };
    if source.floor().allows(source.balance_minor, pending_after) {
        PostingPlan::Hold
    } else {
        PostingPlan::Decline(source.rule_decline())
    }
}

/// Decides movements one after another against running account states, exactly as if
/// each had committed before the next began: a movement changes its accounts' states,
/// so a later one sees the balances, versions and pending amounts the earlier ones left.
/// This is what lets one transaction carry many. `None` for a movement whose accounts
/// are not all in `states`, or are one account: the caller's bug, never a decline.
pub fn plan_in_order<K: Copy + Eq + std::hash::Hash>(
    states: &mut std::collections::HashMap<K, AccountState>,
    movements: impl IntoIterator<Item = Movement<K>>,
) -> Vec<Option<PostingPlan>> {
    movements
        .into_iter()
        .map(|movement| plan_one(states, movement))
        .collect()
}

/// Plans linked movements all together or not at all: in order, each against the states
/// the earlier ones left. If one is declined, `states` are left as they were and every
/// movement is declined: that one with its own reason, the others with
/// `LinkedPaymentFailed`. `None` if a movement names an account not in `states`.
pub fn plan_linked<K: Copy + Eq + std::hash::Hash>(
    states: &mut std::collections::HashMap<K, AccountState>,
    movements: &[Movement<K>],
) -> Option<Vec<PostingPlan>> {
    let before = states.clone();
    let mut plans = Vec::with_capacity(movements.len());
    for &movement in movements {
        let plan = plan_one(states, movement)?;
        if let PostingPlan::Decline(reason) = plan {
            *states = before;
            let mut declined =
                vec![PostingPlan::Decline(DeclineReason::LinkedPaymentFailed); movements.len()];
            declined[plans.len()] = PostingPlan::Decline(reason);
            return Some(declined);
        }
        plans.push(plan);
    }
    Some(plans)
}

/// Pending after a hold of `held` leaves it; `None` if it was not pending (a bug).
fn release(pending_minor: i64, held_minor: i64) -> Option<i64> {
    pending_minor
        .checked_sub(held_minor)
        .filter(|&left| left >= 0)
}

fn plan_one<K: Copy + Eq + std::hash::Hash>(
    states: &mut std::collections::HashMap<K, AccountState>,
    movement: Movement<K>,
) -> Option<PostingPlan> {
    // Only a void (which moves nothing) may touch a FROZEN or CLOSED account; the payer's
    // status decides first.
    if let Movement::Pay { from, to, .. }
    | Movement::Hold { from, to, .. }
    | Movement::Capture { from, to, .. } = movement
    {
        let (source, destination) = (states.get(&from)?, states.get(&to)?);
        if let Some(reason) = source.status_decline().or(destination.status_decline()) {
            return Some(PostingPlan::Decline(reason));
        }
    }
    let (from, to, released, amount) = match movement {
        Movement::Pay { from, to, amount } => (from, to, 0, amount),
        Movement::Capture {
            from,
            to,
            held,
            amount,
        } => (from, to, held.minor(), amount),
        Movement::Hold { from, to, amount } => {
            if from == to || !states.contains_key(&to) {
                return None;
            }
            let source = states.get_mut(&from)?;
            let plan = plan_hold(*source, amount);
            if plan == PostingPlan::Hold {
                source.pending_minor += amount.minor();
            }
            return Some(plan);
        }
        Movement::Void { from, held } => {
            let source = states.get_mut(&from)?;
            source.pending_minor = release(source.pending_minor, held.minor())?;
            return Some(PostingPlan::Release);
        }
    };
    let (Some(&source), Some(&destination)) = (states.get(&from), states.get(&to)) else {
        return None;
    };
    if from == to {
        return None;
    }
    let source = AccountState {
        pending_minor: release(source.pending_minor, released)?,
        ..source
    };
    let plan = plan_posting(source, destination, amount);
    if let PostingPlan::Post { debit, credit } = plan {
        for (account, entry, pending_minor) in [
            (from, debit, source.pending_minor),
            (to, credit, destination.pending_minor),
        ] {
            if let Some(state) = states.get_mut(&account) {
                state.balance_minor = entry.balance_after_minor;
                state.version = entry.account_version;
                state.pending_minor = pending_minor;
            }
        }
    }
    Some(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(rule: BalanceRule, credit_limit_minor: Option<i64>, balance: i64) -> AccountState {
        AccountState {
            rule,
            credit_limit_minor,
            balance_minor: balance,
            version: 7,
            pending_minor: 0,
            status: AccountStatus::Active,
        }
    }

    fn hold<K>(from: K, to: K, minor: i64) -> Movement<K> {
        Movement::Hold {
            from,
            to,
            amount: amount(minor),
        }
    }

    fn pay<K>(from: K, to: K, minor: i64) -> Movement<K> {
        Movement::Pay {
            from,
            to,
            amount: amount(minor),
        }
    }

    fn amount(minor: i64) -> PositiveAmount {
        PositiveAmount::from_minor(minor).unwrap()
    }

    #[test]
    fn a_posting_is_stamped_after_each_account_s_last_entry() {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        let earlier = now - chrono::Duration::seconds(5);
        let later = now + chrono::Duration::milliseconds(1500);
        let next = |at: DateTime<Utc>| at + chrono::Duration::microseconds(1);
        assert_eq!(posting_time(now, [None, None]), now);
        assert_eq!(posting_time(now, [Some(earlier), None]), now);
        assert_eq!(posting_time(now, [Some(earlier), Some(later)]), next(later));
        assert_eq!(posting_time(now, [Some(now)]), next(now));
    }

    #[test]
    fn a_posting_moves_money_and_versions() {
        let plan = plan_posting(
            account(BalanceRule::NonNegative, None, 1000),
            account(BalanceRule::NonNegative, None, 5),
            amount(1000),
        );
        let PostingPlan::Post { debit, credit } = plan else {
            panic!("expected a posting, got {plan:?}");
        };
        assert_eq!(debit.balance_after_minor, 0);
        assert_eq!(credit.balance_after_minor, 1005);
        assert_eq!((debit.account_version, credit.account_version), (8, 8));
        assert_eq!(
            (debit.direction, credit.direction),
            (EntryDirection::Debit, EntryDirection::Credit)
        );
    }

    #[test]
    fn non_negative_declines_below_zero() {
        let plan = plan_posting(
            account(BalanceRule::NonNegative, None, 999),
            account(BalanceRule::Unbounded, None, 0),
            amount(1000),
        );
        assert_eq!(plan, PostingPlan::Decline(DeclineReason::InsufficientFunds));
    }

    #[test]
    fn credit_limit_allows_down_to_minus_limit_and_no_further() {
        let source = account(BalanceRule::CreditLimit, Some(500), 0);
        let destination = account(BalanceRule::NonNegative, None, 0);
        assert!(matches!(
            plan_posting(source, destination, amount(500)),
            PostingPlan::Post { .. }
        ));
        assert_eq!(
            plan_posting(source, destination, amount(501)),
            PostingPlan::Decline(DeclineReason::CreditLimitExceeded)
        );
    }

    #[test]
    fn unbounded_may_go_negative() {
        let plan = plan_posting(
            account(BalanceRule::Unbounded, None, 0),
            account(BalanceRule::NonNegative, None, 0),
            amount(i64::MAX),
        );
        assert!(
            matches!(plan, PostingPlan::Post { debit, .. } if debit.balance_after_minor == -i64::MAX)
        );
    }

    #[test]
    fn balances_that_would_overflow_are_declined_not_wrapped() {
        let plan = plan_posting(
            account(BalanceRule::Unbounded, None, i64::MIN + 10),
            account(BalanceRule::NonNegative, None, 0),
            amount(11),
        );
        assert_eq!(plan, PostingPlan::Decline(DeclineReason::BalanceOutOfRange));
        let plan = plan_posting(
            account(BalanceRule::Unbounded, None, 0),
            account(BalanceRule::NonNegative, None, i64::MAX - 1),
            amount(2),
        );
        assert_eq!(plan, PostingPlan::Decline(DeclineReason::BalanceOutOfRange));
    }

    #[test]
    fn available_respects_the_floor() {
        assert_eq!(
            BalanceFloor::new(BalanceRule::NonNegative, None).available(150, 0),
            Some(150)
        );
        assert_eq!(
            BalanceFloor::new(BalanceRule::NonNegative, None).available(150, 40),
            Some(110)
        );
        assert_eq!(
            BalanceFloor::new(BalanceRule::CreditLimit, Some(100)).available(-30, 0),
            Some(70)
        );
        assert_eq!(
            BalanceFloor::new(BalanceRule::CreditLimit, Some(100)).available(-30, 80),
            Some(0)
        );
        assert_eq!(
            BalanceFloor::new(BalanceRule::Unbounded, None).available(-30, 10),
            None
        );
    }

    #[test]
    fn payments_in_order_see_the_balances_earlier_ones_left() {
        let mut states = std::collections::HashMap::from([
            ("alice", account(BalanceRule::NonNegative, None, 100)),
            ("bob", account(BalanceRule::NonNegative, None, 0)),
            ("fund", account(BalanceRule::Unbounded, None, 0)),
        ]);
        let plans = plan_in_order(
            &mut states,
            [
                pay("alice", "bob", 60),
                pay("alice", "bob", 60),
                pay("bob", "alice", 10),
                pay("alice", "bob", 50),
                pay("fund", "alice", 5),
            ],
        );
        let posted: Vec<_> = plans
            .iter()
            .map(|plan| match plan.expect("both accounts are known") {
                PostingPlan::Post { debit, credit } => Some((
                    debit.balance_after_minor,
                    debit.account_version,
                    credit.balance_after_minor,
                    credit.account_version,
                )),
                PostingPlan::Decline(_) | PostingPlan::Hold | PostingPlan::Release => None,
            })
            .collect();
        // Versions start at 7 and rise by one per entry; the decline moves nothing.
        assert_eq!(
            posted,
            [
                Some((40, 8, 60, 8)),
                None,
                Some((50, 9, 50, 9)),
                Some((0, 10, 100, 10)),
                Some((-5, 8, 5, 11)),
            ]
        );
        assert_eq!(
            plans[1],
            Some(PostingPlan::Decline(DeclineReason::InsufficientFunds))
        );
        assert_eq!(
            (states["alice"].balance_minor, states["alice"].version),
            (5, 11)
        );
        assert_eq!(
            (states["bob"].balance_minor, states["bob"].version),
            (100, 10)
        );
        assert_eq!(
            (states["fund"].balance_minor, states["fund"].version),
            (-5, 8)
        );
        // Money is conserved over the whole sequence.
        let total: i64 = states.values().map(|state| state.balance_minor).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn payments_in_order_refuse_unknown_or_identical_accounts() {
        let mut states =
            std::collections::HashMap::from([("alice", account(BalanceRule::Unbounded, None, 0))]);
        let plans = plan_in_order(
            &mut states,
            [
                pay("alice", "nobody", 1),
                pay("alice", "alice", 1),
                hold("alice", "alice", 1),
            ],
        );
        assert_eq!(plans, [None, None, None]);
        assert_eq!(states["alice"], account(BalanceRule::Unbounded, None, 0));
    }

    fn states() -> std::collections::HashMap<&'static str, AccountState> {
        std::collections::HashMap::from([
            ("alice", account(BalanceRule::NonNegative, None, 100)),
            ("shop", account(BalanceRule::NonNegative, None, 0)),
            ("card", account(BalanceRule::CreditLimit, Some(50), 0)),
        ])
    }

    #[test]
    fn holds_count_against_later_payments_and_holds() {
        let mut states = states();
        let plans = plan_in_order(
            &mut states,
            [
                hold("alice", "shop", 70),
                pay("alice", "shop", 40),
                hold("alice", "shop", 31),
                hold("alice", "shop", 30),
            ],
        );
        assert_eq!(
            plans[..],
            [
                Some(PostingPlan::Hold),
                Some(PostingPlan::Decline(DeclineReason::InsufficientFunds)),
                Some(PostingPlan::Decline(DeclineReason::InsufficientFunds)),
                Some(PostingPlan::Hold),
            ]
        );
        let alice = states["alice"];
        assert_eq!(
            (alice.balance_minor, alice.pending_minor, alice.version),
            (100, 100, 7)
        );
        assert_eq!(states["shop"], account(BalanceRule::NonNegative, None, 0));
    }

    #[test]
    fn a_credit_limit_binds_posted_minus_pending() {
        let mut states = states();
        let plans = plan_in_order(
            &mut states,
            [
                hold("card", "shop", 30),
                pay("card", "shop", 21),
                pay("card", "shop", 20),
            ],
        );
        assert_eq!(
            plans[1],
            Some(PostingPlan::Decline(DeclineReason::CreditLimitExceeded))
        );
        assert!(matches!(plans[2], Some(PostingPlan::Post { .. })));
        assert_eq!(
            (states["card"].balance_minor, states["card"].pending_minor),
            (-20, 30)
        );
    }

    #[test]
    fn a_partial_capture_posts_its_amount_and_releases_the_whole_hold() {
        let mut states = states();
        let plans = plan_in_order(
            &mut states,
            [
                hold("alice", "shop", 80),
                Movement::Capture {
                    from: "alice",
                    to: "shop",
                    held: amount(80),
                    amount: amount(50),
                },
                pay("alice", "shop", 50),
            ],
        );
        let Some(PostingPlan::Post { debit, credit }) = plans[1] else {
            panic!("a capture posts, got {:?}", plans[1]);
        };
        assert_eq!((debit.amount_minor, debit.balance_after_minor), (50, 50));
        assert_eq!((credit.amount_minor, credit.balance_after_minor), (50, 50));
        // The 30 not captured is available again.
        assert!(matches!(plans[2], Some(PostingPlan::Post { .. })));
        let alice = states["alice"];
        assert_eq!(
            (alice.balance_minor, alice.pending_minor, alice.version),
            (0, 0, 9)
        );
    }

    #[test]
    fn a_void_releases_the_hold_and_posts_nothing() {
        let mut states = states();
        let plans = plan_in_order(
            &mut states,
            [
                hold("alice", "shop", 100),
                Movement::Void {
                    from: "alice",
                    held: amount(100),
                },
                pay("alice", "shop", 100),
            ],
        );
        assert_eq!(plans[1], Some(PostingPlan::Release));
        assert!(matches!(plans[2], Some(PostingPlan::Post { .. })));
        assert_eq!(states["alice"].pending_minor, 0);
    }

    #[test]
    fn releasing_more_than_is_pending_is_a_bug_not_a_plan() {
        let mut states = states();
        let plans = plan_in_order(
            &mut states,
            [Movement::Void {
                from: "alice",
                held: amount(1),
            }],
        );
        assert_eq!(plans, [None]);
        assert_eq!(states["alice"].pending_minor, 0);
    }

    #[test]
    fn linked_movements_see_each_other_in_order() {
        let mut states = states();
        // The second only fits because of the first: shop pays card with alice's money.
        let plans = plan_linked(
            &mut states,
            &[
                pay("alice", "shop", 100),
                pay("shop", "card", 100),
                hold("card", "alice", 50),
            ],
        )
        .unwrap();
        assert!(matches!(plans[0], PostingPlan::Post { .. }));
        assert!(matches!(plans[1], PostingPlan::Post { .. }));
        assert_eq!(plans[2], PostingPlan::Hold);
        assert_eq!(
            (states["alice"].balance_minor, states["card"].balance_minor),
            (0, 100)
        );
        assert_eq!(states["card"].pending_minor, 50);
    }

    #[test]
    fn one_declined_link_declines_all_and_changes_nothing() {
        let mut states = states();
        let before = states.clone();
        let plans = plan_linked(
            &mut states,
            &[
                pay("alice", "shop", 60),
                hold("alice", "card", 10),
                pay("alice", "shop", 31),
                pay("shop", "alice", 1),
            ],
        )
        .unwrap();
        let linked = PostingPlan::Decline(DeclineReason::LinkedPaymentFailed);
        assert_eq!(
            plans,
            [
                linked,
                linked,
                PostingPlan::Decline(DeclineReason::InsufficientFunds),
                linked
            ]
        );
        assert_eq!(states, before);
        assert_eq!(plan_linked(&mut states, &[pay("alice", "nobody", 1)]), None);
    }

    #[test]
    fn frozen_and_closed_accounts_take_part_in_nothing_but_voids() {
        let mut states = states();
        plan_in_order(&mut states, [hold("alice", "shop", 30)]);
        states.get_mut("shop").unwrap().status = AccountStatus::Frozen;
        states.get_mut("card").unwrap().status = AccountStatus::Closed;
        let frozen = Some(PostingPlan::Decline(DeclineReason::AccountFrozen));
        let closed = Some(PostingPlan::Decline(DeclineReason::AccountClosed));
        let plans = plan_in_order(
            &mut states,
            [
                pay("alice", "shop", 1),
                pay("shop", "alice", 1),
                hold("alice", "shop", 1),
                pay("card", "shop", 1),
                Movement::Capture {
                    from: "alice",
                    to: "shop",
                    held: amount(30),
                    amount: amount(30),
                },
                Movement::Void {
                    from: "alice",
                    held: amount(30),
                },
            ],
        );
        assert_eq!(
            plans,
            [
                frozen,
                frozen,
                frozen,
                closed,
                frozen,
                Some(PostingPlan::Release)
            ]
        );
        assert_eq!(states["alice"].balance_minor, 100);
        assert_eq!(states["alice"].pending_minor, 0);
    }
}
