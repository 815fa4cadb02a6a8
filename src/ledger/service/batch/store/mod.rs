//! The one backend seam of a batch: what it asks of its database (lock the accounts,
//! read the context, claim the keys, write the rows), with a PostgreSQL and a SQLite
//! implementation. PostgreSQL does each step in one statement over arrays (`unnest`),
//! so its text never changes with the batch size and stays prepared, and can send a
//! batch of plain payments decided on rows the instance knows as a single statement
//! with no transaction around it (`write_in_one_trip`). SQLite runs in process, so it
//! takes the same steps row by row through sea-orm. The writer picks one when it
//! starts (`store_for`); nothing else asks which database it is.

mod postgres;
mod sqlite;

pub(in crate::ledger::service) use self::sqlite::next_feed_seq;

use std::collections::HashSet;

use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr};
use uuid::Uuid;

use super::decide::BatchContext;
use super::rows::BatchRows;
use crate::db::Backend;
use crate::entity::{account, idempotency_key};

/// An account a batch needs, and the client whose request names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(in crate::ledger::service) struct AccountClaim {
    pub(in crate::ledger::service) id: Uuid,
    pub(in crate::ledger::service) client: Uuid,
}

/// How a one-statement batch went when the database answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::ledger::service) enum OneTripAnswer {
    /// Written and committed.
    Written,
    /// Nothing written: an account moved since the batch was decided on it.
    AccountsMoved,
}

/// What a batch (and an account change, which locks and claims the same way) asks of
/// its database. Every method but `write_in_one_trip` runs in the caller's
/// transaction.
#[async_trait::async_trait]
pub(in crate::ledger::service) trait BatchStore: Send + Sync {
    /// Locks the accounts of `claims` (sorted, distinct) in id order and returns them:
    /// only those owned by the client that names them, so no tenant can take (or wait
    /// for) another tenant's row lock by naming its id. Every writer locks in the same
    /// order, so batches touching overlapping accounts wait, never deadlock.
    async fn lock_accounts(
        &self,
        transaction: &DatabaseTransaction,
        claims: &[AccountClaim],
    ) -> Result<Vec<account::Model>, DbErr>;

    /// Reads the batch context for `held_accounts` (locked, with holds), `holds` (to
    /// settle) and `originals` (to refund).
    async fn read_context(
        &self,
        transaction: &DatabaseTransaction,
        held_accounts: &[Uuid],
        holds: &[Uuid],
        originals: &[Uuid],
    ) -> Result<BatchContext, DbErr>;

    /// Inserts the key records, in the given order, skipping keys that already exist
    /// (a concurrent inserter of the same key is waited for first): a taken key is an
    /// expected event, not an error. Returns the resource ids of the records this
    /// transaction inserted: the keys it now owns.
    async fn claim_keys(
        &self,
        transaction: &DatabaseTransaction,
        records: &[idempotency_key::Model],
    ) -> Result<HashSet<Uuid>, DbErr>;

    /// Inserts the payments, moves the accounts (each only from the version and
    /// hold_seq it was locked at), appends the entries and makes the hold, metadata and
    /// group writes, setting the rows' `feed_seq`. Returns how many accounts moved:
    /// anything but `rows.moves.len()` means a lock did not hold.
    async fn write(
        &self,
        transaction: &DatabaseTransaction,
        rows: &mut BatchRows,
    ) -> Result<u64, DbErr>;

    /// Whether `write_in_one_trip` exists here.
    fn has_one_trip(&self) -> bool;

    /// Locks, checks, claims and writes a batch of plain payments (no holds, refunds,
    /// metadata or groups) in one statement with no transaction open, and sets the
    /// rows' `feed_seq`. `decided_on` are the rows the batch was decided against (every
    /// account its payments name), `keys` its key records in claiming order. Anything
    /// but `Written`, and any error, means nothing was written, unless the answer was
    /// lost with the connection: then the batch may have committed, and its keys say so.
    async fn write_in_one_trip(
        &self,
        connection: &DatabaseConnection,
        rows: &mut BatchRows,
        decided_on: &[account::Model],
        keys: &[idempotency_key::Model],
    ) -> Result<OneTripAnswer, DbErr>;
}

/// The store of `backend`.
pub(in crate::ledger::service) fn store_for(backend: Backend) -> Box<dyn BatchStore> {
    match backend {
        Backend::Postgres => Box::new(postgres::Postgres),
        Backend::Sqlite => Box::new(sqlite::Sqlite),
    }
}
