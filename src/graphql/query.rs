//! Query roots, one per domain concept, merged into `Query`.

use async_graphql::connection::Connection;
use async_graphql::{Context, ID, MergedObject, Object, Result};
use chrono::{DateTime, Utc};

use crate::error::AppError;
use crate::graphql::paging::page_of;
use crate::graphql::types::{
    Account, LedgerEntry, MetadataFilter, Node, Payment, PaymentGroup, load_account, payment_page,
};
use crate::graphql::{RequestScope, scope};
use crate::idempotency::IdempotencyKey;
use crate::ids::{self, AccountId, IdKind, LedgerEntryId, PaymentId};
use crate::ledger::lifecycle::PaymentStatus;
use crate::ledger::service::PaymentFilter;
use crate::pagination::PageArguments;

#[derive(MergedObject, Default)]
pub struct Query(NodeQuery, AccountQuery, PaymentQuery, EntryQuery);

/// Most ids one `nodes` call resolves.
const NODES_IDS_MAX: usize = 100;

#[derive(Default)]
pub struct NodeQuery;

async fn load_node(scope: &RequestScope, id: &str) -> Result<Option<Node>> {
    let (kind, uuid) = ids::parse_any(id)?;
    Ok(match kind {
        IdKind::Account => load_account(scope, AccountId(uuid))
            .await?
            .map(Node::Account),
        IdKind::Payment => scope
            .loader
            .load_one(PaymentId(uuid))
            .await?
            .map(|row| Payment::from_row(row).map(Node::Payment))
            .transpose()?,
        IdKind::LedgerEntry => scope
            .loader
            .load_one(LedgerEntryId(uuid))
            .await?
            .map(|row| LedgerEntry::from_row(row).map(Node::LedgerEntry))
            .transpose()?,
        IdKind::PaymentGroup => scope
            .ledger
            .payment_group(scope.client, uuid)
            .await?
            .map(|group| Node::PaymentGroup(PaymentGroup::from_record(group))),
    })
}

#[Object]
impl NodeQuery {
    /// Any object by its id. Ids of other clients' objects are NOT_FOUND.
    async fn node(&self, ctx: &Context<'_>, id: ID) -> Result<Node> {
        let scope = scope(ctx)?;
        Ok(load_node(scope, &id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("no object with id {}", id.as_str())))?)
    }

    /// Up to 100 objects by id, in the order asked, each loaded in one batch per kind.
    /// An id that names nothing of yours gives null in its place.
    #[graphql(complexity = "ids.len().max(1) * child_complexity")]
    async fn nodes(&self, ctx: &Context<'_>, ids: Vec<ID>) -> Result<Vec<Option<Node>>> {
        let scope = scope(ctx)?;
        if ids.len() > NODES_IDS_MAX {
            return Err(AppError::bad_input(format!(
                "nodes takes at most {NODES_IDS_MAX} ids, got {}",
                ids.len()
            ))
            .into());
        }
        futures::future::try_join_all(ids.iter().map(|id| load_node(scope, id))).await
    }
}

#[derive(Default)]
pub struct AccountQuery;

#[Object]
impl AccountQuery {
    async fn account(&self, ctx: &Context<'_>, id: ID) -> Result<Account> {
        let id = AccountId::parse(&id)?;
        Ok(load_account(scope(ctx)?, id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("account {id} not found")))?)
    }

    /// The account with this `externalRef`, or null.
    async fn account_by_external_ref(
        &self,
        ctx: &Context<'_>,
        external_ref: String,
    ) -> Result<Option<Account>> {
        let scope = scope(ctx)?;
        let row = scope
            .ledger
            .account_by_external_ref(scope.client, &external_ref)
            .await?;
        Ok(row.map(Account::from_row).transpose()?)
    }

    /// The client's accounts in feed order (oldest first): a poller following
    /// `endCursor` sees every new account exactly once.
    #[graphql(
        complexity = "crate::graphql::paging::page_complexity(first, last, child_complexity)"
    )]
    async fn accounts(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, Account>> {
        let scope = scope(ctx)?;
        let arguments = PageArguments::new(first, after, last, before);
        page_of(arguments, |page| {
            scope.ledger.list_accounts(scope.client, page)
        })
        .await
    }
}

#[derive(Default)]
pub struct PaymentQuery;

#[Object]
impl PaymentQuery {
    async fn payment(&self, ctx: &Context<'_>, id: ID) -> Result<Payment> {
        let scope = scope(ctx)?;
        let id = PaymentId::parse(&id)?;
        let row = scope
            .loader
            .load_one(id)
            .await?
            .ok_or_else(|| AppError::not_found(format!("payment {id} not found")))?;
        Ok(Payment::from_row(row)?)
    }

    /// The payment created with this idempotency key, or null if none was: the way to
    /// learn whether a request whose response was lost took effect.
    async fn payment_by_idempotency_key(
        &self,
        ctx: &Context<'_>,
        idempotency_key: String,
    ) -> Result<Option<Payment>> {
        let scope = scope(ctx)?;
        let key = IdempotencyKey::parse(&idempotency_key)?;
        let row = scope
            .ledger
            .payment_by_idempotency_key(scope.client, &key)
            .await?;
        Ok(row.map(Payment::from_row).transpose()?)
    }

    /// The group `createPayments` made with this idempotency key, or null if none was.
    async fn payment_group_by_idempotency_key(
        &self,
        ctx: &Context<'_>,
        idempotency_key: String,
    ) -> Result<Option<PaymentGroup>> {
        let scope = scope(ctx)?;
        let key = IdempotencyKey::parse(&idempotency_key)?;
        let group = scope
            .ledger
            .payment_group_by_idempotency_key(scope.client, &key)
            .await?;
        Ok(group.map(PaymentGroup::from_record))
    }

    /// The client's payments in feed order (oldest first): poll with
    /// `after: <last endCursor>` to see every payment exactly once, across any number
    /// of server instances. Each argument narrows the list: `accountId` to payments
    /// from or to it, `status`, and `since` (inclusive) / `until` (exclusive) on
    /// `createdAt`, and `metadata` to payments with that one key/value pair in their
    /// metadata (found through an index of the pairs).
    #[graphql(
        complexity = "crate::graphql::paging::page_complexity(first, last, child_complexity)"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn payments(
        &self,
        ctx: &Context<'_>,
        account_id: Option<ID>,
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
            account: account_id
                .as_deref()
                .map(|id| AccountId::parse(id))
                .transpose()?,
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
}

#[derive(Default)]
pub struct EntryQuery;

#[Object]
impl EntryQuery {
    /// Ledger entries, oldest first. With `accountId`, that account's entries in
    /// posting order (by account version); without, all of the client's entries in
    /// feed order. Either way, poll with `after: <last endCursor>` to see each new
    /// entry exactly once; the two lists' cursors are not interchangeable.
    #[graphql(
        complexity = "crate::graphql::paging::page_complexity(first, last, child_complexity)"
    )]
    async fn ledger_entries(
        &self,
        ctx: &Context<'_>,
        account_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Result<Connection<String, LedgerEntry>> {
        let scope = scope(ctx)?;
        let arguments = PageArguments::new(first, after, last, before);
        match account_id {
            Some(account_id) => {
                let account = AccountId::parse(&account_id)?;
                page_of(arguments, |page| {
                    scope.ledger.list_entries(scope.client, account, page)
                })
                .await
            }
            None => {
                page_of(arguments, |page| {
                    scope.ledger.list_entry_feed(scope.client, page)
                })
                .await
            }
        }
    }
}
