//! DataLoaders: everything a query resolves by id is fetched in one batched call per
//! kind, through the caches, scoped to the calling client.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use uuid::Uuid;

use crate::cache::VersionedBalance;
use crate::entity::{account, ledger_entry, payment};
use crate::error::AppError;
use crate::ids::{AccountId, ClientId, LedgerEntryId, PaymentId};
use crate::ledger::Ledger;

/// One per request, bound to the request's client, so a loader can never return
/// another tenant's rows.
pub struct LedgerLoader {
    pub ledger: Ledger,
    pub client: ClientId,
}

/// The entries of one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntriesOfPayment(pub PaymentId);

/// An account's balance through the caches (`consistency: CACHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CachedBalance(pub AccountId);

/// An account's balance from the database (`consistency: STRONG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StrongBalance(pub AccountId);

fn uuids<K: Copy>(keys: &[K], uuid: impl Fn(K) -> Uuid) -> Vec<Uuid> {
    keys.iter().copied().map(uuid).collect()
}

fn rekey<K: Eq + std::hash::Hash, V>(
    found: HashMap<Uuid, V>,
    key: impl Fn(Uuid) -> K,
) -> HashMap<K, V> {
    found
        .into_iter()
        .map(|(id, value)| (key(id), value))
        .collect()
}

impl Loader<AccountId> for LedgerLoader {
    type Value = account::Model;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[AccountId],
    ) -> Result<HashMap<AccountId, Self::Value>, Self::Error> {
        let found = self
            .ledger
            .account_settings(self.client, &uuids(keys, |id| id.0))
            .await?;
        Ok(rekey(found, AccountId))
    }
}

impl Loader<CachedBalance> for LedgerLoader {
    type Value = VersionedBalance;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[CachedBalance],
    ) -> Result<HashMap<CachedBalance, Self::Value>, Self::Error> {
        let found = self
            .ledger
            .cached_balances(self.client, &uuids(keys, |key| key.0.0))
            .await?;
        Ok(rekey(found, |id| CachedBalance(AccountId(id))))
    }
}

impl Loader<StrongBalance> for LedgerLoader {
    type Value = VersionedBalance;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[StrongBalance],
    ) -> Result<HashMap<StrongBalance, Self::Value>, Self::Error> {
        let found = self
            .ledger
            .strong_balances(self.client, &uuids(keys, |key| key.0.0))
            .await?;
        Ok(rekey(found, |id| StrongBalance(AccountId(id))))
    }
}

impl Loader<PaymentId> for LedgerLoader {
    type Value = payment::Model;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[PaymentId],
    ) -> Result<HashMap<PaymentId, Self::Value>, Self::Error> {
        let rows = self
            .ledger
            .payments_by_ids(self.client, &uuids(keys, |id| id.0))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (PaymentId(row.id), row))
            .collect())
    }
}

impl Loader<LedgerEntryId> for LedgerLoader {
    type Value = ledger_entry::Model;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[LedgerEntryId],
    ) -> Result<HashMap<LedgerEntryId, Self::Value>, Self::Error> {
        let rows = self
            .ledger
            .entries_by_ids(self.client, &uuids(keys, |id| id.0))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (LedgerEntryId(row.id), row))
            .collect())
    }
}

impl Loader<EntriesOfPayment> for LedgerLoader {
    type Value = Arc<Vec<ledger_entry::Model>>;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[EntriesOfPayment],
    ) -> Result<HashMap<EntriesOfPayment, Self::Value>, Self::Error> {
        let found = self
            .ledger
            .entries_by_payment_ids(self.client, &uuids(keys, |key| key.0.0))
            .await?;
        Ok(rekey(found, |id| EntriesOfPayment(PaymentId(id))))
    }
}
