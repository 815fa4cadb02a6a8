//! Reads: through the caches where a value may be cached, straight from the database
//! where it must be current (STRONG balances, lists), always filtered by tenant.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sea_orm::sea_query::{Alias, Asterisk, Expr, ExprTrait, Query, UnionType};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    QueryTrait,
};
use uuid::Uuid;

use super::Ledger;
use crate::cache::{Immutable, VersionedBalance};
use crate::db::Backend;
use crate::entity::{
    account, ledger_entry, payment, payment_group, payment_metadata, payment_settlement,
};
use crate::error::{AppError, AppResult};
use crate::idempotency::IdempotencyKey;
use crate::ids::{AccountId, ClientId};
use crate::ledger::lifecycle::PaymentStatus;
use crate::ledger::posting::EntryDirection;
use crate::pagination::{FeedKey, Page, PageRequest, TimeKey, fetch_page};

/// A payment group with its payments, in the order they were given.
#[derive(Debug, Clone)]
pub struct PaymentGroup {
    pub group: payment_group::Model,
    pub payments: Vec<payment::Model>,
}

impl Ledger {
    /// Accounts read from the database now, balances included; their balances also
    /// refresh L1.
    pub async fn accounts_by_ids(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<Vec<account::Model>> {
        let rows = self
            .owned_rows::<account::Entity>(client, account::Column::Id, ids.to_vec())
            .await?;
        self.observe_balances(&rows).await;
        Ok(rows)
    }

    /// Account rows read for another purpose refresh L1 balances when they hold no
    /// holds: a row's `pending_minor` may count expired holds, so the balance of an
    /// account with holds comes only from `load_balances`.
    async fn observe_balances(&self, rows: &[account::Model]) {
        for row in rows.iter().filter(|row| row.pending_minor == 0) {
            self.caches
                .put_l1_balance(
                    row.id,
                    VersionedBalance::posted(row.balance_minor, row.version, row.hold_seq),
                )
                .await;
        }
    }

    /// The caller's balances from the database now: posted, version, and what live
    /// holds keep pending, all read by one statement (one snapshot), so a copy never
    /// pairs a balance with holds from another moment.
    async fn load_balances(
        &self,
        client: ClientId,
        ids: Vec<Uuid>,
    ) -> AppResult<Vec<(Uuid, VersionedBalance)>> {
        load_balances_on(self.db.clone(), client, ids).await
    }

    /// Account settings (everything but the balance, which never comes from here), from
    /// L1 or the database.
    pub async fn account_settings(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, account::Model>> {
        // Misses go through `accounts_by_ids`, which also refreshes their L1 balances.
        self.owned_objects(client, ids, |missing| async move {
            let rows = self.accounts_by_ids(client, &missing).await?;
            Ok(rows.into_iter().map(|row| (row.id, row)).collect())
        })
        .await
    }

    /// One account's settings if L1 has them, checked against the tenant.
    pub async fn peek_account_settings(
        &self,
        client: ClientId,
        id: AccountId,
    ) -> Option<account::Model> {
        self.caches
            .peek_account(id.0)
            .await
            .filter(|row| row.client_id == client.0)
    }

    /// One account's balance if L1 has it. Only for accounts already known to be the
    /// caller's.
    pub async fn peek_balance(&self, id: AccountId) -> Option<VersionedBalance> {
        self.caches.peek_balance(id.0).await
    }

    /// Balances through L1, L2 and the database.
    pub async fn cached_balances(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, VersionedBalance>> {
        self.caches
            .balances(ids, |missing| {
                self.lagging_read(
                    missing,
                    |(id, _)| *id,
                    move |connection, ids| Box::pin(load_balances_on(connection, client, ids)),
                )
            })
            .await
    }

    /// Balances read from the database now, bypassing every cache.
    pub async fn strong_balances(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, VersionedBalance>> {
        let loaded = self.load_balances(client, ids.to_vec()).await?;
        for (account, balance) in &loaded {
            self.caches.put_l1_balance(*account, *balance).await;
        }
        Ok(loaded.into_iter().collect())
    }

    /// The settlements of holds, by hold id: through L1, which keeps them (they never
    /// change); a hold without one is read again next time.
    pub async fn settlements_by_payment_ids(
        &self,
        client: ClientId,
        payment_ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, payment_settlement::Model>> {
        self.owned_objects(client, payment_ids, |missing| async move {
            let rows = self
                .owned_rows::<payment_settlement::Entity>(
                    client,
                    payment_settlement::Column::PaymentId,
                    missing,
                )
                .await?;
            Ok(rows.into_iter().map(|row| (row.payment_id, row)).collect())
        })
        .await
    }

    /// The refunds of payments, oldest first, by refunded payment.
    pub async fn refunds_of(
        &self,
        client: ClientId,
        payment_ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, Vec<payment::Model>>> {
        let mut rows = self
            .owned_rows::<payment::Entity>(client, payment::Column::RefundOf, payment_ids.to_vec())
            .await?;
        rows.sort_by_key(|row| (row.created_at, row.id));
        let mut grouped: HashMap<Uuid, Vec<payment::Model>> = HashMap::new();
        for row in rows {
            if let Some(original) = row.refund_of {
                grouped.entry(original).or_default().push(row);
            }
        }
        Ok(grouped)
    }

    pub async fn payments_by_ids(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, payment::Model>> {
        self.objects_by_id::<payment::Entity>(client, ids).await
    }

    pub async fn entries_by_ids(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, ledger_entry::Model>> {
        self.objects_by_id::<ledger_entry::Entity>(client, ids)
            .await
    }

    /// Entries of several payments, debit before credit within each; a payment without
    /// entries is missing from the map.
    pub async fn entries_by_payment_ids(
        &self,
        client: ClientId,
        payment_ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, Arc<Vec<ledger_entry::Model>>>> {
        self.owned_objects(client, payment_ids, |missing| async move {
            let mut rows = self
                .owned_rows::<ledger_entry::Entity>(
                    client,
                    ledger_entry::Column::PaymentId,
                    missing.clone(),
                )
                .await?;
            rows.sort_by_key(|row| row.direction != EntryDirection::Debit);
            // Only lists with entries come back (and are cached): an empty list may be a
            // hold's, which a capture fills later.
            let mut grouped: HashMap<Uuid, Vec<ledger_entry::Model>> = HashMap::new();
            for row in rows {
                grouped.entry(row.payment_id).or_default().push(row);
            }
            Ok(grouped
                .into_iter()
                .map(|(id, entries)| (id, Arc::new(entries)))
                .collect())
        })
        .await
    }

    /// The caller's rows of `E` by id, through L1.
    async fn objects_by_id<E>(
        &self,
        client: ClientId,
        ids: &[Uuid],
    ) -> AppResult<HashMap<Uuid, E::Model>>
    where
        E: TenantEntity,
        E::Model: Immutable + Owned,
    {
        self.owned_objects(client, ids, |missing| async move {
            let rows = self
                .lagging_read(missing, E::id_of, move |connection, ids| {
                    Box::pin(owned_rows_on::<E>(connection, client, E::id_column(), ids))
                })
                .await?;
            Ok(rows.into_iter().map(|row| (E::id_of(&row), row)).collect())
        })
        .await
    }

    /// A read by id that may lag the primary by up to `DATABASE_REPLICA_MAX_LAG_MS`:
    /// on a replica within that bound when there is one, else on the primary. What the
    /// replica does not have yet (`id_of` the rows it returned tells), and everything
    /// when it fails, is read on the primary: a row just written is always found.
    async fn lagging_read<T>(
        &self,
        ids: Vec<Uuid>,
        id_of: impl Fn(&T) -> Uuid,
        read: impl Fn(DatabaseConnection, Vec<Uuid>) -> BoxFuture<'static, AppResult<Vec<T>>>,
    ) -> AppResult<Vec<T>> {
        let Some((replica, connection)) = self.replicas.as_ref().and_then(|set| set.pick()) else {
            if self.replicas.is_some() {
                self.metrics.replica_eligible_read(None);
            }
            return read(self.db.clone(), ids).await;
        };
        self.metrics.replica_eligible_read(Some(replica));
        let mut rows = match read(connection.clone(), ids.clone()).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::debug!(%error, replica, "a replica read failed; reading the primary");
                return read(self.db.clone(), ids).await;
            }
        };
        let found: HashSet<Uuid> = rows.iter().map(&id_of).collect();
        let missing: Vec<Uuid> = ids.into_iter().filter(|id| !found.contains(id)).collect();
        if !missing.is_empty() {
            rows.extend(read(self.db.clone(), missing).await?);
        }
        Ok(rows)
    }

    /// Objects by id through L1, `load` fetching the misses; only the caller's survive,
    /// whichever level they came from.
    async fn owned_objects<V, F, Fut>(
        &self,
        client: ClientId,
        ids: &[Uuid],
        load: F,
    ) -> AppResult<HashMap<Uuid, V>>
    where
        V: Immutable + Owned,
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = AppResult<Vec<(Uuid, V)>>>,
    {
        let mut found = self.caches.objects(ids, load).await?;
        found.retain(|_, value| value.belongs_to(client));
        Ok(found)
    }

    /// The caller's rows of `E` whose `column` is one of `ids`, from the primary.
    async fn owned_rows<E: TenantEntity>(
        &self,
        client: ClientId,
        column: E::Column,
        ids: Vec<Uuid>,
    ) -> AppResult<Vec<E::Model>> {
        owned_rows_on::<E>(self.db.clone(), client, column, ids).await
    }

    pub async fn payment_by_idempotency_key(
        &self,
        client: ClientId,
        key: &IdempotencyKey,
    ) -> AppResult<Option<payment::Model>> {
        // A group's payments share its key; `payment_group_by_idempotency_key` finds them.
        // (`group_id IS NULL` is also what lets PostgreSQL use the partial unique index.)
        Ok(payment::Entity::find()
            .filter(payment::Column::ClientId.eq(client.0))
            .filter(payment::Column::IdempotencyKey.eq(key.as_str()))
            .filter(payment::Column::GroupId.is_null())
            .one(&self.db)
            .await?)
    }

    /// The caller's payment group and its payments in order, or `None`.
    pub async fn payment_group(
        &self,
        client: ClientId,
        id: Uuid,
    ) -> AppResult<Option<PaymentGroup>> {
        let group = payment_group::Entity::find_by_id(id)
            .filter(payment_group::Column::ClientId.eq(client.0))
            .one(&self.db)
            .await?;
        self.with_group_payments(group).await
    }

    pub async fn payment_group_by_idempotency_key(
        &self,
        client: ClientId,
        key: &IdempotencyKey,
    ) -> AppResult<Option<PaymentGroup>> {
        let group = payment_group::Entity::find()
            .filter(payment_group::Column::ClientId.eq(client.0))
            .filter(payment_group::Column::IdempotencyKey.eq(key.as_str()))
            .one(&self.db)
            .await?;
        self.with_group_payments(group).await
    }

    async fn with_group_payments(
        &self,
        group: Option<payment_group::Model>,
    ) -> AppResult<Option<PaymentGroup>> {
        let Some(group) = group else {
            return Ok(None);
        };
        let payments = payment::Entity::find()
            .filter(payment::Column::GroupId.eq(group.id))
            .order_by_asc(payment::Column::GroupIndex)
            .all(&self.db)
            .await?;
        Ok(Some(PaymentGroup { group, payments }))
    }

    pub async fn account_by_external_ref(
        &self,
        client: ClientId,
        external_ref: &str,
    ) -> AppResult<Option<account::Model>> {
        let row = account::Entity::find()
            .filter(account::Column::ClientId.eq(client.0))
            .filter(account::Column::ExternalRef.eq(external_ref))
            .one(&self.db)
            .await?;
        self.observe_balances(row.as_slice()).await;
        Ok(row)
    }

    /// Fails with NOT_FOUND unless `account` belongs to `client`.
    async fn require_account(&self, client: ClientId, account: AccountId) -> AppResult<()> {
        if self
            .account_settings(client, &[account.0])
            .await?
            .contains_key(&account.0)
        {
            Ok(())
        } else {
            Err(AppError::not_found(format!("account {account} not found")))
        }
    }

    /// The client's accounts in feed order (oldest first).
    pub async fn list_accounts(
        &self,
        client: ClientId,
        page: PageRequest<FeedKey>,
    ) -> AppResult<Page<account::Model>> {
        let select = account::Entity::find()
            .filter(account::Column::ClientId.eq(client.0))
            .filter(self.settled(account::Column::FeedSeq));
        let columns = [account::Column::FeedSeq, account::Column::Id];
        let page = fetch_page(&self.db, select, &columns, &page).await?;
        self.observe_balances(&page.rows).await;
        Ok(page)
    }

    /// The client's payments in feed order, filtered. With an account, the two sides
    /// (from it, to it) are each read as one bounded index range and merged, so a page
    /// costs the same however long the account's history is.
    pub async fn list_payments(
        &self,
        client: ClientId,
        filter: PaymentFilter,
        page: PageRequest<FeedKey>,
    ) -> AppResult<Page<payment::Model>> {
        let mut select = payment::Entity::find()
            .filter(payment::Column::ClientId.eq(client.0))
            .filter(self.settled(payment::Column::FeedSeq));
        if let Some(status) = filter.status {
            select = select.filter(status_condition(status));
        }
        if let Some(since) = filter.since {
            select = select.filter(payment::Column::CreatedAt.gte(since));
        }
        if let Some(until) = filter.until {
            select = select.filter(payment::Column::CreatedAt.lt(until));
        }
        if let Some((key, value)) = &filter.metadata {
            // One range of `payment_metadata`'s primary key.
            select = select.filter(
                payment::Column::Id.in_subquery(
                    Query::select()
                        .column(payment_metadata::Column::PaymentId)
                        .from(payment_metadata::Entity)
                        .and_where(payment_metadata::Column::ClientId.eq(client.0))
                        .and_where(payment_metadata::Column::Key.eq(key.as_str()))
                        .and_where(payment_metadata::Column::Value.eq(value.as_str()))
                        .to_owned(),
                ),
            );
        }
        let columns = [payment::Column::FeedSeq, payment::Column::Id];
        let Some(account) = filter.account else {
            return Ok(fetch_page(&self.db, select, &columns, &page).await?);
        };
        self.require_account(client, account).await?;
        let side = |column: payment::Column, name: &str| {
            let narrowed = page.narrow(select.clone().filter(column.eq(account.0)), &columns);
            Query::select()
                .column(Asterisk)
                .from_subquery(narrowed.into_query(), Alias::new(name))
                .to_owned()
        };
        let mut both = side(payment::Column::FromAccountId, "from_side");
        both.union(
            UnionType::All,
            side(payment::Column::ToAccountId, "to_side"),
        );
        for column in columns {
            both.order_by(column, page.order());
        }
        both.limit(page.size + 1);
        let statement = self.db.get_database_backend().build(&both);
        let rows = payment::Entity::find()
            .from_raw_sql(statement)
            .all(&self.db)
            .await?;
        Ok(page.page_of(rows))
    }

    /// An account's entries in posting order (by account version): a poller that
    /// follows the cursor sees every entry exactly once.
    pub async fn list_entries(
        &self,
        client: ClientId,
        account: AccountId,
        page: PageRequest<i64>,
    ) -> AppResult<Page<ledger_entry::Model>> {
        self.require_account(client, account).await?;
        let select = ledger_entry::Entity::find()
            .filter(ledger_entry::Column::AccountId.eq(account.0))
            .filter(ledger_entry::Column::ClientId.eq(client.0));
        let columns = [ledger_entry::Column::AccountVersion];
        Ok(fetch_page(&self.db, select, &columns, &page).await?)
    }

    /// The account's last entry at or before `at`, if any: one probe of the
    /// `(account_id, created_at, account_version)` index, whatever the history's length.
    pub async fn entry_at(
        &self,
        client: ClientId,
        account: AccountId,
        at: DateTime<Utc>,
    ) -> AppResult<Option<ledger_entry::Model>> {
        Ok(ledger_entry::Entity::find()
            .filter(ledger_entry::Column::AccountId.eq(account.0))
            .filter(ledger_entry::Column::ClientId.eq(client.0))
            .filter(ledger_entry::Column::CreatedAt.lte(at))
            .order_by_desc(ledger_entry::Column::CreatedAt)
            .order_by_desc(ledger_entry::Column::AccountVersion)
            .one(&self.db)
            .await?)
    }

    /// An account's entries from `since` (inclusive) to `until` (exclusive), by time:
    /// one range of the `(account_id, created_at, account_version)` index per page.
    pub async fn balance_history(
        &self,
        client: ClientId,
        account: AccountId,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        page: PageRequest<TimeKey>,
    ) -> AppResult<Page<ledger_entry::Model>> {
        self.require_account(client, account).await?;
        let mut select = ledger_entry::Entity::find()
            .filter(ledger_entry::Column::AccountId.eq(account.0))
            .filter(ledger_entry::Column::ClientId.eq(client.0));
        if let Some(since) = since {
            select = select.filter(ledger_entry::Column::CreatedAt.gte(since));
        }
        if let Some(until) = until {
            select = select.filter(ledger_entry::Column::CreatedAt.lt(until));
        }
        let columns = [
            ledger_entry::Column::CreatedAt,
            ledger_entry::Column::AccountVersion,
        ];
        Ok(fetch_page(&self.db, select, &columns, &page).await?)
    }

    /// All of the client's entries in feed order.
    pub async fn list_entry_feed(
        &self,
        client: ClientId,
        page: PageRequest<FeedKey>,
    ) -> AppResult<Page<ledger_entry::Model>> {
        let select = ledger_entry::Entity::find()
            .filter(ledger_entry::Column::ClientId.eq(client.0))
            .filter(self.settled(ledger_entry::Column::FeedSeq));
        let columns = [ledger_entry::Column::FeedSeq, ledger_entry::Column::Id];
        Ok(fetch_page(&self.db, select, &columns, &page).await?)
    }

    /// The rows a feed may list now: on PostgreSQL, those written by transactions older
    /// than every transaction still running (the snapshot's xmin), because any of those
    /// may still commit rows with a smaller `feed_seq` than a row already visible. On
    /// SQLite every committed row qualifies: its one writer hands out `feed_seq` in
    /// commit order.
    fn settled(&self, feed_seq: impl ColumnTrait) -> Condition {
        match Backend::of(&self.db) {
            Backend::Postgres => Condition::all().add(Expr::col(feed_seq).lt(Expr::cust(
                "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
            ))),
            Backend::Sqlite => Condition::all(),
        }
    }
}

/// An account's id, balance, version, hold_seq, live pending and when that next
/// changes, as `load_balances` reads them.
type BalanceRow = (Uuid, i64, i64, i64, Option<i64>, Option<DateTime<Utc>>);

/// The payments whose status (`lifecycle::status`) is `status` now.
fn status_condition(status: PaymentStatus) -> Condition {
    use crate::entity::payment::StoredStatus;
    let stored = |stored: StoredStatus| payment::Column::Status.eq(stored);
    // Correlated EXISTS: one probe of the unique index on the settled payment per row,
    // whatever the number of settlements.
    let settled = |kind: &str| {
        Expr::cust(format!(
            "EXISTS (SELECT 1 FROM payment_settlements AS settled \
             WHERE settled.payment_id = payments.id AND settled.kind = '{kind}')"
        ))
    };
    let unsettled = Expr::cust(
        "NOT EXISTS (SELECT 1 FROM payment_settlements AS settled \
         WHERE settled.payment_id = payments.id)",
    );
    let now = crate::entity::stored_now();
    match status {
        PaymentStatus::Declined => Condition::all().add(stored(StoredStatus::Declined)),
        PaymentStatus::Posted => Condition::any().add(stored(StoredStatus::Posted)).add(
            Condition::all()
                .add(stored(StoredStatus::Pending))
                .add(settled("CAPTURE")),
        ),
        PaymentStatus::Voided => Condition::all()
            .add(stored(StoredStatus::Pending))
            .add(settled("VOID")),
        PaymentStatus::Pending => Condition::all()
            .add(stored(StoredStatus::Pending))
            .add(payment::Column::HoldExpiresAt.gt(now))
            .add(unsettled),
        PaymentStatus::Expired => Condition::all()
            .add(stored(StoredStatus::Pending))
            .add(payment::Column::HoldExpiresAt.lte(now))
            .add(unsettled),
    }
}

/// Which of a client's payments a list shows; every field narrows it.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    /// From or to this account.
    pub account: Option<AccountId>,
    pub status: Option<PaymentStatus>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Created before.
    pub until: Option<DateTime<Utc>>,
    /// With this key/value pair in their metadata.
    pub metadata: Option<(String, String)>,
}

/// `load_balances` on `connection`, the primary or a replica.
async fn load_balances_on(
    connection: DatabaseConnection,
    client: ClientId,
    ids: Vec<Uuid>,
) -> AppResult<Vec<(Uuid, VersionedBalance)>> {
    let now = crate::entity::stored_now();
    // sea-query reads `?` as a placeholder except on PostgreSQL, where it is an
    // operator.
    let placeholder = match Backend::of(&connection) {
        Backend::Postgres => "$1",
        Backend::Sqlite => "?",
    };
    let live = |aggregate: &str| {
        Expr::cust_with_values(
            format!(
                "CASE WHEN accounts.pending_minor = 0 THEN NULL ELSE \
                 (SELECT {aggregate} FROM live_holds AS hold \
                  WHERE hold.account_id = accounts.id AND hold.expires_at > {placeholder}) END"
            ),
            [now],
        )
    };
    let rows: Vec<BalanceRow> = account::Entity::find()
        .select_only()
        .columns([
            account::Column::Id,
            account::Column::BalanceMinor,
            account::Column::Version,
            account::Column::HoldSeq,
        ])
        // A sum is NUMERIC on PostgreSQL.
        .expr(live("CAST(COALESCE(SUM(hold.amount_minor), 0) AS BIGINT)"))
        .expr(live("MIN(hold.expires_at)"))
        .filter(account::Column::ClientId.eq(client.0))
        .filter(account::Column::Id.is_in(ids))
        .into_tuple()
        .all(&connection)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, balance_minor, version, hold_seq, pending_minor, pending_until)| {
                (
                    id,
                    VersionedBalance {
                        balance_minor,
                        version,
                        hold_seq,
                        pending_minor: pending_minor.unwrap_or(0),
                        pending_until,
                    },
                )
            },
        )
        .collect())
}

/// The caller's rows of `E` whose `column` is one of `ids`, from `connection`.
async fn owned_rows_on<E: TenantEntity>(
    connection: DatabaseConnection,
    client: ClientId,
    column: E::Column,
    ids: Vec<Uuid>,
) -> AppResult<Vec<E::Model>> {
    Ok(E::find()
        .filter(E::client_column().eq(client.0))
        .filter(column.is_in(ids))
        .all(&connection)
        .await?)
}

/// A table keyed by a UUID whose rows belong to one client each.
trait TenantEntity: EntityTrait {
    fn id_column() -> Self::Column;
    fn client_column() -> Self::Column;
    fn id_of(row: &Self::Model) -> Uuid;
}

macro_rules! tenant_entity {
    ($entity:ident) => {
        impl TenantEntity for $entity::Entity {
            fn id_column() -> Self::Column {
                $entity::Column::Id
            }
            fn client_column() -> Self::Column {
                $entity::Column::ClientId
            }
            fn id_of(row: &$entity::Model) -> Uuid {
                row.id
            }
        }

        impl Owned for $entity::Model {
            fn belongs_to(&self, client: ClientId) -> bool {
                self.client_id == client.0
            }
        }
    };
}

tenant_entity!(account);
tenant_entity!(payment);
tenant_entity!(ledger_entry);

impl TenantEntity for payment_settlement::Entity {
    fn id_column() -> Self::Column {
        payment_settlement::Column::PaymentId
    }
    fn client_column() -> Self::Column {
        payment_settlement::Column::ClientId
    }
    fn id_of(row: &payment_settlement::Model) -> Uuid {
        row.payment_id
    }
}

impl Owned for payment_settlement::Model {
    fn belongs_to(&self, client: ClientId) -> bool {
        self.client_id == client.0
    }
}

/// Whether a value read by id may be shown to `client`: a cache is shared by every
/// tenant, so each value is checked again on the way out.
trait Owned {
    fn belongs_to(&self, client: ClientId) -> bool;
}

impl Owned for Arc<Vec<ledger_entry::Model>> {
    fn belongs_to(&self, client: ClientId) -> bool {
        self.iter().all(|entry| entry.belongs_to(client))
    }
}
