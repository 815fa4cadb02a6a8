use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ledger_entries")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub account_id: Uuid,
    pub payment_id: Uuid,
    pub currency: String,
    pub direction: EntryDirection,
    pub amount_minor: i64,
    pub balance_after_minor: i64,
    pub account_version: i64,
    pub created_at: DateTimeUtc,
    /// Where the row sits in its client's feed: see `pagination::FeedKey`.
    pub feed_seq: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, async_graphql::Enum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum EntryDirection {
    #[sea_orm(string_value = "DEBIT")]
    Debit,
    #[sea_orm(string_value = "CREDIT")]
    Credit,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
