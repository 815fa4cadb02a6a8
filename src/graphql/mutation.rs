//! Mutation roots. Both create something and both require an idempotency key.

use async_graphql::{Context, ID, InputObject, MergedObject, Object, Result, SimpleObject};

use crate::graphql::scalars::Money;
use crate::graphql::scope;
use crate::graphql::types::{Account, Payment};
use crate::ledger::posting::BalanceRule;
use crate::ledger::requests::{NewAccount, NewPayment};

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
}

#[derive(SimpleObject)]
pub struct CreateAccountPayload {
    pub account: Account,
    /// True when this key had already created the account and it is returned again.
    pub replayed: bool,
}

#[derive(Default)]
pub struct AccountMutation;

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
        )?;
        let created = scope.ledger.create_account(scope.client, request).await?;
        Ok(CreateAccountPayload {
            account: Account::from_row(created.value)?,
            replayed: created.replayed,
        })
    }
}

#[derive(InputObject)]
pub struct CreatePaymentInput {
    /// 1 to 255 printable characters, unique per client across all mutations. Retry
    /// with the same key and input to get the original outcome back.
    pub idempotency_key: String,
    pub from_account_id: ID,
    pub to_account_id: ID,
    /// Greater than zero, with at most the currency's number of decimals.
    pub amount: Money,
    /// Must equal both accounts' currency.
    pub currency: String,
    pub description: Option<String>,
}

#[derive(SimpleObject)]
pub struct CreatePaymentPayload {
    /// POSTED, or DECLINED with a reason: a decline is an outcome, not an error.
    pub payment: Payment,
    /// True when this key had already created the payment and it is returned again.
    pub replayed: bool,
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
        let request = NewPayment::parse(
            &input.idempotency_key,
            &input.from_account_id,
            &input.to_account_id,
            &input.amount.0,
            &input.currency,
            input.description,
        )?;
        let created = scope.ledger.create_payment(scope.client, request).await?;
        Ok(CreatePaymentPayload {
            payment: Payment::from_row(created.value)?,
            replayed: created.replayed,
        })
    }
}
