//! DataLoaders: everything a query resolves by id is fetched in one batched statement
//! per kind, scoped to the calling client.

use std::collections::HashMap;

use async_graphql::dataloader::Loader;
use uuid::Uuid;

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

fn uuids<K: Copy>(keys: &[K], uuid: impl Fn(K) -> Uuid) -> Vec<Uuid> {
    keys.iter().copied().map(uuid).collect()
}

impl Loader<AccountId> for LedgerLoader {
    type Value = account::Model;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[AccountId],
    ) -> Result<HashMap<AccountId, Self::Value>, Self::Error> {
        let rows = self
            .ledger
            .accounts_by_ids(self.client, &uuids(keys, |id| id.0))
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| (AccountId(row.id), row))
            .collect())
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
    type Value = Vec<ledger_entry::Model>;
    type Error = AppError;

    async fn load(
        &self,
        keys: &[EntriesOfPayment],
    ) -> Result<HashMap<EntriesOfPayment, Self::Value>, Self::Error> {
        let rows = self
            .ledger
            .entries_by_payment_ids(self.client, &uuids(keys, |key| key.0.0))
            .await?;
        let mut by_payment: HashMap<EntriesOfPayment, Self::Value> =
            keys.iter().map(|key| (*key, Vec::new())).collect();
        for row in rows {
            by_payment
                .entry(EntriesOfPayment(PaymentId(row.payment_id)))
                .or_default()
                .push(row);
        }
        Ok(by_payment)
    }
}
