use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub currency: String,
    pub balance_rule: BalanceRule,
    pub credit_limit_minor: Option<i64>,
    pub external_ref: Option<String>,
    pub balance_minor: i64,
    pub version: i64,
    /// The sum of the account's `live_holds` as payer (expired ones included until a
    /// write releases them).
    pub pending_minor: i64,
    /// How many times the account's holds have changed: with `version`, orders cached
    /// balances.
    pub hold_seq: i64,
    /// When the account's last entry was written: its next may not be earlier.
    pub last_entry_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    /// Where the row sits in its client's feed: see `pagination::FeedKey`.
    pub feed_seq: i64,
    /// The client's key/value pairs as JSON text (`ledger::metadata`).
    pub metadata: Option<String>,
    pub status: AccountStatus,
    /// How many recorded changes (`account_change`) its settings have had.
    pub change_seq: i64,
}

/// Whether an account takes part in new payments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, async_graphql::Enum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum AccountStatus {
    #[sea_orm(string_value = "ACTIVE")]
    Active,
    /// Takes part in no new payment, hold, capture or refund until unfrozen; holds on
    /// it can still be voided.
    #[sea_orm(string_value = "FROZEN")]
    Frozen,
    /// Final: closed at zero balance with no live holds, and never used again.
    #[sea_orm(string_value = "CLOSED")]
    Closed,
}

/// How far an account's balance may go down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, async_graphql::Enum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum BalanceRule {
    /// The balance may not go below zero.
    #[sea_orm(string_value = "NON_NEGATIVE")]
    NonNegative,
    /// The balance may go down to minus the account's credit limit.
    #[sea_orm(string_value = "CREDIT_LIMIT")]
    CreditLimit,
    /// No lower bound: system accounts that bring money into the ledger.
    #[sea_orm(string_value = "UNBOUNDED")]
    Unbounded,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
