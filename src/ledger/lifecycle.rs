//! The pure rules of a payment's life after it is decided: what a hold is at a given
//! moment, when it may be settled, how long it lives, and how much of a payment may
//! still be refunded. No I/O, so each rule is unit-tested here.

use chrono::{DateTime, Duration, Utc};

use crate::entity::payment::StoredStatus;
pub use crate::entity::payment_settlement::SettlementKind;
use crate::error::{AppError, AppResult};

/// The longest a hold may be asked to live.
pub const HOLD_TTL_MAX: Duration = Duration::days(366);

/// What a payment is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum PaymentStatus {
    /// A live hold: its amount is held on the payer until it is captured, voided or
    /// expires.
    Pending,
    /// Money moved: a payment, a refund, or a captured hold (two entries).
    Posted,
    /// It broke a balance rule and moved nothing.
    Declined,
    /// A hold released by `voidPayment`; nothing moved.
    Voided,
    /// A hold whose `holdExpiresAt` passed before it was captured or voided; nothing
    /// moved.
    Expired,
}

/// A payment's status at `now`, from what was stored when it was decided and, for a
/// hold, its settlement (if any) and expiry.
pub fn status(
    stored: StoredStatus,
    settlement: Option<SettlementKind>,
    hold_expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> PaymentStatus {
    match (stored, settlement) {
        (StoredStatus::Posted, _) => PaymentStatus::Posted,
        (StoredStatus::Declined, _) => PaymentStatus::Declined,
        (StoredStatus::Pending, Some(SettlementKind::Capture)) => PaymentStatus::Posted,
        (StoredStatus::Pending, Some(SettlementKind::Void)) => PaymentStatus::Voided,
        (StoredStatus::Pending, None) => {
            if hold_expires_at.is_some_and(|expires_at| is_live(expires_at, now)) {
                PaymentStatus::Pending
            } else {
                PaymentStatus::Expired
            }
        }
    }
}

/// Whether a hold expiring at `expires_at` still holds at `at`: up to, not including,
/// its expiry.
pub fn is_live(expires_at: DateTime<Utc>, at: DateTime<Utc>) -> bool {
    at < expires_at
}

/// When a hold placed at `now` expires: `requested` if given (after `now`, within
/// `HOLD_TTL_MAX`), else `now + ttl`.
pub fn hold_expiry(
    requested: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    ttl: Duration,
) -> AppResult<DateTime<Utc>> {
    let Some(requested) = requested else {
        return Ok(now + ttl);
    };
    if requested <= now {
        return Err(AppError::bad_input(format!(
            "holdExpiresAt {} is not in the future",
            requested.to_rfc3339()
        )));
    }
    if requested - now > HOLD_TTL_MAX {
        return Err(AppError::bad_input(format!(
            "holdExpiresAt may be at most {} days ahead",
            HOLD_TTL_MAX.num_days()
        )));
    }
    Ok(requested)
}

/// What a payment posted: its amount if it was stored POSTED, the captured amount if it
/// is a captured hold, nothing otherwise.
pub fn posted_amount(stored: StoredStatus, amount_minor: i64, captured_minor: Option<i64>) -> i64 {
    match stored {
        StoredStatus::Posted => amount_minor,
        StoredStatus::Pending => captured_minor.unwrap_or(0),
        StoredStatus::Declined => 0,
    }
}

/// The amount a refund gives back: `requested`, or everything not yet refunded; an
/// error when that is nothing or more than is left.
pub fn refund_amount(
    posted_minor: i64,
    refunded_minor: i64,
    requested_minor: Option<i64>,
) -> AppResult<i64> {
    let left = posted_minor.saturating_sub(refunded_minor);
    let amount = requested_minor.unwrap_or(left);
    if left <= 0 || amount > left {
        return Err(AppError::RefundExceedsPayment(format!(
            "the payment posted {posted_minor} minor units and {refunded_minor} are refunded; \
             a refund of {amount} does not fit"
        )));
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn a_hold_is_pending_until_its_expiry_then_expired() {
        let expires = Some(at(10));
        assert_eq!(
            status(StoredStatus::Pending, None, expires, at(9)),
            PaymentStatus::Pending
        );
        assert_eq!(
            status(StoredStatus::Pending, None, expires, at(10)),
            PaymentStatus::Expired
        );
        assert!(is_live(at(10), at(9)));
        assert!(!is_live(at(10), at(10)));
    }

    #[test]
    fn a_settlement_decides_a_hold_whatever_the_clock_says() {
        let expires = Some(at(10));
        assert_eq!(
            status(
                StoredStatus::Pending,
                Some(SettlementKind::Capture),
                expires,
                at(99)
            ),
            PaymentStatus::Posted
        );
        assert_eq!(
            status(
                StoredStatus::Pending,
                Some(SettlementKind::Void),
                expires,
                at(0)
            ),
            PaymentStatus::Voided
        );
        assert_eq!(
            status(StoredStatus::Declined, None, expires, at(0)),
            PaymentStatus::Declined
        );
        assert_eq!(
            status(StoredStatus::Posted, None, None, at(0)),
            PaymentStatus::Posted
        );
    }

    #[test]
    fn hold_expiry_defaults_to_the_ttl_and_refuses_the_past_and_the_far_future() {
        let ttl = Duration::days(7);
        assert_eq!(hold_expiry(None, at(0), ttl).unwrap(), at(7 * 86_400));
        assert_eq!(hold_expiry(Some(at(1)), at(0), ttl).unwrap(), at(1));
        assert_eq!(
            hold_expiry(Some(at(0)), at(0), ttl).unwrap_err().code(),
            "BAD_USER_INPUT"
        );
        assert!(hold_expiry(Some(at(367 * 86_400)), at(0), ttl).is_err());
    }

    #[test]
    fn refunds_fit_in_what_was_posted() {
        assert_eq!(refund_amount(1000, 0, None).unwrap(), 1000);
        assert_eq!(refund_amount(1000, 300, None).unwrap(), 700);
        assert_eq!(refund_amount(1000, 300, Some(700)).unwrap(), 700);
        let exceeds = refund_amount(1000, 300, Some(701)).unwrap_err();
        assert_eq!(exceeds.code(), "REFUND_EXCEEDS_PAYMENT");
        assert!(refund_amount(1000, 1000, None).is_err());
        assert!(refund_amount(0, 0, Some(1)).is_err());
        assert_eq!(posted_amount(StoredStatus::Pending, 1000, Some(400)), 400);
        assert_eq!(posted_amount(StoredStatus::Pending, 1000, None), 0);
        assert_eq!(posted_amount(StoredStatus::Declined, 1000, None), 0);
    }
}
