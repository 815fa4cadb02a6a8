//! The account rows as this instance last committed them, so a batch of payments on
//! them can be decided before any round trip and sent as one statement
//! (`batch`, "one trip").
//!
//! A guess, never a judge: the one-trip statement locks the rows and fails unless each
//! still has the version, hold sequence and change sequence the batch was decided on.
//! Another instance's write, a settings change or a hold makes the guess stale; the
//! statement then fails, the batch runs the long way (lock, decide, write), and its
//! rows replace the stale ones. So nothing that correctness needs lives here, and an
//! instance that starts empty, or many instances on one database, are only slower.

use std::collections::HashMap;
use std::time::Duration;

use moka::sync::Cache;
use uuid::Uuid;

use super::keyed::KeyedRequest;
use crate::entity::account;

/// How many account rows an instance keeps (about 200 bytes each), and for how long an
/// account nobody pays through stays.
const KNOWN_ACCOUNTS_MAX: u64 = 100_000;
const KNOWN_ACCOUNT_IDLE: Duration = Duration::from_secs(60);

pub(super) struct KnownAccounts {
    rows: Cache<Uuid, account::Model>,
    /// Keys this instance's batches committed lately, remembered before the batch
    /// leaves its accounts' write lanes, so the next batch on those accounts (a
    /// duplicate sent at the same moment, say) does not send a key it knows is taken
    /// in a one-trip statement, where a taken key fails the whole statement with an
    /// ERROR in PostgreSQL's log. Also a hint only: the database judges every key.
    committed_keys: Cache<(Uuid, String), ()>,
}

impl KnownAccounts {
    pub(super) fn new() -> Self {
        Self {
            rows: Cache::builder()
                .max_capacity(KNOWN_ACCOUNTS_MAX)
                .time_to_idle(KNOWN_ACCOUNT_IDLE)
                .build(),
            committed_keys: Cache::builder()
                .max_capacity(KNOWN_ACCOUNTS_MAX)
                .time_to_live(KNOWN_ACCOUNT_IDLE)
                .build(),
        }
    }

    pub(super) fn remember_keys<'a>(&self, keys: impl IntoIterator<Item = &'a KeyedRequest>) {
        for key in keys {
            self.committed_keys
                .insert((key.client.0, key.key.as_str().to_owned()), ());
        }
    }

    pub(super) fn key_committed(&self, key: &KeyedRequest) -> bool {
        self.committed_keys
            .contains_key(&(key.client.0, key.key.as_str().to_owned()))
    }

    /// Keeps the rows a committed batch left (what payments do not need is dropped).
    pub(super) fn remember(&self, rows: Vec<account::Model>) {
        for row in rows {
            self.rows.insert(
                row.id,
                account::Model {
                    metadata: None,
                    external_ref: None,
                    ..row
                },
            );
        }
    }

    pub(super) fn forget(&self, accounts: &[Uuid]) {
        for account in accounts {
            self.rows.invalidate(account);
        }
    }

    /// The rows of every one of `accounts`, or `None` if one is unknown or has holds
    /// (whether a hold is still live is judged by the database's clock, which a batch
    /// decided here has not read).
    pub(super) fn rows_without_holds(
        &self,
        accounts: &[Uuid],
    ) -> Option<HashMap<Uuid, account::Model>> {
        accounts
            .iter()
            .map(|id| {
                self.rows
                    .get(id)
                    .filter(|row| row.pending_minor == 0)
                    .map(|row| (*id, row))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::account::{AccountStatus, BalanceRule};

    fn row(id: Uuid, pending_minor: i64) -> account::Model {
        account::Model {
            id,
            client_id: Uuid::nil(),
            currency: "USD".to_owned(),
            balance_rule: BalanceRule::NonNegative,
            credit_limit_minor: None,
            external_ref: Some("ref".to_owned()),
            balance_minor: 500,
            version: 3,
            pending_minor,
            hold_seq: 1,
            last_entry_at: None,
            created_at: chrono::DateTime::UNIX_EPOCH,
            feed_seq: 1,
            metadata: Some("{}".to_owned()),
            status: AccountStatus::Active,
            change_seq: 0,
        }
    }

    #[test]
    fn every_account_must_be_known_and_without_holds() {
        let known = KnownAccounts::new();
        let (a, b, held) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        known.remember(vec![row(a, 0), row(b, 0), row(held, 40)]);
        let rows = known.rows_without_holds(&[a, b]).expect("both known");
        assert_eq!(rows[&a].balance_minor, 500);
        assert_eq!(
            rows[&a].metadata, None,
            "what payments do not need is dropped"
        );
        assert!(known.rows_without_holds(&[a, held]).is_none());
        assert!(known.rows_without_holds(&[a, Uuid::now_v7()]).is_none());
        known.forget(&[b]);
        assert!(known.rows_without_holds(&[a, b]).is_none());
    }

    #[test]
    fn a_committed_key_is_known_for_its_client_only() {
        use crate::idempotency::{Fingerprint, IdempotencyKey, Operation};
        use crate::ids::ClientId;
        let keyed = |client: u128, key: &str| KeyedRequest {
            client: ClientId(Uuid::from_u128(client)),
            key: IdempotencyKey::parse(key).unwrap(),
            operation: Operation::CreatePayment,
            fingerprint: Fingerprint::of(Operation::CreatePayment, &[Some(key)]),
            resource_id: Uuid::now_v7(),
        };
        let known = KnownAccounts::new();
        known.remember_keys([&keyed(1, "order-1")]);
        assert!(known.key_committed(&keyed(1, "order-1")));
        assert!(
            !known.key_committed(&keyed(2, "order-1")),
            "keys are per client"
        );
        assert!(!known.key_committed(&keyed(1, "order-2")));
    }
}
