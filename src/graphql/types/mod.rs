//! The GraphQL object types. Each wraps a stored row and formats it; none queries the
//! database itself except through the request's DataLoader or the ledger service.

use async_graphql::connection::Connection;
use async_graphql::{Context, ID, Interface, Object, Result};
use chrono::{DateTime, Utc};

use crate::cache::VersionedBalance;
use crate::entity::account::AccountStatus;
use crate::entity::payment::StoredStatus;
use crate::entity::{account, ledger_entry, payment};
use crate::error::{AppError, AppResult};
use crate::graphql::loaders::{
    CachedBalance, EntriesOfPayment, RefundsOf, SettlementOf, StrongBalance,
};
use crate::graphql::paging::{Listed, listed, page_of};
use crate::graphql::scalars::{Json, Money};
use crate::graphql::{RequestScope, scope};
use crate::ids::{AccountId, LedgerEntryId, PaymentGroupId, PaymentId};
use crate::ledger::lifecycle::{self, PaymentStatus, SettlementKind};
use crate::ledger::money::{Currency, from_minor_units};
use crate::ledger::posting::{BalanceFloor, BalanceRule, EntryDirection};
use crate::ledger::service::{self, PaymentFilter};
use crate::pagination::PageArguments;

mod account_change;
mod balance;
mod metadata;

pub use account_change::AccountChange;
pub use balance::{Balance, Consistency};
pub use metadata::MetadataFilter;
use metadata::stored_metadata;

listed!(Account, account::Model);
listed!(Payment, payment::Model);
listed!(LedgerEntry, ledger_entry::Model);

/// Anything with an id: `node(id)` resolves every kind.
#[derive(Interface)]
#[graphql(field(
    name = "id",
    ty = "ID",
    desc = "An opaque id that names this object's type."
))]
pub enum Node {
    Account(Account),
    Payment(Payment),
    LedgerEntry(LedgerEntry),
    PaymentGroup(PaymentGroup),
}

/// An account holding one currency.
pub struct Account {
    row: account::Model,
    currency: Currency,
}

impl Account {
    pub fn from_row(row: account::Model) -> AppResult<Self> {
        let currency = Currency::from_stored(&row.currency)?;
        Ok(Self { row, currency })
    }

    fn account_id(&self) -> AccountId {
        AccountId(self.row.id)
    }

    fn balance_of(&self, balance: VersionedBalance) -> Balance {
        let floor = BalanceFloor::new(self.row.balance_rule, self.row.credit_limit_minor);
        Balance {
            amount: from_minor_units(balance.balance_minor, self.currency).into(),
            pending: from_minor_units(balance.pending_minor, self.currency).into(),
            available: floor
                .available(balance.balance_minor, balance.pending_minor)
                .map(|minor| from_minor_units(minor, self.currency).into()),
            version: balance.version,
            currency: self.currency.code().to_owned(),
        }
    }
}

#[Object]
impl Account {
    async fn id(&self) -> ID {
        ID(self.account_id().to_string())
    }

    /// The client's own reference for this account, unique per client.
    async fn external_ref(&self) -> Option<&str> {
        self.row.external_ref.as_deref()
    }

    /// ISO 4217 code.
    async fn currency(&self) -> &str {
        self.currency.code()
    }

    async fn balance_rule(&self) -> BalanceRule {
        self.row.balance_rule
    }

    /// How far below zero a CREDIT_LIMIT account may go; null for other rules.
    async fn credit_limit(&self) -> Option<Money> {
        self.row
            .credit_limit_minor
            .map(|minor| from_minor_units(minor, self.currency).into())
    }

    /// ACTIVE; FROZEN (no new payment, hold, capture or refund touches it until
    /// unfrozen; holds can still be voided); CLOSED (final).
    async fn status(&self) -> AccountStatus {
        self.row.status
    }

    /// Every change of its settings (`updateAccount`, `freezeAccount`,
    /// `unfreezeAccount`, `closeAccount`), oldest first: who (the key), when, old and
    /// new values.
    async fn changes(&self, ctx: &Context<'_>) -> Result<Vec<AccountChange>> {
        let scope = scope(ctx)?;
        let rows = scope
            .ledger
            .account_changes(scope.client, AccountId(self.row.id))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| AccountChange::in_currency(row, self.currency))
            .collect())
    }

    /// The balance at some account version. CACHED (the default) reads through the
    /// caches and may lag a just-committed payment by the staleness bound in
    /// docs/consistency.md; STRONG reads the database.
    async fn balance(
        &self,
        ctx: &Context<'_>,
        #[graphql(default)] consistency: Consistency,
    ) -> Result<Balance> {
        let scope = scope(ctx)?;
        let id = self.account_id();
        let balance = match consistency {
            Consistency::Cached => match scope.ledger.peek_balance(id).await {
                Some(balance) => Some(balance),
                None => scope.loader.load_one(CachedBalance(id)).await?,
            },
            Consistency::Strong => scope.loader.load_one(StrongBalance(id)).await?,
        };
        let balance =
            balance.ok_or_else(|| AppError::not_found(format!("account {id} not found")))?;
        Ok(self.balance_of(balance))
    }

    /// The posted balance right after the account's last entry at or before `time`
    /// (zero before its first entry): one index lookup however long the history is.
    /// Holds are not part of history, so `pending` reads 0 and `available` is what the
    /// account's rule allows over the posted amount.
    async fn balance_at(&self, ctx: &Context<'_>, time: DateTime<Utc>) -> Result<Balance> {
        let scope = scope(ctx)?;
        let entry = scope
            .ledger
            .entry_at(scope.client, self.account_id(), time)
            .await?;
        let (balance_minor, version) = entry
            .map(|entry| (entry.balance_after_minor, entry.account_version))
            .unwrap_or((0, 0));
        Ok(self.balance_of(VersionedBalance::posted(balance_minor, version, 0)))
    }

    /// The balance after each of this account's entries, oldest first: entries created
    /// at or after `since` and before `until`. Keyset-paged: a page costs the same at
    /// any depth of any history.
    #[graphql(
        complexity = "crate::graphql::paging::page_complexity(first, last, child_complexity)"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn balance_history(
        &self,
        ctx: &Context<'_>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, BalancePoint>> {
        let scope = scope(ctx)?;
        let arguments = PageArguments::new(first, after, last, before);
        page_of(arguments, |page| {
            scope
                .ledger
                .balance_history(scope.client, self.account_id(), since, until, page)
        })
        .await
    }

    /// This account's ledger entries, oldest first (by account version).
    #[graphql(
        complexity = "crate::graphql::paging::page_complexity(first, last, child_complexity)"
    )]
    async fn entries(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, LedgerEntry>> {
        let scope = scope(ctx)?;
        let arguments = PageArguments::new(first, after, last, before);
        page_of(arguments, |page| {
            scope
                .ledger
                .list_entries(scope.client, self.account_id(), page)
        })
        .await
    }

    /// Payments from or to this account in feed order (oldest first), narrowed like
    /// `Query.payments`.
    #[graphql(
        complexity = "crate::graphql::paging::page_complexity(first, last, child_complexity)"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn payments(
        &self,
        ctx: &Context<'_>,
        status: Option<PaymentStatus>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        metadata: Option<MetadataFilter>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, Payment>> {
        let filter = PaymentFilter {
            account: Some(self.account_id()),
            status,
            since,
            until,
            metadata: metadata.map(MetadataFilter::into_pair).transpose()?,
        };
        payment_page(
            scope(ctx)?,
            filter,
            PageArguments::new(first, after, last, before),
        )
        .await
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }

    /// Your own key/value pairs, as given.
    async fn metadata(&self) -> Result<Option<Json>> {
        Ok(stored_metadata(self.row.metadata.as_deref())?)
    }
}

/// A movement of money from one account to another: a payment, a hold (which a capture
/// posts later, or a void or its expiry releases) or a refund. The stored payment never
/// changes; a hold's settlement is a record of its own.
pub struct Payment {
    row: payment::Model,
    currency: Currency,
}

impl Payment {
    pub fn from_row(row: payment::Model) -> AppResult<Self> {
        let currency = Currency::from_stored(&row.currency)?;
        Ok(Self { row, currency })
    }

    fn payment_id(&self) -> PaymentId {
        PaymentId(self.row.id)
    }

    fn money(&self, minor: i64) -> Money {
        from_minor_units(minor, self.currency).into()
    }

    /// A hold's settlement, if it is a hold and has one.
    async fn settlement(
        &self,
        ctx: &Context<'_>,
    ) -> Result<Option<crate::entity::payment_settlement::Model>> {
        if self.row.status != StoredStatus::Pending {
            return Ok(None);
        }
        Ok(scope(ctx)?
            .loader
            .load_one(SettlementOf(self.payment_id()))
            .await?)
    }

    async fn refund_rows(&self, ctx: &Context<'_>) -> Result<Vec<payment::Model>> {
        if self.row.refund_of.is_some() || self.row.status == StoredStatus::Declined {
            return Ok(Vec::new());
        }
        Ok(scope(ctx)?
            .loader
            .load_one(RefundsOf(self.payment_id()))
            .await?
            .unwrap_or_default())
    }
}

/// Payments made all together or not at all under one idempotency key.
pub struct PaymentGroup(service::PaymentGroup);

impl PaymentGroup {
    pub fn from_record(record: service::PaymentGroup) -> Self {
        Self(record)
    }
}

#[Object]
impl PaymentGroup {
    async fn id(&self) -> ID {
        ID(PaymentGroupId(self.0.group.id).to_string())
    }

    async fn idempotency_key(&self) -> &str {
        &self.0.group.idempotency_key
    }

    /// Its payments in the order given: all POSTED or PENDING, or all DECLINED (one
    /// with its own reason, the others LINKED_PAYMENT_FAILED).
    async fn payments(&self) -> Result<Vec<Payment>> {
        Ok(self
            .0
            .payments
            .iter()
            .cloned()
            .map(Payment::from_row)
            .collect::<AppResult<_>>()?)
    }

    /// True when none of its payments moved.
    async fn declined(&self) -> bool {
        self.0
            .payments
            .iter()
            .any(|payment| payment.status == StoredStatus::Declined)
    }

    /// Your own key/value pairs, as given.
    async fn metadata(&self) -> Result<Option<Json>> {
        Ok(stored_metadata(self.0.group.metadata.as_deref())?)
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.0.group.created_at
    }
}

/// An account of the caller's: L1 at once, else through the request's DataLoader.
pub async fn load_account(scope: &RequestScope, id: AccountId) -> AppResult<Option<Account>> {
    let row = match scope.ledger.peek_account_settings(scope.client, id).await {
        Some(row) => Some(row),
        None => scope.loader.load_one(id).await?,
    };
    row.map(Account::from_row).transpose()
}

async fn required_account(ctx: &Context<'_>, id: AccountId) -> Result<Account> {
    Ok(load_account(scope(ctx)?, id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("account {id} not found")))?)
}

#[Object]
impl Payment {
    async fn id(&self) -> ID {
        ID(self.payment_id().to_string())
    }

    async fn idempotency_key(&self) -> &str {
        &self.row.idempotency_key
    }

    /// What the payment is now. A hold reads PENDING until it is captured (POSTED),
    /// voided (VOIDED) or its `holdExpiresAt` passes (EXPIRED, at once, whether or not
    /// anything has cleaned it up yet).
    async fn status(&self, ctx: &Context<'_>) -> Result<PaymentStatus> {
        let settlement = self.settlement(ctx).await?;
        Ok(lifecycle::status(
            self.row.status,
            settlement.map(|settlement| settlement.kind),
            self.row.hold_expires_at,
            Utc::now(),
        ))
    }

    /// Why a DECLINED payment was declined: INSUFFICIENT_FUNDS, CREDIT_LIMIT_EXCEEDED,
    /// BALANCE_OUT_OF_RANGE, or in a group LINKED_PAYMENT_FAILED (another payment of
    /// the group was declined, so none moved). Null otherwise.
    async fn decline_reason(&self) -> Option<&str> {
        self.row.decline_reason.as_deref()
    }

    #[allow(clippy::wrong_self_convention)] // the field is named by the API
    async fn from_account(&self, ctx: &Context<'_>) -> Result<Account> {
        required_account(ctx, AccountId(self.row.from_account_id)).await
    }

    async fn to_account(&self, ctx: &Context<'_>) -> Result<Account> {
        required_account(ctx, AccountId(self.row.to_account_id)).await
    }

    /// What was asked for: for a hold, the authorized amount (a capture may post less).
    async fn amount(&self) -> Money {
        self.money(self.row.amount_minor)
    }

    /// What the payment has posted: its amount once POSTED, a captured hold's captured
    /// amount; 0 while PENDING and for DECLINED, VOIDED and EXPIRED payments.
    async fn posted_amount(&self, ctx: &Context<'_>) -> Result<Money> {
        let captured = self
            .settlement(ctx)
            .await?
            .filter(|settlement| settlement.kind == SettlementKind::Capture)
            .map(|settlement| settlement.amount_minor);
        Ok(self.money(lifecycle::posted_amount(
            self.row.status,
            self.row.amount_minor,
            captured,
        )))
    }

    /// For a hold (`pending: true`): when it expires unless captured or voided first.
    async fn hold_expires_at(&self) -> Option<DateTime<Utc>> {
        self.row.hold_expires_at
    }

    /// For a hold that was captured or voided: when.
    async fn settled_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>> {
        Ok(self
            .settlement(ctx)
            .await?
            .map(|settlement| settlement.created_at))
    }

    /// For a refund: the payment it gives back (part of).
    async fn refund_of(&self, ctx: &Context<'_>) -> Result<Option<Payment>> {
        let Some(original) = self.row.refund_of else {
            return Ok(None);
        };
        let row = scope(ctx)?.loader.load_one(PaymentId(original)).await?;
        Ok(row.map(Payment::from_row).transpose()?)
    }

    /// The refunds of this payment, POSTED and DECLINED, oldest first.
    async fn refunds(&self, ctx: &Context<'_>) -> Result<Vec<Payment>> {
        Ok(self
            .refund_rows(ctx)
            .await?
            .into_iter()
            .map(Payment::from_row)
            .collect::<AppResult<_>>()?)
    }

    /// The sum of this payment's POSTED refunds: never more than `postedAmount`.
    async fn refunded_amount(&self, ctx: &Context<'_>) -> Result<Money> {
        let refunded = self
            .refund_rows(ctx)
            .await?
            .iter()
            .filter(|refund| refund.status == StoredStatus::Posted)
            .map(|refund| refund.amount_minor)
            .sum();
        Ok(self.money(refunded))
    }

    async fn currency(&self) -> &str {
        self.currency.code()
    }

    async fn description(&self) -> Option<&str> {
        self.row.description.as_deref()
    }

    /// Your own key/value pairs, as given.
    async fn metadata(&self) -> Result<Option<Json>> {
        Ok(stored_metadata(self.row.metadata.as_deref())?)
    }

    /// The group (`createPayments`) this payment was made in, if any.
    async fn group(&self, ctx: &Context<'_>) -> Result<Option<PaymentGroup>> {
        let Some(group) = self.row.group_id else {
            return Ok(None);
        };
        let scope = scope(ctx)?;
        let group = scope.ledger.payment_group(scope.client, group).await?;
        Ok(group.map(PaymentGroup::from_record))
    }

    /// Its place in its group, from 0; null outside a group.
    async fn group_index(&self) -> Option<i32> {
        self.row.group_index
    }

    /// The DEBIT and CREDIT entries of a POSTED payment (a captured hold's are written
    /// when it is captured); empty otherwise.
    async fn entries(&self, ctx: &Context<'_>) -> Result<Vec<LedgerEntry>> {
        if self.row.status == StoredStatus::Declined {
            return Ok(Vec::new());
        }
        let rows = scope(ctx)?
            .loader
            .load_one(EntriesOfPayment(self.payment_id()))
            .await?
            .unwrap_or_default();
        Ok(rows
            .iter()
            .cloned()
            .map(LedgerEntry::from_row)
            .collect::<AppResult<_>>()?)
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
}

/// One side of a posted payment on one account. Never changes once written.
pub struct LedgerEntry {
    row: ledger_entry::Model,
    currency: Currency,
}

impl LedgerEntry {
    pub fn from_row(row: ledger_entry::Model) -> AppResult<Self> {
        let currency = Currency::from_stored(&row.currency)?;
        Ok(Self { row, currency })
    }
}

#[Object]
impl LedgerEntry {
    async fn id(&self) -> ID {
        ID(LedgerEntryId(self.row.id).to_string())
    }

    async fn account(&self, ctx: &Context<'_>) -> Result<Account> {
        required_account(ctx, AccountId(self.row.account_id)).await
    }

    async fn payment(&self, ctx: &Context<'_>) -> Result<Payment> {
        let id = PaymentId(self.row.payment_id);
        let row = scope(ctx)?
            .loader
            .load_one(id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("payment {id} not found")))?;
        Ok(Payment::from_row(row)?)
    }

    async fn direction(&self) -> EntryDirection {
        self.row.direction
    }

    /// Always positive; `direction` says which way it moved the balance.
    async fn amount(&self) -> Money {
        from_minor_units(self.row.amount_minor, self.currency).into()
    }

    async fn currency(&self) -> &str {
        self.currency.code()
    }

    /// The account's balance right after this entry.
    async fn balance_after(&self) -> Money {
        from_minor_units(self.row.balance_after_minor, self.currency).into()
    }

    /// The account version this entry created: 1 for its first entry, then +1 each.
    async fn account_version(&self) -> i64 {
        self.row.account_version
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
}

/// An account's balance right after one of its entries.
pub struct BalancePoint {
    entry: LedgerEntry,
}

impl BalancePoint {
    pub fn from_row(row: ledger_entry::Model) -> AppResult<Self> {
        Ok(Self {
            entry: LedgerEntry::from_row(row)?,
        })
    }
}

listed!(BalancePoint, ledger_entry::Model);

#[Object]
impl BalancePoint {
    /// When the entry was written.
    async fn at(&self) -> DateTime<Utc> {
        self.entry.row.created_at
    }

    /// The posted balance right after the entry.
    async fn amount(&self) -> Money {
        from_minor_units(self.entry.row.balance_after_minor, self.entry.currency).into()
    }

    /// What the entry changed the balance by: negative for a DEBIT.
    async fn change(&self) -> Money {
        let row = &self.entry.row;
        from_minor_units(row.direction.signed(row.amount_minor), self.entry.currency).into()
    }

    /// The account version the entry created.
    async fn version(&self) -> i64 {
        self.entry.row.account_version
    }

    async fn entry(&self) -> &LedgerEntry {
        &self.entry
    }
}

/// One page of the payment feed, narrowed by `filter`: `Query.payments` and
/// `Account.payments` are the same list.
pub async fn payment_page(
    scope: &RequestScope,
    filter: PaymentFilter,
    arguments: PageArguments,
) -> Result<Connection<String, Payment>> {
    page_of(arguments, |page| {
        scope.ledger.list_payments(scope.client, filter, page)
    })
    .await
}
