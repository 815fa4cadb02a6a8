use sea_orm::entity::prelude::*;

/// Payments made all together or not at all under one idempotency key
/// (`createPayments`); its payments name it in `payments.group_id`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_groups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub idempotency_key: String,
    pub payment_count: i32,
    /// The client's key/value pairs as JSON text (`ledger::metadata`).
    pub metadata: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
