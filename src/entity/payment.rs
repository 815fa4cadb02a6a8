use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub idempotency_key: String,
    pub from_account_id: Uuid,
    pub to_account_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    /// What the payment was when it was decided; `ledger::lifecycle` derives what it is
    /// now from this, its settlement and the clock.
    pub status: StoredStatus,
    pub decline_reason: Option<String>,
    pub description: Option<String>,
    pub created_at: DateTimeUtc,
    /// Set on holds (PENDING, or a hold request that was DECLINED).
    pub hold_expires_at: Option<DateTimeUtc>,
    /// The payment this one refunds.
    pub refund_of: Option<Uuid>,
    /// Where the row sits in its client's feed: see `pagination::FeedKey`.
    pub feed_seq: i64,
    /// The client's key/value pairs as JSON text (`ledger::metadata`).
    pub metadata: Option<String>,
    /// The group (`payment_group`) this payment was made in, and its place there.
    pub group_id: Option<Uuid>,
    pub group_index: Option<i32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum StoredStatus {
    /// The payment moved money: two entries exist.
    #[sea_orm(string_value = "POSTED")]
    Posted,
    /// The payment broke a balance rule and moved nothing.
    #[sea_orm(string_value = "DECLINED")]
    Declined,
    /// A hold: its amount was held on the payer; a settlement row, or its expiry, says
    /// what became of it.
    #[sea_orm(string_value = "PENDING")]
    Pending,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
