//! Rows and jobs for the batch's unit tests: no database, just the models.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::super::keyed::KeyedRequest;
use super::job::{Job, Work};
use crate::entity::account::{self, AccountStatus, BalanceRule};
use crate::entity::payment::{self, StoredStatus};
use crate::idempotency::{Fingerprint, IdempotencyKey, Operation};
use crate::ids::{AccountId, ClientId};
use crate::ledger::money::{Currency, PositiveAmount};
use crate::ledger::requests::NewPayment;

pub(super) fn client() -> ClientId {
    ClientId(Uuid::from_u128(1))
}

pub(super) fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + Duration::days(20_000) + Duration::seconds(seconds)
}

/// A USD account of `client()` with `balance_minor` and as many entries as `version`.
pub(super) fn account(id: u128, rule: BalanceRule, balance_minor: i64) -> account::Model {
    account::Model {
        id: Uuid::from_u128(id),
        client_id: client().0,
        currency: "USD".to_owned(),
        balance_rule: rule,
        credit_limit_minor: None,
        external_ref: None,
        balance_minor,
        version: 1,
        pending_minor: 0,
        hold_seq: 0,
        last_entry_at: Some(at(0)),
        created_at: at(0),
        feed_seq: 1,
        metadata: None,
        status: AccountStatus::Active,
        change_seq: 0,
    }
}

/// Rows by id, as a batch holds what it locked.
pub(super) fn locked(rows: Vec<account::Model>) -> std::collections::HashMap<Uuid, account::Model> {
    rows.into_iter().map(|row| (row.id, row)).collect()
}

pub(super) fn keyed(key: &str, resource: u128) -> KeyedRequest {
    KeyedRequest {
        client: client(),
        key: IdempotencyKey::parse(key).unwrap(),
        operation: Operation::CreatePayment,
        fingerprint: Fingerprint::of(Operation::CreatePayment, &[Some(key)]),
        resource_id: Uuid::from_u128(resource),
    }
}

pub(super) fn job(key: &str, resource: u128, work: Work) -> Job {
    Job {
        request: keyed(key, resource),
        work,
        span: tracing::Span::none(),
    }
}

/// A payment of `amount_minor` cents in USD (a hold with `hold_expires_at`).
pub(super) fn pay(
    from: u128,
    to: u128,
    amount_minor: i64,
    hold_expires_at: Option<DateTime<Utc>>,
) -> Work {
    Work::Pay {
        request: NewPayment {
            idempotency_key: IdempotencyKey::parse("request").unwrap(),
            from: AccountId(Uuid::from_u128(from)),
            to: AccountId(Uuid::from_u128(to)),
            amount: PositiveAmount::from_minor(amount_minor).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            description: None,
            hold: None,
            metadata: None,
        },
        hold_expires_at,
    }
}

/// A stored payment (or hold) of `client()`.
pub(super) fn stored(
    id: u128,
    (from, to): (u128, u128),
    amount_minor: i64,
    status: StoredStatus,
) -> payment::Model {
    payment::Model {
        id: Uuid::from_u128(id),
        client_id: client().0,
        idempotency_key: format!("stored-{id}"),
        from_account_id: Uuid::from_u128(from),
        to_account_id: Uuid::from_u128(to),
        amount_minor,
        currency: "USD".to_owned(),
        status,
        decline_reason: None,
        description: None,
        created_at: at(0),
        hold_expires_at: (status == StoredStatus::Pending).then(|| at(3_600)),
        refund_of: None,
        feed_seq: 1,
        metadata: None,
        group_id: None,
        group_index: None,
    }
}
