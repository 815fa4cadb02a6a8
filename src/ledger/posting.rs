//! The pure rules of a posting: balance rules, declines, and the two entries a payment
//! writes. No I/O here, so every rule is unit-tested directly.

pub use crate::entity::account::BalanceRule;
pub use crate::entity::ledger_entry::EntryDirection;
pub use crate::entity::payment::PaymentStatus;
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

    pub fn allows(self, balance_minor: i64) -> bool {
        self.0.is_none_or(|floor| balance_minor >= floor)
    }

    /// How much could still be debited; `None` when unbounded.
    pub fn available(self, balance_minor: i64) -> Option<i64> {
        self.0
            .map(|floor| balance_minor.saturating_sub(floor).max(0))
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
}

impl DeclineReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InsufficientFunds => "INSUFFICIENT_FUNDS",
            Self::CreditLimitExceeded => "CREDIT_LIMIT_EXCEEDED",
            Self::BalanceOutOfRange => "BALANCE_OUT_OF_RANGE",
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
}

/// One side of a posted payment: the account's new balance and version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPlan {
    pub direction: EntryDirection,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub account_version: i64,
}

/// What a payment does to its two accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostingPlan {
    Post { debit: EntryPlan, credit: EntryPlan },
    Decline(DeclineReason),
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
    if !BalanceFloor::new(source.rule, source.credit_limit_minor).allows(source_after) {
        return PostingPlan::Decline(match source.rule {
            BalanceRule::CreditLimit => DeclineReason::CreditLimitExceeded,
            _ => DeclineReason::InsufficientFunds,
        });
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

/// Decides payments one after another against running account states, exactly as if
/// each had committed before the next began: a posting moves its accounts' states, so
/// a later payment sees the balances and versions the earlier ones left. This is what
/// lets one transaction carry many payments. `None` for a payment whose two accounts
/// are not both in `states` or are one account: the caller's bug, never a decline.
pub fn plan_in_order<K: Copy + Eq + std::hash::Hash>(
    states: &mut std::collections::HashMap<K, AccountState>,
    payments: impl IntoIterator<Item = (K, K, PositiveAmount)>,
) -> Vec<Option<PostingPlan>> {
    payments
        .into_iter()
        .map(|(from, to, amount)| {
            let (Some(&source), Some(&destination)) = (states.get(&from), states.get(&to)) else {
                return None;
            };
            if from == to {
                return None;
            }
            let plan = plan_posting(source, destination, amount);
            if let PostingPlan::Post { debit, credit } = plan {
                for (account, entry) in [(from, debit), (to, credit)] {
                    if let Some(state) = states.get_mut(&account) {
                        state.balance_minor = entry.balance_after_minor;
                        state.version = entry.account_version;
                    }
                }
            }
            Some(plan)
        })
        .collect()
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
        }
    }

    fn amount(minor: i64) -> PositiveAmount {
        PositiveAmount::from_minor(minor).unwrap()
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
            BalanceFloor::new(BalanceRule::NonNegative, None).available(150),
            Some(150)
        );
        assert_eq!(
            BalanceFloor::new(BalanceRule::CreditLimit, Some(100)).available(-30),
            Some(70)
        );
        assert_eq!(
            BalanceFloor::new(BalanceRule::Unbounded, None).available(-30),
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
                ("alice", "bob", amount(60)),
                ("alice", "bob", amount(60)),
                ("bob", "alice", amount(10)),
                ("alice", "bob", amount(50)),
                ("fund", "alice", amount(5)),
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
                PostingPlan::Decline(_) => None,
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
                ("alice", "nobody", amount(1)),
                ("alice", "alice", amount(1)),
            ],
        );
        assert_eq!(plans, [None, None]);
        assert_eq!(states["alice"], account(BalanceRule::Unbounded, None, 0));
    }
}
