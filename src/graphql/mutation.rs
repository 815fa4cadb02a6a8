//! Mutation roots. Each creates something (an account, a payment, a hold's
//! settlement, a refund) and requires an idempotency key.

use std::sync::Arc;

use async_graphql::{
    Context, ID, InputObject, MaybeUndefined, MergedObject, Object, Result, SimpleObject,
};
use chrono::{DateTime, Utc};

use crate::admission::{self, Admission};
use crate::error::AppError;
use crate::graphql::scalars::{Json, Money};
use crate::graphql::scope;
use crate::graphql::types::{Account, AccountChange, Payment, PaymentGroup};
use crate::idempotency::IdempotencyKey;
use crate::ledger::account_lifecycle::{ChangeRequest, NewAccountChange};
use crate::ledger::posting::BalanceRule;
use crate::ledger::requests::{
    HoldRequest, NewAccount, NewCapture, NewPayment, NewPaymentGroup, NewRefund, NewVoid,
};
use crate::ledger::service::AccountChanged;
use crate::ledger::service::Created;

#[derive(MergedObject, Default)]
pub struct Mutation(AccountMutation, PaymentMutation);

#[derive(InputObject)]
pub struct CreateAccountInput {
    /// 1 to 255 printable characters, unique per client across all mutations.
    pub idempotency_key: String,
    /// ISO 4217 code, such as "USD".
    pub currency: String,
    pub balance_rule: BalanceRule,
    /// Required for CREDIT_LIMIT, refused otherwise.
    pub credit_limit: Option<Money>,
    /// Your own reference, unique per client.
    pub external_ref: Option<String>,
    /// Your own key/value pairs, returned as given.
    pub metadata: Option<Json>,
}

#[derive(SimpleObject)]
pub struct CreateAccountPayload {
    pub account: Account,
    /// True when this key had already created the account and it is returned again.
    pub replayed: bool,
}

#[derive(InputObject)]
pub struct UpdateAccountInput {
    pub idempotency_key: String,
    pub account_id: ID,
    /// A CREDIT_LIMIT account's new limit; never below what the account already uses
    /// (pending minus balance): CREDIT_LIMIT_BELOW_BALANCE.
    pub credit_limit: Option<Money>,
    /// A new external ref (unique per client); null clears it, absent keeps it.
    pub external_ref: MaybeUndefined<String>,
}

#[derive(InputObject)]
pub struct ChangeAccountStatusInput {
    pub idempotency_key: String,
    pub account_id: ID,
}

#[derive(SimpleObject)]
pub struct AccountChangePayload {
    /// The account as it is now.
    pub account: Account,
    /// The recorded change.
    pub change: AccountChange,
    /// True when this key had already made the change and it is returned again.
    pub replayed: bool,
}

#[derive(Default)]
pub struct AccountMutation;

impl AccountMutation {
    async fn change(
        ctx: &Context<'_>,
        request: crate::error::AppResult<NewAccountChange>,
    ) -> Result<AccountChangePayload> {
        let scope = scope(ctx)?;
        let created = scope.ledger.change_account(scope.client, request?).await?;
        let AccountChanged { change, account } = created.value;
        Ok(AccountChangePayload {
            change: AccountChange::from_row(change, &account.currency)?,
            account: Account::from_row(account)?,
            replayed: created.replayed,
        })
    }
}

#[Object]
impl AccountMutation {
    async fn create_account(
        &self,
        ctx: &Context<'_>,
        input: CreateAccountInput,
    ) -> Result<CreateAccountPayload> {
        let scope = scope(ctx)?;
        let request = NewAccount::parse(
            &input.idempotency_key,
            &input.currency,
            input.balance_rule,
            input.credit_limit.as_ref().map(|limit| limit.0.as_str()),
            input.external_ref,
        )?
        .with_metadata(input.metadata.map(|metadata| metadata.0));
        let created = scope.ledger.create_account(scope.client, request).await?;
        Ok(CreateAccountPayload {
            account: Account::from_row(created.value)?,
            replayed: created.replayed,
        })
    }

    /// Changes a credit limit or external ref, recorded in `Account.changes`.
    async fn update_account(
        &self,
        ctx: &Context<'_>,
        input: UpdateAccountInput,
    ) -> Result<AccountChangePayload> {
        let external_ref = match input.external_ref {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(None),
            MaybeUndefined::Value(text) => Some(Some(text)),
        };
        let request = NewAccountChange::update(
            &input.idempotency_key,
            &input.account_id,
            input.credit_limit.as_ref().map(|limit| limit.0.as_str()),
            external_ref,
        );
        Self::change(ctx, request).await
    }

    /// ACTIVE to FROZEN: no new payment, hold, capture or refund touches the account
    /// (payments and holds are DECLINED with ACCOUNT_FROZEN) until it is unfrozen.
    async fn freeze_account(
        &self,
        ctx: &Context<'_>,
        input: ChangeAccountStatusInput,
    ) -> Result<AccountChangePayload> {
        let request = NewAccountChange::new(
            &input.idempotency_key,
            &input.account_id,
            ChangeRequest::Freeze,
        );
        Self::change(ctx, request).await
    }

    /// FROZEN to ACTIVE.
    async fn unfreeze_account(
        &self,
        ctx: &Context<'_>,
        input: ChangeAccountStatusInput,
    ) -> Result<AccountChangePayload> {
        let request = NewAccountChange::new(
            &input.idempotency_key,
            &input.account_id,
            ChangeRequest::Unfreeze,
        );
        Self::change(ctx, request).await
    }

    /// ACTIVE or FROZEN to CLOSED, for good: only at zero balance with no live hold from
    /// or to the account (ACCOUNT_NOT_EMPTY otherwise).
    async fn close_account(
        &self,
        ctx: &Context<'_>,
        input: ChangeAccountStatusInput,
    ) -> Result<AccountChangePayload> {
        let request = NewAccountChange::new(
            &input.idempotency_key,
            &input.account_id,
            ChangeRequest::Close,
        );
        Self::change(ctx, request).await
    }
}

#[derive(InputObject)]
pub struct CreatePaymentInput {
    /// 1 to 255 printable characters, unique per client across all mutations. Retry
    /// with the same key and input to get the original outcome back.
    pub idempotency_key: String,
    #[graphql(flatten)]
    pub payment: GroupPaymentInput,
}

#[derive(SimpleObject)]
pub struct CreatePaymentPayload {
    /// POSTED, PENDING for a hold, or DECLINED with a reason: a decline is an outcome,
    /// not an error.
    pub payment: Payment,
    /// True when this key had already created the payment and it is returned again.
    pub replayed: bool,
}

#[derive(InputObject)]
pub struct CreatePaymentsInput {
    /// One key for the whole group: retry with the same key and input to get the
    /// original outcome back.
    pub idempotency_key: String,
    /// 1 to 100 payments (holds too), decided in this order, each against the balances
    /// the earlier ones left.
    pub payments: Vec<GroupPaymentInput>,
    /// Your own key/value pairs for the group, returned as given.
    pub metadata: Option<Json>,
}

/// One payment: what `createPayment` takes besides its key, and each payment of a
/// `createPayments` group.
#[derive(InputObject)]
pub struct GroupPaymentInput {
    pub from_account_id: ID,
    pub to_account_id: ID,
    /// Greater than zero, with at most the currency's number of decimals.
    pub amount: Money,
    /// Must equal both accounts' currency (the payments of a group may differ).
    pub currency: String,
    pub description: Option<String>,
    /// Hold the amount instead of moving it: the payment is PENDING, its amount counts
    /// against the payer's `available` at once, and `capturePayment` posts it (all or
    /// part) or `voidPayment` releases it. Decided against what is available like any
    /// payment: DECLINED if it does not fit.
    #[graphql(default)]
    pub pending: bool,
    /// When the hold expires unless captured or voided first (only with `pending`);
    /// defaults to now plus the server's HOLD_TTL_SECONDS (7 days unless configured).
    pub hold_expires_at: Option<DateTime<Utc>>,
    /// Your own key/value pairs, returned as given and part of the request's
    /// fingerprint; `payments(metadata: {key, value})` finds the payment by any pair.
    pub metadata: Option<Json>,
}

impl GroupPaymentInput {
    /// The payment request under `idempotency_key` (a group's payments share its key).
    fn parse(self, idempotency_key: &str) -> crate::error::AppResult<NewPayment> {
        Ok(NewPayment::parse(
            idempotency_key,
            &self.from_account_id,
            &self.to_account_id,
            &self.amount.0,
            &self.currency,
            self.description,
        )?
        .with_hold(HoldRequest::parse(self.pending, self.hold_expires_at)?)
        .with_metadata(self.metadata.map(|metadata| metadata.0)))
    }
}

#[derive(SimpleObject)]
pub struct CreatePaymentsPayload {
    /// The group's payments in the order given: every one POSTED (or PENDING for a
    /// hold), or every one DECLINED: the first that could not be made with its own
    /// reason, the others with LINKED_PAYMENT_FAILED.
    pub payments: Vec<Payment>,
    pub group: PaymentGroup,
    /// True when this key had already made the group and it is returned again.
    pub replayed: bool,
}

#[derive(InputObject)]
pub struct CapturePaymentInput {
    pub idempotency_key: String,
    /// A PENDING payment (a hold) of the caller's.
    pub payment_id: ID,
    /// How much of the hold to post; the whole hold when absent. The rest is released.
    pub amount: Option<Money>,
}

#[derive(SimpleObject)]
pub struct CapturePaymentPayload {
    /// The hold, now POSTED with `postedAmount` the captured amount.
    pub payment: Payment,
    /// True when this key had already captured the hold and it is returned again.
    pub replayed: bool,
}

#[derive(InputObject)]
pub struct VoidPaymentInput {
    pub idempotency_key: String,
    /// A PENDING payment (a hold) of the caller's.
    pub payment_id: ID,
}

#[derive(SimpleObject)]
pub struct VoidPaymentPayload {
    /// The hold, now VOIDED.
    pub payment: Payment,
    /// True when this key had already voided the hold and it is returned again.
    pub replayed: bool,
}

#[derive(InputObject)]
pub struct RefundPaymentInput {
    pub idempotency_key: String,
    /// A POSTED payment of the caller's (a captured hold included; not a refund).
    pub payment_id: ID,
    /// How much to give back; all that is not yet refunded when absent.
    pub amount: Option<Money>,
    /// Kept as the refund's description.
    pub reason: Option<String>,
}

#[derive(SimpleObject)]
pub struct RefundPaymentPayload {
    /// The refund: a new payment from the original's payee to its payer, POSTED, or
    /// DECLINED by the payee's balance rule.
    pub payment: Payment,
    /// True when this key had already made the refund and it is returned again.
    pub replayed: bool,
}

#[derive(InputObject)]
pub struct CreatePaymentBatchInput {
    /// 1 to PAYMENT_BATCH_MAX payments (1 000 unless configured; holds too, with
    /// `pending`), each under its own idempotency key and with its own outcome. They are
    /// decided in this order, each against the balances the earlier ones left; one's
    /// error or decline changes nothing for the others.
    pub payments: Vec<CreatePaymentInput>,
}

#[derive(SimpleObject)]
pub struct CreatePaymentBatchPayload {
    /// One result per payment given, in the same order.
    pub results: Vec<PaymentBatchResult>,
}

/// One payment of a batch: `payment` and `replayed` as `createPayment` would answer
/// them, or else `error`.
#[derive(SimpleObject)]
pub struct PaymentBatchResult {
    pub payment: Option<Payment>,
    pub replayed: Option<bool>,
    pub error: Option<PaymentBatchError>,
}

/// Why one payment of a batch was not made: the code and message `createPayment`
/// would have answered (BAD_USER_INPUT, NOT_FOUND, IDEMPOTENCY_KEY_REUSED,
/// CURRENCY_MISMATCH, ACCOUNT_FROZEN, ACCOUNT_CLOSED, RETRY_LATER, ...).
#[derive(SimpleObject)]
pub struct PaymentBatchError {
    pub code: String,
    pub message: String,
}

impl PaymentBatchResult {
    fn of(outcome: crate::ledger::service::ItemOutcome) -> Self {
        match outcome.and_then(|created| Ok((Payment::from_row(created.value)?, created.replayed)))
        {
            Ok((payment, replayed)) => Self {
                payment: Some(payment),
                replayed: Some(replayed),
                error: None,
            },
            Err(error) => {
                let (code, message) = error.told();
                Self {
                    payment: None,
                    replayed: None,
                    error: Some(PaymentBatchError {
                        code: code.to_owned(),
                        message,
                    }),
                }
            }
        }
    }
}

/// The payment and `replayed` flag every payment mutation answers with.
fn answered(created: Created<crate::entity::payment::Model>) -> Result<(Payment, bool)> {
    Ok((Payment::from_row(created.value)?, created.replayed))
}

#[derive(Default)]
pub struct PaymentMutation;

#[Object]
impl PaymentMutation {
    async fn create_payment(
        &self,
        ctx: &Context<'_>,
        input: CreatePaymentInput,
    ) -> Result<CreatePaymentPayload> {
        let scope = scope(ctx)?;
        let request = input.payment.parse(&input.idempotency_key)?;
        let (payment, replayed) =
            answered(scope.ledger.create_payment(scope.client, request).await?)?;
        Ok(CreatePaymentPayload { payment, replayed })
    }

    /// Makes up to PAYMENT_BATCH_MAX independent payments (1 000 unless configured) in
    /// one request, each exactly once under its own key, with one result per payment
    /// in the order given. For payments that must all happen or none, use
    /// `createPayments`. A batch with no payments or too many is refused whole
    /// (BAD_USER_INPUT) before anything happens.
    async fn create_payment_batch(
        &self,
        ctx: &Context<'_>,
        input: CreatePaymentBatchInput,
    ) -> Result<CreatePaymentBatchPayload> {
        let scope = scope(ctx)?;
        // Counted by its size against the client's concurrent requests, before
        // anything happens; held until the payload is built.
        let _share = match ctx.data_opt::<Arc<Admission>>() {
            Some(admission) => Some(
                admission
                    .admit_more(
                        scope.client,
                        input
                            .payments
                            .len()
                            .div_ceil(admission::PAYMENTS_PER_REQUEST),
                    )
                    .map_err(|_| AppError::RetryLater)?,
            ),
            None => None,
        };
        let items = input
            .payments
            .into_iter()
            .map(|item| item.payment.parse(&item.idempotency_key))
            .collect();
        let outcomes = scope
            .ledger
            .create_payment_batch(scope.client, items)
            .await?;
        Ok(CreatePaymentBatchPayload {
            results: outcomes.into_iter().map(PaymentBatchResult::of).collect(),
        })
    }

    /// Makes up to 100 payments all together or not at all, under one key: if one would
    /// be declined, none moves. One database transaction, through group commit.
    async fn create_payments(
        &self,
        ctx: &Context<'_>,
        input: CreatePaymentsInput,
    ) -> Result<CreatePaymentsPayload> {
        let scope = scope(ctx)?;
        let payments = input
            .payments
            .into_iter()
            .enumerate()
            .map(|(index, payment)| {
                payment
                    .parse(&input.idempotency_key)
                    .map_err(|error| error.at(&format!("payments[{index}]")))
            })
            .collect::<crate::error::AppResult<Vec<_>>>()?;
        let request = NewPaymentGroup::new(
            IdempotencyKey::parse(&input.idempotency_key)?,
            payments,
            input.metadata.map(|metadata| metadata.0),
        )?;
        let created = scope.ledger.create_payments(scope.client, request).await?;
        let payments = created
            .value
            .payments
            .iter()
            .cloned()
            .map(Payment::from_row)
            .collect::<crate::error::AppResult<_>>()?;
        Ok(CreatePaymentsPayload {
            payments,
            group: PaymentGroup::from_record(created.value),
            replayed: created.replayed,
        })
    }

    /// Posts all or part of a hold (a PENDING payment) and releases the rest.
    /// PAYMENT_NOT_PENDING unless it is a live hold; CAPTURE_EXCEEDS_HOLD for more than
    /// it holds.
    async fn capture_payment(
        &self,
        ctx: &Context<'_>,
        input: CapturePaymentInput,
    ) -> Result<CapturePaymentPayload> {
        let scope = scope(ctx)?;
        let request = NewCapture::parse(
            &input.idempotency_key,
            &input.payment_id,
            input.amount.as_ref().map(|amount| amount.0.as_str()),
        )?;
        let (payment, replayed) =
            answered(scope.ledger.capture_payment(scope.client, request).await?)?;
        Ok(CapturePaymentPayload { payment, replayed })
    }

    /// Releases a hold whole. PAYMENT_NOT_PENDING unless it is a live hold.
    async fn void_payment(
        &self,
        ctx: &Context<'_>,
        input: VoidPaymentInput,
    ) -> Result<VoidPaymentPayload> {
        let scope = scope(ctx)?;
        let request = NewVoid::parse(&input.idempotency_key, &input.payment_id)?;
        let (payment, replayed) =
            answered(scope.ledger.void_payment(scope.client, request).await?)?;
        Ok(VoidPaymentPayload { payment, replayed })
    }

    /// Gives back all or part of a posted payment as a new payment the other way.
    /// REFUND_EXCEEDS_PAYMENT when it would take the POSTED refunds past what the
    /// payment posted.
    async fn refund_payment(
        &self,
        ctx: &Context<'_>,
        input: RefundPaymentInput,
    ) -> Result<RefundPaymentPayload> {
        let scope = scope(ctx)?;
        let request = NewRefund::parse(
            &input.idempotency_key,
            &input.payment_id,
            input.amount.as_ref().map(|amount| amount.0.as_str()),
            input.reason,
        )?;
        let (payment, replayed) =
            answered(scope.ledger.refund_payment(scope.client, request).await?)?;
        Ok(RefundPaymentPayload { payment, replayed })
    }
}
