//! Validated requests to change the ledger. Once built they are valid: the service
//! never re-checks their shape, only what needs the database (existence, currency).

use sea_orm::ActiveEnum;

use crate::error::{AppError, AppResult};
use crate::idempotency::{Fingerprint, IdempotencyKey, Operation};
use crate::ids::AccountId;
use crate::ledger::money::{Currency, PositiveAmount, parse_decimal, to_minor_units};
use crate::ledger::posting::BalanceRule;

const EXTERNAL_REF_LENGTH_MAX: usize = 255;
const DESCRIPTION_LENGTH_MAX: usize = 1000;

/// Optional free text with a maximum length and no control characters.
fn parse_text(name: &str, text: Option<String>, length_max: usize) -> AppResult<Option<String>> {
    let Some(text) = text else {
        return Ok(None);
    };
    let length = text.chars().count();
    if length > length_max {
        return Err(AppError::bad_input(format!(
            "{name} is {length} characters long; the maximum is {length_max}"
        )));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(AppError::bad_input(format!(
            "{name} must not contain control characters"
        )));
    }
    Ok(Some(text))
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub idempotency_key: IdempotencyKey,
    pub currency: Currency,
    pub balance_rule: BalanceRule,
    pub credit_limit_minor: Option<i64>,
    pub external_ref: Option<String>,
}

impl NewAccount {
    pub fn parse(
        idempotency_key: &str,
        currency: &str,
        balance_rule: BalanceRule,
        credit_limit: Option<&str>,
        external_ref: Option<String>,
    ) -> AppResult<Self> {
        let idempotency_key = IdempotencyKey::parse(idempotency_key)?;
        let currency = Currency::parse(currency)?;
        let credit_limit_minor = match (balance_rule, credit_limit) {
            (BalanceRule::CreditLimit, Some(text)) => {
                let minor = to_minor_units(parse_decimal(text)?, currency)?;
                if minor < 0 {
                    return Err(AppError::bad_input(format!(
                        "creditLimit must not be negative, got {text}"
                    )));
                }
                Some(minor)
            }
            (BalanceRule::CreditLimit, None) => {
                return Err(AppError::bad_input(
                    "creditLimit is required when balanceRule is CREDIT_LIMIT",
                ));
            }
            (_, Some(_)) => {
                return Err(AppError::bad_input(
                    "creditLimit is only allowed when balanceRule is CREDIT_LIMIT",
                ));
            }
            (_, None) => None,
        };
        let external_ref = parse_text("externalRef", external_ref, EXTERNAL_REF_LENGTH_MAX)?;
        if external_ref.as_deref() == Some("") {
            return Err(AppError::bad_input("externalRef must not be empty"));
        }
        Ok(Self {
            idempotency_key,
            currency,
            balance_rule,
            credit_limit_minor,
            external_ref,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let credit_limit = self.credit_limit_minor.map(|minor| minor.to_string());
        Fingerprint::of(
            Operation::CreateAccount,
            &[
                Some(self.currency.code()),
                Some(&self.balance_rule.to_value()),
                credit_limit.as_deref(),
                self.external_ref.as_deref(),
            ],
        )
    }
}

#[derive(Debug, Clone)]
pub struct NewPayment {
    pub idempotency_key: IdempotencyKey,
    pub from: AccountId,
    pub to: AccountId,
    pub amount: PositiveAmount,
    pub currency: Currency,
    pub description: Option<String>,
}

impl NewPayment {
    pub fn parse(
        idempotency_key: &str,
        from: &str,
        to: &str,
        amount: &str,
        currency: &str,
        description: Option<String>,
    ) -> AppResult<Self> {
        let idempotency_key = IdempotencyKey::parse(idempotency_key)?;
        let from = AccountId::parse(from)?;
        let to = AccountId::parse(to)?;
        if from == to {
            return Err(AppError::bad_input(
                "fromAccountId and toAccountId must be different accounts",
            ));
        }
        let currency = Currency::parse(currency)?;
        let amount = PositiveAmount::parse(amount, currency)?;
        let description = parse_text("description", description, DESCRIPTION_LENGTH_MAX)?;
        Ok(Self {
            idempotency_key,
            from,
            to,
            amount,
            currency,
            description,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(
            Operation::CreatePayment,
            &[
                Some(&self.from.to_string()),
                Some(&self.to.to_string()),
                Some(&self.amount.minor().to_string()),
                Some(self.currency.code()),
                self.description.as_deref(),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(amount: &str, description: Option<&str>) -> AppResult<NewPayment> {
        let from = AccountId::generate().to_string();
        let to = AccountId::generate().to_string();
        NewPayment::parse(
            "k1",
            &from,
            &to,
            amount,
            "USD",
            description.map(str::to_owned),
        )
    }

    #[test]
    fn same_payment_different_spelling_has_one_fingerprint() {
        let from = AccountId::generate().to_string();
        let to = AccountId::generate().to_string();
        let a = NewPayment::parse("k", &from, &to, "10.5", "usd", None).unwrap();
        let b = NewPayment::parse("k", &from, &to, "10.50", "USD", None).unwrap();
        let c = NewPayment::parse("k", &from, &to, "10.51", "USD", None).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
    }

    #[test]
    fn paying_an_account_to_itself_is_refused() {
        let id = AccountId::generate().to_string();
        let error = NewPayment::parse("k", &id, &id, "1", "USD", None).unwrap_err();
        assert_eq!(error.code(), "BAD_USER_INPUT");
    }

    #[test]
    fn descriptions_are_bounded() {
        assert!(payment("1", Some(&"d".repeat(1000))).is_ok());
        assert!(payment("1", Some(&"d".repeat(1001))).is_err());
        assert!(payment("1", Some("bell\u{7}")).is_err());
    }

    #[test]
    fn credit_limit_goes_with_its_rule_only() {
        let parse = |rule, limit: Option<&str>| NewAccount::parse("k", "USD", rule, limit, None);
        assert_eq!(
            parse(BalanceRule::CreditLimit, Some("100.00"))
                .unwrap()
                .credit_limit_minor,
            Some(10000)
        );
        assert!(parse(BalanceRule::CreditLimit, None).is_err());
        assert!(parse(BalanceRule::CreditLimit, Some("-1")).is_err());
        assert!(parse(BalanceRule::CreditLimit, Some("1.001")).is_err());
        assert!(parse(BalanceRule::NonNegative, Some("1")).is_err());
        assert!(parse(BalanceRule::Unbounded, None).is_ok());
    }
}
