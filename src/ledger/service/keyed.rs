//! A keyed request: every creating mutation carries an idempotency key, and what the
//! server needs of it is the same for all of them.

use uuid::Uuid;

use crate::entity::idempotency_key;
use crate::idempotency::{self, Fingerprint, IdempotencyKey};
use crate::ids::ClientId;

/// One request's use of an idempotency key: whose, for which operation, the
/// fingerprint of its input, and the id of what it creates (a payment, refund, group,
/// account, account change, or the settlement of a hold).
#[derive(Debug, Clone)]
pub(super) struct KeyedRequest {
    pub(super) client: ClientId,
    pub(super) key: IdempotencyKey,
    pub(super) operation: idempotency::Operation,
    pub(super) fingerprint: Fingerprint,
    pub(super) resource_id: Uuid,
}

impl KeyedRequest {
    /// A capture or void: what it creates is the hold's settlement.
    pub(super) fn settling(
        client: ClientId,
        key: &IdempotencyKey,
        operation: idempotency::Operation,
        fingerprint: Fingerprint,
    ) -> Self {
        Self {
            client,
            key: key.clone(),
            operation,
            fingerprint,
            resource_id: Uuid::now_v7(),
        }
    }

    /// The record that claims the key for this request.
    pub(super) fn record(&self) -> idempotency_key::Model {
        idempotency::record(
            self.client,
            &self.key,
            self.operation,
            &self.fingerprint,
            self.resource_id,
        )
    }
}
