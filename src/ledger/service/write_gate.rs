//! An in-process queue in front of write transactions.
//!
//! It is a throughput device, not a correctness one: the database's row locks, unique
//! keys and isolation keep the ledger right across any number of instances. What the
//! gate adds is that two writers in one process (payment batches, account creations)
//! that touch the same account wait here, instead of both holding a connection while
//! the database makes one wait for the other's row lock, or fail to serialize and
//! retry. On SQLite there is one lane, matching its single writer.

use std::hash::BuildHasher;

use tokio::sync::{Mutex, MutexGuard};
use uuid::Uuid;

pub struct WriteGate {
    lanes: Vec<Mutex<()>>,
    hasher: std::collections::hash_map::RandomState,
}

impl WriteGate {
    pub fn new(lane_count: usize) -> Self {
        Self {
            lanes: (0..lane_count.max(1)).map(|_| Mutex::new(())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Waits for the lanes of `accounts`. Lanes are taken in ascending order, so two
    /// callers can never wait for each other in a cycle.
    pub async fn enter(&self, accounts: &[Uuid]) -> Vec<MutexGuard<'_, ()>> {
        let mut lanes: Vec<usize> = accounts
            .iter()
            .map(|account| self.lane_of(account))
            .collect();
        lanes.sort_unstable();
        lanes.dedup();
        let mut guards = Vec::with_capacity(lanes.len());
        for lane in lanes {
            guards.push(self.lanes[lane].lock().await);
        }
        guards
    }

    fn lane_of(&self, account: &Uuid) -> usize {
        (self.hasher.hash_one(account) % self.lanes.len() as u64) as usize
    }
}
