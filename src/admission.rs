//! Admission: how much work the server takes on at once, so that no caller, and no
//! crowd of callers, can grow its memory without bound or take the capacity other
//! clients' payments need.
//!
//! - Per client, at most `CLIENT_CONCURRENT_REQUESTS_MAX` requests run at once; one
//!   more is answered at once with HTTP 429, `RETRY_LATER` and a retry hint.
//! - Across all callers, queries together hold at most `FIELDS_IN_FLIGHT_MAX` field
//!   selections (each query weighs its document, `graphql::budget`). A query waits
//!   for room, and answers `RETRY_LATER` if none comes within `FIELDS_WAIT`. Mutations
//!   are not held back by reads: they take no part of this budget.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ids::ClientId;

/// Field selections all running queries may hold together. Measured in the issue that
/// asked for it: 64 000 fields in flight took RSS to 350-800 MB; this keeps the peak
/// a small fraction of that (docs/benchmarks.md, "Hostile traffic").
pub const FIELDS_IN_FLIGHT_MAX: u32 = 4_000;
/// How long a query waits for room among the fields in flight.
const FIELDS_WAIT: Duration = Duration::from_secs(2);
/// The retry hint a refused request carries.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Clients remembered with their request gates.
const CLIENT_GATES_CAPACITY: u64 = 100_000;

pub struct Admission {
    per_client: Option<(u32, moka::sync::Cache<ClientId, Arc<Semaphore>>)>,
    fields: Arc<Semaphore>,
}

/// Why a request was not admitted; both mean "nothing happened, retry later".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client already runs as many requests as it may.
    ClientBusy,
    /// Queries across all callers hold the whole field budget.
    ServerBusy,
}

/// Held while a request runs; dropping it makes room.
pub struct Admitted {
    _client: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// `client_requests_max`: concurrent requests per client, 0 for no limit.
    pub fn new(client_requests_max: u32) -> Self {
        Self {
            per_client: (client_requests_max > 0).then(|| {
                (
                    client_requests_max,
                    moka::sync::Cache::builder()
                        .max_capacity(CLIENT_GATES_CAPACITY)
                        .time_to_idle(Duration::from_secs(600))
                        .build(),
                )
            }),
            fields: Arc::new(Semaphore::new(FIELDS_IN_FLIGHT_MAX as usize)),
        }
    }

    /// Admits one more request of `client`, or refuses it at once.
    pub fn admit(&self, client: Option<ClientId>) -> Result<Admitted, Refusal> {
        let (Some((most, gates)), Some(client)) = (&self.per_client, client) else {
            return Ok(Admitted { _client: None });
        };
        let gate = gates.get_with(client, || Arc::new(Semaphore::new(*most as usize)));
        gate.try_acquire_owned()
            .map(|permit| Admitted {
                _client: Some(permit),
            })
            .map_err(|_| Refusal::ClientBusy)
    }

    /// Room for a query selecting `fields` fields, waiting up to `FIELDS_WAIT`.
    pub async fn room_for(&self, fields: usize) -> Result<OwnedSemaphorePermit, Refusal> {
        let wanted = u32::try_from(fields.max(1))
            .unwrap_or(u32::MAX)
            .min(FIELDS_IN_FLIGHT_MAX);
        tokio::time::timeout(
            FIELDS_WAIT,
            Arc::clone(&self.fields).acquire_many_owned(wanted),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or(Refusal::ServerBusy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_over_its_limit_is_refused_while_others_go_on() {
        let admission = Admission::new(2);
        let busy = ClientId(uuid::Uuid::now_v7());
        let other = ClientId(uuid::Uuid::now_v7());
        let first = admission.admit(Some(busy)).unwrap();
        let _second = admission.admit(Some(busy)).unwrap();
        assert_eq!(admission.admit(Some(busy)).err(), Some(Refusal::ClientBusy));
        assert!(admission.admit(Some(other)).is_ok());
        assert!(
            admission.admit(None).is_ok(),
            "anonymous callers have no gate"
        );
        drop(first);
        assert!(
            admission.admit(Some(busy)).is_ok(),
            "a finished request makes room"
        );
    }

    #[test]
    fn no_limit_admits_everything() {
        let admission = Admission::new(0);
        let client = ClientId(uuid::Uuid::now_v7());
        let held: Vec<_> = (0..1000)
            .map(|_| admission.admit(Some(client)).unwrap())
            .collect();
        assert_eq!(held.len(), 1000);
    }

    #[tokio::test]
    async fn queries_share_one_field_budget() {
        let admission = Admission::new(0);
        let whole = admission
            .room_for(FIELDS_IN_FLIGHT_MAX as usize)
            .await
            .unwrap();
        assert_eq!(admission.room_for(1).await.err(), Some(Refusal::ServerBusy));
        drop(whole);
        assert!(admission.room_for(10).await.is_ok());
    }
}
