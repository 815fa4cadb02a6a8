use sea_orm::entity::prelude::*;

use super::account::AccountStatus;

/// One recorded change of an account's settings: which, made by which key, from what to
/// what. Append-only; numbered per account from 1 (`change_seq`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "account_changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub client_id: Uuid,
    pub account_id: Uuid,
    pub change_seq: i64,
    pub kind: ChangeKind,
    pub idempotency_key: String,
    pub old_status: AccountStatus,
    pub new_status: AccountStatus,
    pub old_credit_limit_minor: Option<i64>,
    pub new_credit_limit_minor: Option<i64>,
    pub old_external_ref: Option<String>,
    pub new_external_ref: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum, async_graphql::Enum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum ChangeKind {
    /// `updateAccount`: credit limit or external ref.
    #[sea_orm(string_value = "UPDATE")]
    Update,
    #[sea_orm(string_value = "FREEZE")]
    Freeze,
    #[sea_orm(string_value = "UNFREEZE")]
    Unfreeze,
    #[sea_orm(string_value = "CLOSE")]
    Close,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
