//! DataLoaders: everything a query resolves by id is fetched in one batched call per
//! kind, through the caches, scoped to the calling client.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;
use uuid::Uuid;

use crate::cache::VersionedBalance;
use crate::entity::{account, ledger_entry, payment, payment_settlement};
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

/// The settlement of one hold, if it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SettlementOf(pub PaymentId);

/// The refunds of one payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RefundsOf(pub PaymentId);

/// An account's balance through the caches (`consistency: CACHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CachedBalance(pub AccountId);

/// An account's balance from the database (`consistency: STRONG`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StrongBalance(pub AccountId);

/// One loader per key type: the key names a row id, and a ledger read answers a batch
/// of ids with a map by id.
macro_rules! loader {
    ($key:ident => $value:ty, $read:ident, |$id:ident| $from_id:expr, |$each:ident| $to_id:expr) => {
        impl Loader<$key> for LedgerLoader {
            type Value = $value;
            type Error = AppError;

            async fn load(&self, keys: &[$key]) -> Result<HashMap<$key, $value>, AppError> {
                let ids: Vec<Uuid> = keys.iter().map(|&$each| $to_id).collect();
                let found = self.ledger.$read(self.client, &ids).await?;
                Ok(found
                    .into_iter()
                    .map(|($id, value)| ($from_id, value))
                    .collect())
            }
        }
    };
}

loader!(AccountId => account::Model, account_settings, |id| AccountId(id), |key| key.0);
loader!(CachedBalance => VersionedBalance, cached_balances, |id| CachedBalance(AccountId(id)), |key| key.0.0);
loader!(StrongBalance => VersionedBalance, strong_balances, |id| StrongBalance(AccountId(id)), |key| key.0.0);
loader!(PaymentId => payment::Model, payments_by_ids, |id| PaymentId(id), |key| key.0);
loader!(LedgerEntryId => ledger_entry::Model, entries_by_ids, |id| LedgerEntryId(id), |key| key.0);
loader!(EntriesOfPayment => Arc<Vec<ledger_entry::Model>>, entries_by_payment_ids, |id| EntriesOfPayment(PaymentId(id)), |key| key.0.0);
loader!(SettlementOf => payment_settlement::Model, settlements_by_payment_ids, |id| SettlementOf(PaymentId(id)), |key| key.0.0);
loader!(RefundsOf => Vec<payment::Model>, refunds_of, |id| RefundsOf(PaymentId(id)), |key| key.0.0);
