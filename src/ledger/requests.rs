//! Validated requests to change the ledger. Once built they are valid: the service
//! never re-checks their shape, only what needs the database (existence, currency).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sea_orm::ActiveEnum;

use crate::error::{AppError, AppResult};
use crate::idempotency::{Fingerprint, IdempotencyKey, Operation};
use crate::ids::{AccountId, PaymentId};
use crate::ledger::metadata::Metadata;
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

/// An account's own reference: 1 to 255 characters, no control characters.
pub fn parse_external_ref(external_ref: Option<String>) -> AppResult<Option<String>> {
    let external_ref = parse_text("externalRef", external_ref, EXTERNAL_REF_LENGTH_MAX)?;
    if external_ref.as_deref() == Some("") {
        return Err(AppError::bad_input("externalRef must not be empty"));
    }
    Ok(external_ref)
}

#[derive(Debug, Clone)]
pub struct NewAccount {
    pub idempotency_key: IdempotencyKey,
    pub currency: Currency,
    pub balance_rule: BalanceRule,
    pub credit_limit_minor: Option<i64>,
    pub external_ref: Option<String>,
    pub metadata: Option<Metadata>,
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
        let external_ref = parse_external_ref(external_ref)?;
        Ok(Self {
            idempotency_key,
            currency,
            balance_rule,
            credit_limit_minor,
            external_ref,
            metadata: None,
        })
    }

    pub fn with_metadata(self, metadata: Option<Metadata>) -> Self {
        Self { metadata, ..self }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let credit_limit = self.credit_limit_minor.map(|minor| minor.to_string());
        let mut fields = vec![
            Some(self.currency.code().to_owned()),
            Some(self.balance_rule.to_value()),
            credit_limit,
            self.external_ref.clone(),
        ];
        with_metadata_fields(&mut fields, self.metadata.as_ref());
        let fields: Vec<Option<&str>> = fields.iter().map(Option::as_deref).collect();
        Fingerprint::of(Operation::CreateAccount, &fields)
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
    /// Set for a hold (`pending: true`).
    pub hold: Option<HoldRequest>,
    pub metadata: Option<Metadata>,
}

/// A hold's terms as the client gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldRequest {
    /// `holdExpiresAt`; the service fills in the default (`HOLD_TTL`) when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

impl HoldRequest {
    /// `pending` and `holdExpiresAt` as given: a hold when `pending`; an expiry without
    /// it is refused rather than ignored.
    pub fn parse(pending: bool, expires_at: Option<DateTime<Utc>>) -> AppResult<Option<Self>> {
        match (pending, expires_at) {
            (true, expires_at) => Ok(Some(Self { expires_at })),
            (false, None) => Ok(None),
            (false, Some(_)) => Err(AppError::bad_input(
                "holdExpiresAt is only allowed with pending: true",
            )),
        }
    }
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
            hold: None,
            metadata: None,
        })
    }

    pub fn with_hold(self, hold: Option<HoldRequest>) -> Self {
        Self { hold, ..self }
    }

    pub fn with_metadata(self, metadata: Option<Metadata>) -> Self {
        Self { metadata, ..self }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let from = self.from.to_string();
        let to = self.to.to_string();
        let amount = self.amount.minor().to_string();
        let mut fields = vec![
            Some(from),
            Some(to),
            Some(amount),
            Some(self.currency.code().to_owned()),
            self.description.clone(),
        ];
        // Appended only for holds (and metadata, below), so a plain payment's
        // fingerprint is what it always was and keys stored before holds existed still
        // replay.
        if let Some(hold) = self.hold {
            fields.push(Some("pending".to_owned()));
            fields.push(hold.expires_at.map(|at| at.timestamp_micros().to_string()));
        }
        with_metadata_fields(&mut fields, self.metadata.as_ref());
        let fields: Vec<Option<&str>> = fields.iter().map(Option::as_deref).collect();
        Fingerprint::of(Operation::CreatePayment, &fields)
    }
}

/// `createPayments`: payments (holds too) made all together or not at all, under one
/// key, decided in the order given.
#[derive(Debug, Clone)]
pub struct NewPaymentGroup {
    pub idempotency_key: IdempotencyKey,
    /// Each with the group's key.
    pub payments: Vec<NewPayment>,
    pub metadata: Option<Metadata>,
}

impl NewPaymentGroup {
    pub const PAYMENTS_MAX: usize = 100;

    /// `payments` parsed with the group's key: between 1 and `PAYMENTS_MAX` of them.
    pub fn new(
        idempotency_key: IdempotencyKey,
        payments: Vec<NewPayment>,
        metadata: Option<Metadata>,
    ) -> AppResult<Self> {
        if payments.is_empty() || payments.len() > Self::PAYMENTS_MAX {
            return Err(AppError::bad_input(format!(
                "a group has 1 to {} payments, got {}",
                Self::PAYMENTS_MAX,
                payments.len()
            )));
        }
        Ok(Self {
            idempotency_key,
            payments,
            metadata,
        })
    }

    /// The payments' own fingerprints in order, so the same payments in another order
    /// are another request (they are decided in order).
    pub fn fingerprint(&self) -> Fingerprint {
        let mut fields: Vec<Option<String>> = vec![Some(self.payments.len().to_string())];
        fields.extend(
            self.payments
                .iter()
                .map(|payment| Some(payment.fingerprint().as_str().to_owned())),
        );
        with_metadata_fields(&mut fields, self.metadata.as_ref());
        let fields: Vec<Option<&str>> = fields.iter().map(Option::as_deref).collect();
        Fingerprint::of(Operation::CreatePayments, &fields)
    }
}

/// Appends metadata to a fingerprint's fields when there is any, so requests without
/// it keep the fingerprint they had before metadata existed. The same pairs in any
/// order are one request.
fn with_metadata_fields(fields: &mut Vec<Option<String>>, metadata: Option<&Metadata>) {
    if let Some(metadata) = metadata {
        fields.push(Some("metadata".to_owned()));
        fields.push(Some(metadata.fingerprint_text()));
    }
}

/// An amount given for a payment whose currency is known only once the payment is
/// read: kept as a decimal until then, and fingerprinted in its normal form, so "1.5"
/// and "1.50" are one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingAmount(Decimal);

impl PendingAmount {
    pub fn parse(text: &str) -> AppResult<Self> {
        Ok(Self(parse_decimal(text)?))
    }

    /// The amount in `currency`'s minor units: more than zero, at its scale.
    pub fn in_currency(self, currency: Currency) -> AppResult<PositiveAmount> {
        let minor = to_minor_units(self.0, currency)?;
        PositiveAmount::from_minor(minor).ok_or_else(|| {
            AppError::bad_input(format!("amount must be greater than zero, got {}", self.0))
        })
    }

    fn fingerprint_text(self) -> String {
        self.0.normalize().to_string()
    }
}

/// `capturePayment`: all (no amount) or part of a hold.
#[derive(Debug, Clone)]
pub struct NewCapture {
    pub idempotency_key: IdempotencyKey,
    pub payment: PaymentId,
    pub amount: Option<PendingAmount>,
}

impl NewCapture {
    pub fn parse(idempotency_key: &str, payment: &str, amount: Option<&str>) -> AppResult<Self> {
        Ok(Self {
            idempotency_key: IdempotencyKey::parse(idempotency_key)?,
            payment: PaymentId::parse(payment)?,
            amount: amount.map(PendingAmount::parse).transpose()?,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let amount = self.amount.map(PendingAmount::fingerprint_text);
        Fingerprint::of(
            Operation::CapturePayment,
            &[Some(&self.payment.to_string()), amount.as_deref()],
        )
    }
}

/// `voidPayment`.
#[derive(Debug, Clone)]
pub struct NewVoid {
    pub idempotency_key: IdempotencyKey,
    pub payment: PaymentId,
}

impl NewVoid {
    pub fn parse(idempotency_key: &str, payment: &str) -> AppResult<Self> {
        Ok(Self {
            idempotency_key: IdempotencyKey::parse(idempotency_key)?,
            payment: PaymentId::parse(payment)?,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(Operation::VoidPayment, &[Some(&self.payment.to_string())])
    }
}

/// `refundPayment`: all that is left (no amount) or part of a posted payment.
#[derive(Debug, Clone)]
pub struct NewRefund {
    pub idempotency_key: IdempotencyKey,
    pub payment: PaymentId,
    pub amount: Option<PendingAmount>,
    /// Kept as the refund's description.
    pub reason: Option<String>,
}

impl NewRefund {
    pub fn parse(
        idempotency_key: &str,
        payment: &str,
        amount: Option<&str>,
        reason: Option<String>,
    ) -> AppResult<Self> {
        Ok(Self {
            idempotency_key: IdempotencyKey::parse(idempotency_key)?,
            payment: PaymentId::parse(payment)?,
            amount: amount.map(PendingAmount::parse).transpose()?,
            reason: parse_text("reason", reason, DESCRIPTION_LENGTH_MAX)?,
        })
    }

    pub fn fingerprint(&self) -> Fingerprint {
        let amount = self.amount.map(PendingAmount::fingerprint_text);
        Fingerprint::of(
            Operation::RefundPayment,
            &[
                Some(&self.payment.to_string()),
                amount.as_deref(),
                self.reason.as_deref(),
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
    fn a_plain_payment_keeps_its_fingerprint_and_a_hold_has_its_own() {
        let from = AccountId::generate().to_string();
        let to = AccountId::generate().to_string();
        let plain = NewPayment::parse("k", &from, &to, "10", "USD", None).unwrap();
        let expected = Fingerprint::of(
            Operation::CreatePayment,
            &[Some(&from), Some(&to), Some("1000"), Some("USD"), None],
        );
        assert_eq!(plain.fingerprint(), expected);
        let hold = plain
            .clone()
            .with_hold(HoldRequest::parse(true, None).unwrap());
        let dated = plain.clone().with_hold(
            HoldRequest::parse(true, DateTime::from_timestamp(1_900_000_000, 0)).unwrap(),
        );
        assert_ne!(hold.fingerprint(), plain.fingerprint());
        assert_ne!(hold.fingerprint(), dated.fingerprint());
        assert!(HoldRequest::parse(false, DateTime::from_timestamp(1, 0)).is_err());
    }

    #[test]
    fn capture_amounts_are_checked_against_the_currency_and_normalized() {
        let payment = PaymentId::generate().to_string();
        let a = NewCapture::parse("k", &payment, Some("1.5")).unwrap();
        let b = NewCapture::parse("k", &payment, Some("1.50")).unwrap();
        let all = NewCapture::parse("k", &payment, None).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), all.fingerprint());
        let usd = Currency::parse("USD").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(a.amount.unwrap().in_currency(usd).unwrap().minor(), 150);
        assert!(a.amount.unwrap().in_currency(jpy).is_err());
        for bad in ["0", "-1"] {
            let capture = NewCapture::parse("k", &payment, Some(bad)).unwrap();
            assert!(capture.amount.unwrap().in_currency(usd).is_err());
        }
        assert!(NewCapture::parse("k", "acc_nope", None).is_err());
        assert!(NewRefund::parse("k", &payment, None, Some("\u{7}".into())).is_err());
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
