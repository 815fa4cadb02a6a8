//! Admission: how much work the server takes on at once, so that no caller, and no
//! crowd of callers, can grow its memory without bound or take the capacity other
//! clients' payments need.
//!
//! - Per client, at most `CLIENT_CONCURRENT_REQUESTS_MAX` requests run at once; one
//!   more is answered at once with HTTP 429, `RETRY_LATER` and a retry hint. A bulk
//!   request counts by its size: `createPaymentBatch` with N payments counts as
//!   N / `PAYMENTS_PER_REQUEST` requests (rounded up, at most the whole limit), so no
//!   client holds more payments in flight through batches than through single ones.
//! - Across all callers, large documents (over `LARGE_DOCUMENT_BYTES`) being parsed or
//!   waiting hold at most `LARGE_DOCUMENT_BYTES_IN_FLIGHT_MAX` bytes of query text, so
//!   waiting requests cannot pile up parsed documents.
//! - Across all callers, queries together hold at most `FIELDS_IN_FLIGHT_MAX` field
//!   selections (each query weighs its document, `graphql::budget`). A query waits
//!   for room, and answers `RETRY_LATER` if none comes within `FIELDS_WAIT`. Mutations
//!   are not held back by reads: they take no part of this budget.
//! - Long polls woken by a change run at most `WOKEN_RUNS_PER_CLIENT` at once per
//!   client, apart from its request limit, so a client's dashboards never take the
//!   permits its payments need.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ids::ClientId;

/// Field selections all running queries may hold together. Measured in the issue that
/// asked for it: 64 000 fields in flight took RSS to 350-800 MB; this keeps the peak
/// a small fraction of that (docs/benchmarks.md, "Hostile traffic").
pub const FIELDS_IN_FLIGHT_MAX: u32 = 4_000;
/// Query text of large documents all requests may hold while they are parsed and wait
/// for room: a parsed document takes about 80 times its text, and a waiting request
/// already holds it, so this bounds what waiting costs (about 80 MiB).
pub const LARGE_DOCUMENT_BYTES_IN_FLIGHT_MAX: u32 = 1024 * 1024;
/// Documents up to this size (every payment, every dashboard poll) skip that bound, so
/// a flood of large queries never holds up a small request.
pub const LARGE_DOCUMENT_BYTES: usize = 4 * 1024;
/// How long a query waits for room among the fields in flight.
const FIELDS_WAIT: Duration = Duration::from_secs(2);
/// The retry hint a refused request carries.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How many payments of a `createPaymentBatch` count as one request against the
/// client's limit: one group-commit batch's worth (`WRITE_BATCH_MAX`'s default).
pub const PAYMENTS_PER_REQUEST: usize = 64;
/// Runs of woken long polls one client may have at once; the rest wait their turn.
pub const WOKEN_RUNS_PER_CLIENT: usize = 8;
/// Clients remembered with their request gates.
const CLIENT_GATES_CAPACITY: u64 = 100_000;

pub struct Admission {
    per_client: Option<(u32, moka::sync::Cache<ClientId, Arc<Semaphore>>)>,
    /// Gates of the runs of woken long polls, per client (`admit_woken`).
    woken: moka::sync::Cache<ClientId, Arc<Semaphore>>,
    fields: Arc<Semaphore>,
    large_documents: Arc<Semaphore>,
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
            woken: moka::sync::Cache::builder()
                .max_capacity(CLIENT_GATES_CAPACITY)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            fields: Arc::new(Semaphore::new(FIELDS_IN_FLIGHT_MAX as usize)),
            large_documents: Arc::new(Semaphore::new(LARGE_DOCUMENT_BYTES_IN_FLIGHT_MAX as usize)),
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

    /// Admits the run of a long poll of `client` that a change woke, waiting up to
    /// `wait` for its turn. Woken runs have gates of their own (`WOKEN_RUNS_PER_CLIENT`
    /// at once per client): one change wakes all of a client's parked polls at once,
    /// and they must neither refuse each other nor take the permits its payments need.
    pub async fn admit_woken(&self, client: ClientId, wait: Duration) -> Result<Admitted, Refusal> {
        let gate = self
            .woken
            .get_with(client, || Arc::new(Semaphore::new(WOKEN_RUNS_PER_CLIENT)));
        match tokio::time::timeout(wait, gate.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Admitted {
                _client: Some(permit),
            }),
            _ => Err(Refusal::ClientBusy),
        }
    }

    /// For a request of `client` that is already admitted and counts as `requests`
    /// (a bulk request's size): the rest of its share, or a refusal at once. A request
    /// larger than the whole limit takes all of it, so it runs when the client runs
    /// nothing else.
    pub fn admit_more(&self, client: ClientId, requests: usize) -> Result<Admitted, Refusal> {
        let Some((most, gates)) = &self.per_client else {
            return Ok(Admitted { _client: None });
        };
        let more = u32::try_from(requests.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(most.saturating_sub(1));
        if more == 0 {
            return Ok(Admitted { _client: None });
        }
        let gate = gates.get_with(client, || Arc::new(Semaphore::new(*most as usize)));
        gate.try_acquire_many_owned(more)
            .map(|permit| Admitted {
                _client: Some(permit),
            })
            .map_err(|_| Refusal::ClientBusy)
    }

    /// Room for a query selecting `fields` fields, waiting up to `FIELDS_WAIT`.
    pub async fn room_for(&self, fields: usize) -> Result<OwnedSemaphorePermit, Refusal> {
        acquire(&self.fields, fields.max(1), FIELDS_IN_FLIGHT_MAX).await
    }

    /// Room to parse a document of `text_bytes`, before it is parsed: nothing for a
    /// small one; a large one waits up to `FIELDS_WAIT` for its share of
    /// `LARGE_DOCUMENT_BYTES_IN_FLIGHT_MAX`.
    pub async fn room_to_parse(
        &self,
        text_bytes: usize,
    ) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        if text_bytes <= LARGE_DOCUMENT_BYTES {
            return Ok(None);
        }
        acquire(
            &self.large_documents,
            text_bytes,
            LARGE_DOCUMENT_BYTES_IN_FLIGHT_MAX,
        )
        .await
        .map(Some)
    }
}

/// `wanted` permits of `semaphore` (at most `most`, its size), waiting up to
/// `FIELDS_WAIT`.
async fn acquire(
    semaphore: &Arc<Semaphore>,
    wanted: usize,
    most: u32,
) -> Result<OwnedSemaphorePermit, Refusal> {
    let wanted = u32::try_from(wanted).unwrap_or(u32::MAX).min(most);
    tokio::time::timeout(
        FIELDS_WAIT,
        Arc::clone(semaphore).acquire_many_owned(wanted),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .ok_or(Refusal::ServerBusy)
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
    fn a_bulk_request_counts_by_its_size() {
        let admission = Admission::new(4);
        let client = ClientId(uuid::Uuid::now_v7());
        let first = admission.admit(Some(client)).unwrap();
        // Three requests' worth: two more than the one already admitted.
        let more = admission.admit_more(client, 3).unwrap();
        let other = admission.admit(Some(client)).unwrap();
        assert_eq!(
            admission.admit(Some(client)).err(),
            Some(Refusal::ClientBusy)
        );
        drop(other);
        assert_eq!(
            admission.admit_more(client, 3).err(),
            Some(Refusal::ClientBusy),
            "the fourth place is free, but two more are wanted"
        );
        drop(more);
        // Larger than the whole limit: all of it, while nothing else runs.
        let all = admission.admit_more(client, 1000).unwrap();
        assert_eq!(
            admission.admit(Some(client)).err(),
            Some(Refusal::ClientBusy)
        );
        drop((first, all));
        assert!(admission.admit(Some(client)).is_ok());
        assert!(Admission::new(0).admit_more(client, 1000).is_ok());
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
    async fn large_documents_share_one_text_budget_and_small_ones_skip_it() {
        let admission = Admission::new(0);
        let whole = admission
            .room_to_parse(LARGE_DOCUMENT_BYTES_IN_FLIGHT_MAX as usize)
            .await
            .unwrap();
        assert!(
            admission
                .room_to_parse(LARGE_DOCUMENT_BYTES)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(
            admission
                .room_to_parse(LARGE_DOCUMENT_BYTES + 1)
                .await
                .err(),
            Some(Refusal::ServerBusy)
        );
        drop(whole);
        assert!(admission.room_to_parse(64 * 1024).await.unwrap().is_some());
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
