use sea_orm::entity::prelude::*;

/// A hold not yet settled or released: the working set pending amounts are summed from.
/// Rows leave when their hold is captured or voided, or once it has expired.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "live_holds")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub payment_id: Uuid,
    pub client_id: Uuid,
    /// The payer, on whom the amount is held.
    pub account_id: Uuid,
    pub amount_minor: i64,
    pub expires_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
