//! Exactly-once: idempotency keys, request fingerprints and the stored record that lets
//! a retried request replay its original outcome.
//!
//! The record is written in the same database transaction as the effect it guards, and
//! the primary key `(client_id, idempotency_key)` is the only judge of "already done":
//! whichever transaction inserts it first owns the key, every other one replays it.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::entity::idempotency_key;
use crate::error::{AppError, AppResult};
use crate::ids::ClientId;

/// A client-chosen key: 1 to 255 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const LENGTH_MAX: usize = 255;

    pub fn parse(text: &str) -> AppResult<Self> {
        let length = text.chars().count();
        if length == 0 {
            return Err(AppError::bad_input("idempotencyKey must not be empty"));
        }
        if length > Self::LENGTH_MAX {
            return Err(AppError::bad_input(format!(
                "idempotencyKey is {length} characters long; the maximum is {}",
                Self::LENGTH_MAX
            )));
        }
        if text.chars().any(char::is_control) {
            return Err(AppError::bad_input(
                "idempotencyKey must contain printable characters only",
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which mutation a key was first used for. Part of the fingerprint, so one key can
/// never mean two different kinds of effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateAccount,
    CreatePayment,
    CapturePayment,
    VoidPayment,
    RefundPayment,
    CreatePayments,
    UpdateAccount,
    FreezeAccount,
    UnfreezeAccount,
    CloseAccount,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateAccount => "createAccount",
            Self::CreatePayment => "createPayment",
            Self::CapturePayment => "capturePayment",
            Self::VoidPayment => "voidPayment",
            Self::RefundPayment => "refundPayment",
            Self::CreatePayments => "createPayments",
            Self::UpdateAccount => "updateAccount",
            Self::FreezeAccount => "freezeAccount",
            Self::UnfreezeAccount => "unfreezeAccount",
            Self::CloseAccount => "closeAccount",
        }
    }
}

/// A SHA-256 over the operation and its normalized input, in hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// Fields are length-prefixed so that no two different inputs hash the same text.
    pub fn of(operation: Operation, fields: &[Option<&str>]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(operation.as_str().as_bytes());
        for field in fields {
            match field {
                Some(value) => {
                    hasher.update(b"S");
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value.as_bytes());
                }
                None => hasher.update(b"N"),
            }
        }
        Self(hex::encode(hasher.finalize()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Looks up a stored key. `Some(resource_id)`: the key was used before with this very
/// request, so the request replays that resource. A key used with another request is
/// `IDEMPOTENCY_KEY_REUSED`.
pub async fn find_replay(
    connection: &impl ConnectionTrait,
    client: ClientId,
    key: &IdempotencyKey,
    fingerprint: &Fingerprint,
) -> AppResult<Option<Uuid>> {
    let record = idempotency_key::Entity::find_by_id((client.0, key.as_str().to_owned()))
        .one(connection)
        .await?;
    match record {
        None => Ok(None),
        Some(record) if record.request_fingerprint == fingerprint.0 => Ok(Some(record.resource_id)),
        Some(_) => Err(AppError::IdempotencyKeyReused),
    }
}

/// The records that exist among `keys` of one client, by key: what each request's
/// fingerprint was and what it created. One query, for a bulk request's keys.
pub async fn find_records(
    connection: &impl ConnectionTrait,
    client: ClientId,
    keys: &[&IdempotencyKey],
) -> AppResult<HashMap<IdempotencyKey, (Fingerprint, Uuid)>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let records = idempotency_key::Entity::find()
        .filter(idempotency_key::Column::ClientId.eq(client.0))
        .filter(idempotency_key::Column::IdempotencyKey.is_in(keys.iter().map(|key| key.as_str())))
        .all(connection)
        .await?;
    Ok(records
        .into_iter()
        .map(|record| {
            (
                IdempotencyKey(record.idempotency_key),
                (Fingerprint(record.request_fingerprint), record.resource_id),
            )
        })
        .collect())
}

/// The record that claims `key` for `resource_id`.
pub fn record(
    client: ClientId,
    key: &IdempotencyKey,
    operation: Operation,
    fingerprint: &Fingerprint,
    resource_id: Uuid,
) -> idempotency_key::Model {
    idempotency_key::Model {
        client_id: client.0,
        idempotency_key: key.as_str().to_owned(),
        operation: operation.as_str().to_owned(),
        request_fingerprint: fingerprint.0.clone(),
        resource_id,
        created_at: crate::entity::stored_now(),
    }
}

/// Claims a key inside the caller's transaction. A unique violation from this insert
/// means another request owns the key; the caller rolls back and replays.
pub async fn claim(
    transaction: &impl ConnectionTrait,
    record: idempotency_key::Model,
) -> Result<(), sea_orm::DbErr> {
    idempotency_key::Entity::insert(idempotency_key::ActiveModel::from(record))
        .exec_without_returning(transaction)
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_bounds() {
        assert!(IdempotencyKey::parse("order-42").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("ключ-é-🔑").is_ok());
        for bad in ["", "a\nb", "tab\there", "\u{0}"] {
            assert_eq!(
                IdempotencyKey::parse(bad).unwrap_err().code(),
                "BAD_USER_INPUT"
            );
        }
        assert_eq!(
            IdempotencyKey::parse(&"k".repeat(256)).unwrap_err().code(),
            "BAD_USER_INPUT"
        );
    }

    #[test]
    fn fingerprints_separate_fields_and_operations() {
        let a = Fingerprint::of(Operation::CreatePayment, &[Some("ab"), Some("c")]);
        let b = Fingerprint::of(Operation::CreatePayment, &[Some("a"), Some("bc")]);
        let c = Fingerprint::of(Operation::CreateAccount, &[Some("ab"), Some("c")]);
        let d = Fingerprint::of(Operation::CreatePayment, &[Some("ab"), None]);
        let e = Fingerprint::of(Operation::CreatePayment, &[Some("ab"), Some("")]);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(d, e);
        assert_eq!(
            a,
            Fingerprint::of(Operation::CreatePayment, &[Some("ab"), Some("c")])
        );
    }
}
