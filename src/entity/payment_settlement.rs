use sea_orm::entity::prelude::*;

/// What became of a hold: captured (with the amount posted) or voided. At most one per
/// hold; never changed.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_settlements")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub payment_id: Uuid,
    pub kind: SettlementKind,
    /// The captured amount; 0 for a void.
    pub amount_minor: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum SettlementKind {
    #[sea_orm(string_value = "CAPTURE")]
    Capture,
    #[sea_orm(string_value = "VOID")]
    Void,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
