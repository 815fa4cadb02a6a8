//! One recorded change of an account's settings, as GraphQL shows it.

use async_graphql::Object;
use chrono::{DateTime, Utc};

use crate::entity::account::AccountStatus;
use crate::entity::account_change::{self, ChangeKind};
use crate::error::AppResult;
use crate::graphql::scalars::Money;
use crate::ledger::money::{Currency, from_minor_units};

/// One recorded change of an account's settings. Immutable.
pub struct AccountChange {
    row: account_change::Model,
    currency: Currency,
}

impl AccountChange {
    pub fn from_row(row: account_change::Model, currency: &str) -> AppResult<Self> {
        Ok(Self::in_currency(row, Currency::from_stored(currency)?))
    }

    /// A change of an account already loaded, whose currency is known.
    pub(super) fn in_currency(row: account_change::Model, currency: Currency) -> Self {
        Self { row, currency }
    }

    fn money(&self, minor: Option<i64>) -> Option<Money> {
        minor.map(|minor| from_minor_units(minor, self.currency).into())
    }
}

#[Object]
impl AccountChange {
    /// 1 for the account's first change, then one more each.
    async fn sequence(&self) -> i64 {
        self.row.change_seq
    }

    async fn kind(&self) -> ChangeKind {
        self.row.kind
    }

    /// The idempotency key of the request that made it.
    async fn idempotency_key(&self) -> &str {
        &self.row.idempotency_key
    }

    async fn old_status(&self) -> AccountStatus {
        self.row.old_status
    }

    async fn new_status(&self) -> AccountStatus {
        self.row.new_status
    }

    async fn old_credit_limit(&self) -> Option<Money> {
        self.money(self.row.old_credit_limit_minor)
    }

    async fn new_credit_limit(&self) -> Option<Money> {
        self.money(self.row.new_credit_limit_minor)
    }

    async fn old_external_ref(&self) -> Option<&str> {
        self.row.old_external_ref.as_deref()
    }

    async fn new_external_ref(&self) -> Option<&str> {
        self.row.new_external_ref.as_deref()
    }

    async fn created_at(&self) -> DateTime<Utc> {
        self.row.created_at
    }
}
