//! A balance as GraphQL shows it, and how fresh a caller wants it.

use async_graphql::{Enum, SimpleObject};

use crate::graphql::scalars::Money;

/// How fresh a balance must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Enum)]
pub enum Consistency {
    /// Through the caches: at most the documented staleness bound behind the database.
    #[default]
    Cached,
    /// From the database at the moment the field resolves, bypassing every cache.
    Strong,
}

/// A balance at one account version.
#[derive(SimpleObject)]
pub struct Balance {
    /// The posted balance: the sum of the account's entries.
    pub amount: Money,
    /// What live holds keep on the account as payer: PENDING payments from it, not yet
    /// captured, voided or expired.
    pub pending: Money,
    /// How much more could be paid or held under the account's balance rule: posted
    /// minus pending, down to the rule's floor; null for UNBOUNDED accounts, which have
    /// no floor.
    pub available: Option<Money>,
    /// The account version this balance was read at: it grows by one per entry.
    pub version: i64,
    pub currency: String,
}
