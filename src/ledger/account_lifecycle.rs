//! The pure rules of an account's lifecycle: which status changes are allowed, when an
//! account may close, and how far its credit limit may go down. The service locks the
//! account, reads what it holds, and asks `plan_change`.

use rust_decimal::Decimal;

use crate::entity::account::{self, AccountStatus};
use crate::entity::account_change::ChangeKind;
use crate::error::{AppError, AppResult};
use crate::idempotency::{Fingerprint, IdempotencyKey, Operation};
use crate::ids::AccountId;
use crate::ledger::money::{Currency, parse_decimal, to_minor_units};
use crate::ledger::posting::BalanceRule;
use crate::ledger::requests::parse_external_ref;

/// What a change asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeRequest {
    /// `updateAccount`: a new credit limit and/or external ref (`Some(None)` clears it);
    /// what is absent stays.
    Update {
        credit_limit: Option<Decimal>,
        external_ref: Option<Option<String>>,
    },
    Freeze,
    Unfreeze,
    Close,
}

/// A validated change request.
#[derive(Debug, Clone)]
pub struct NewAccountChange {
    pub idempotency_key: IdempotencyKey,
    pub account: AccountId,
    pub change: ChangeRequest,
}

impl NewAccountChange {
    pub fn update(
        idempotency_key: &str,
        account: &str,
        credit_limit: Option<&str>,
        external_ref: Option<Option<String>>,
    ) -> AppResult<Self> {
        let credit_limit = credit_limit.map(parse_decimal).transpose()?;
        let external_ref = external_ref.map(parse_external_ref).transpose()?;
        if credit_limit.is_none() && external_ref.is_none() {
            return Err(AppError::bad_input(
                "updateAccount needs creditLimit or externalRef (null clears externalRef)",
            ));
        }
        Self::new(
            idempotency_key,
            account,
            ChangeRequest::Update {
                credit_limit,
                external_ref,
            },
        )
    }

    pub fn new(idempotency_key: &str, account: &str, change: ChangeRequest) -> AppResult<Self> {
        Ok(Self {
            idempotency_key: IdempotencyKey::parse(idempotency_key)?,
            account: AccountId::parse(account)?,
            change,
        })
    }

    pub fn operation(&self) -> Operation {
        match self.change {
            ChangeRequest::Update { .. } => Operation::UpdateAccount,
            ChangeRequest::Freeze => Operation::FreezeAccount,
            ChangeRequest::Unfreeze => Operation::UnfreezeAccount,
            ChangeRequest::Close => Operation::CloseAccount,
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let account = self.account.to_string();
        let mut fields = vec![Some(account)];
        if let ChangeRequest::Update {
            credit_limit,
            external_ref,
        } = &self.change
        {
            fields.push(credit_limit.map(|limit| limit.normalize().to_string()));
            // Keep, clear and set are three different requests.
            fields.push(match external_ref {
                None => Some("keep".to_owned()),
                Some(None) => None,
                Some(Some(text)) => Some(format!("set:{text}")),
            });
        }
        let fields: Vec<Option<&str>> = fields.iter().map(Option::as_deref).collect();
        Fingerprint::of(self.operation(), &fields)
    }
}

/// What keeps an account from closing, read under its lock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Live holds on it as payer (expired ones are released by the change itself).
    pub live_holds_from: u64,
    /// Live holds that would pay into it when captured.
    pub live_holds_to: u64,
}

/// The settings an allowed change leaves the account with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsChange {
    pub kind: ChangeKind,
    pub status: AccountStatus,
    pub credit_limit_minor: Option<i64>,
    pub external_ref: Option<String>,
}

/// Decides a change of `account` (as locked), or why not. A CLOSED account changes no
/// more; a credit limit only exists on CREDIT_LIMIT accounts and may not go below what
/// the account already uses (pending minus balance); an account closes only at zero
/// with no live hold from or to it.
pub fn plan_change(
    account: &account::Model,
    request: &ChangeRequest,
    holdings: Holdings,
) -> AppResult<SettingsChange> {
    let id = AccountId(account.id);
    if account.status == AccountStatus::Closed {
        return Err(AppError::AccountClosed(format!(
            "account {id} is CLOSED; a closed account never changes"
        )));
    }
    let unchanged = SettingsChange {
        kind: ChangeKind::Update,
        status: account.status,
        credit_limit_minor: account.credit_limit_minor,
        external_ref: account.external_ref.clone(),
    };
    let conflict =
        |status: &str| AppError::AccountStatusConflict(format!("account {id} is already {status}"));
    Ok(match request {
        ChangeRequest::Update {
            credit_limit,
            external_ref,
        } => {
            let credit_limit_minor = match credit_limit {
                None => account.credit_limit_minor,
                Some(limit) => Some(new_credit_limit(account, *limit)?),
            };
            SettingsChange {
                credit_limit_minor,
                external_ref: external_ref
                    .clone()
                    .unwrap_or_else(|| account.external_ref.clone()),
                ..unchanged
            }
        }
        ChangeRequest::Freeze => match account.status {
            AccountStatus::Active => SettingsChange {
                kind: ChangeKind::Freeze,
                status: AccountStatus::Frozen,
                ..unchanged
            },
            _ => return Err(conflict("FROZEN")),
        },
        ChangeRequest::Unfreeze => match account.status {
            AccountStatus::Frozen => SettingsChange {
                kind: ChangeKind::Unfreeze,
                status: AccountStatus::Active,
                ..unchanged
            },
            _ => return Err(conflict("ACTIVE")),
        },
        ChangeRequest::Close => {
            if account.balance_minor != 0 || holdings.live_holds_from + holdings.live_holds_to > 0 {
                return Err(AppError::AccountNotEmpty(format!(
                    "account {id} cannot close: its balance is {} minor units, {} live holds \
                     from it and {} to it (an account closes at zero with no live holds)",
                    account.balance_minor, holdings.live_holds_from, holdings.live_holds_to
                )));
            }
            SettingsChange {
                kind: ChangeKind::Close,
                status: AccountStatus::Closed,
                ..unchanged
            }
        }
    })
}

fn new_credit_limit(account: &account::Model, limit: Decimal) -> AppResult<i64> {
    if account.balance_rule != BalanceRule::CreditLimit {
        return Err(AppError::bad_input(
            "creditLimit is only allowed on CREDIT_LIMIT accounts",
        ));
    }
    let currency = Currency::from_stored(&account.currency)?;
    let minor = to_minor_units(limit, currency)?;
    if minor < 0 {
        return Err(AppError::bad_input(format!(
            "creditLimit must not be negative, got {limit}"
        )));
    }
    // The rule binds what is available: balance - pending >= -limit.
    let used = account.pending_minor.saturating_sub(account.balance_minor);
    if minor < used {
        return Err(AppError::CreditLimitBelowBalance(format!(
            "a credit limit of {limit} is below the {} the account already uses",
            crate::ledger::money::from_minor_units(used, currency)
        )));
    }
    Ok(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(
        rule: BalanceRule,
        limit: Option<i64>,
        balance: i64,
        pending: i64,
    ) -> account::Model {
        account::Model {
            id: uuid::Uuid::now_v7(),
            client_id: uuid::Uuid::now_v7(),
            currency: "USD".to_owned(),
            balance_rule: rule,
            credit_limit_minor: limit,
            external_ref: Some("ref-1".to_owned()),
            balance_minor: balance,
            version: 3,
            pending_minor: pending,
            hold_seq: 0,
            last_entry_at: None,
            created_at: chrono::Utc::now(),
            feed_seq: 1,
            metadata: None,
            status: AccountStatus::Active,
            change_seq: 0,
        }
    }

    fn code(result: AppResult<SettingsChange>) -> &'static str {
        result.map(|_| "OK").unwrap_or_else(|error| error.code())
    }

    #[test]
    fn status_moves_one_way_at_a_time_and_closed_is_final() {
        let mut row = account(BalanceRule::NonNegative, None, 0, 0);
        let none = Holdings::default();
        let frozen = plan_change(&row, &ChangeRequest::Freeze, none).unwrap();
        assert_eq!(
            (frozen.kind, frozen.status),
            (ChangeKind::Freeze, AccountStatus::Frozen)
        );
        assert_eq!(
            code(plan_change(&row, &ChangeRequest::Unfreeze, none)),
            "ACCOUNT_STATUS_CONFLICT"
        );
        row.status = AccountStatus::Frozen;
        assert_eq!(
            code(plan_change(&row, &ChangeRequest::Freeze, none)),
            "ACCOUNT_STATUS_CONFLICT"
        );
        assert_eq!(
            plan_change(&row, &ChangeRequest::Unfreeze, none)
                .unwrap()
                .status,
            AccountStatus::Active
        );
        // A frozen account may close.
        assert_eq!(
            plan_change(&row, &ChangeRequest::Close, none)
                .unwrap()
                .status,
            AccountStatus::Closed
        );
        row.status = AccountStatus::Closed;
        for request in [
            ChangeRequest::Freeze,
            ChangeRequest::Unfreeze,
            ChangeRequest::Close,
            ChangeRequest::Update {
                credit_limit: None,
                external_ref: Some(None),
            },
        ] {
            assert_eq!(code(plan_change(&row, &request, none)), "ACCOUNT_CLOSED");
        }
    }

    #[test]
    fn an_account_closes_only_empty() {
        let close = |balance, holdings| {
            code(plan_change(
                &account(BalanceRule::CreditLimit, Some(500), balance, 0),
                &ChangeRequest::Close,
                holdings,
            ))
        };
        assert_eq!(close(0, Holdings::default()), "OK");
        assert_eq!(close(1, Holdings::default()), "ACCOUNT_NOT_EMPTY");
        assert_eq!(close(-1, Holdings::default()), "ACCOUNT_NOT_EMPTY");
        let from = Holdings {
            live_holds_from: 1,
            live_holds_to: 0,
        };
        let to = Holdings {
            live_holds_from: 0,
            live_holds_to: 1,
        };
        assert_eq!(close(0, from), "ACCOUNT_NOT_EMPTY");
        assert_eq!(close(0, to), "ACCOUNT_NOT_EMPTY");
    }

    #[test]
    fn a_credit_limit_never_goes_below_what_is_used() {
        // Balance -3.00 with 1.00 held: 4.00 used.
        let row = account(BalanceRule::CreditLimit, Some(1000), -300, 100);
        let limit = |text: &str| {
            plan_change(
                &row,
                &ChangeRequest::Update {
                    credit_limit: Some(text.parse().unwrap()),
                    external_ref: None,
                },
                Holdings::default(),
            )
        };
        assert_eq!(limit("4.00").unwrap().credit_limit_minor, Some(400));
        assert_eq!(limit("20").unwrap().credit_limit_minor, Some(2000));
        assert_eq!(code(limit("3.99")), "CREDIT_LIMIT_BELOW_BALANCE");
        assert_eq!(code(limit("-1")), "BAD_USER_INPUT");
        assert_eq!(code(limit("1.001")), "BAD_USER_INPUT");
        let plain = account(BalanceRule::NonNegative, None, 0, 0);
        let on_plain = plan_change(
            &plain,
            &ChangeRequest::Update {
                credit_limit: Some(Decimal::ONE),
                external_ref: None,
            },
            Holdings::default(),
        );
        assert_eq!(code(on_plain), "BAD_USER_INPUT");
        // The external ref alone: kept, set or cleared; the limit stays.
        let cleared = plan_change(
            &row,
            &ChangeRequest::Update {
                credit_limit: None,
                external_ref: Some(None),
            },
            Holdings::default(),
        )
        .unwrap();
        assert_eq!(
            (cleared.external_ref, cleared.credit_limit_minor),
            (None, Some(1000))
        );
    }

    #[test]
    fn keeping_clearing_and_setting_a_ref_are_three_requests() {
        let id = AccountId::generate().to_string();
        let update = |external_ref| NewAccountChange::update("k", &id, Some("1"), external_ref);
        let keep = update(None).unwrap().fingerprint();
        let clear = update(Some(None)).unwrap().fingerprint();
        let set = update(Some(Some("x".to_owned()))).unwrap().fingerprint();
        assert!(keep != clear && clear != set && keep != set);
        assert!(NewAccountChange::update("k", &id, None, None).is_err());
        assert!(NewAccountChange::update("k", &id, None, Some(Some(String::new()))).is_err());
        let freeze = NewAccountChange::new("k", &id, ChangeRequest::Freeze).unwrap();
        let close = NewAccountChange::new("k", &id, ChangeRequest::Close).unwrap();
        assert_ne!(freeze.fingerprint(), close.fingerprint());
    }
}
