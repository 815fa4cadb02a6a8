//! The job model: a money movement waiting for its batch, with everything decided
//! before the database.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::super::keyed::KeyedRequest;
use super::super::write::WriteError;
use crate::entity::payment;
use crate::ledger::money::PositiveAmount;
use crate::ledger::requests::{NewPayment, NewPaymentGroup};

/// What a job does.
pub(in crate::ledger::service) enum Work {
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

/// A keyed request's work, queued for a batch.
pub(in crate::ledger::service) struct Job {
    /// Its key; `resource_id` is what the job creates: the payment (or refund), the
    /// group, or the settlement of a hold.
    pub(in crate::ledger::service) request: KeyedRequest,
    pub(in crate::ledger::service) work: Work,
    /// The request's span, so what the batch logs about this job carries the request's
    /// id.
    pub(in crate::ledger::service) span: tracing::Span,
}

/// What a batch did for one of its jobs: the committed payment (for a capture or void,
/// the hold's; for a group, its first), or why not.
pub(in crate::ledger::service) type JobResult = Result<payment::Model, WriteError>;

impl Job {
    /// A payment alone: no hold, no metadata (what the one-statement batch carries).
    pub(super) fn is_plain_payment(&self) -> bool {
        matches!(
            &self.work,
            Work::Pay {
                request,
                hold_expires_at: None,
            } if request.metadata.is_none()
        )
    }

    /// The accounts the job changes, each payment's payer first.
    pub(super) fn accounts(&self) -> Vec<Uuid> {
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
