//! Which clients' data changed: what wakes a parked long poll.
//!
//! A long poll (`http::conditional`) watches its client before it runs its query, so a
//! change committed between that run and the wait is never missed, then parks until
//! the client's data changes, its wait ends, or the server shuts down. The ledger
//! service reports every commit of a client here through `Caches::write_through`, and
//! the caches' Redis channel carries the same report to every other instance. Parked
//! polls hold no database connection and no admission permit, only this watch; they
//! are bounded per client and per instance.
//!
//! A wake is only a hint to look again: a poll that wakes runs its query and compares,
//! and one whose wake was lost (Redis down, another instance without Redis) still runs
//! its query when its wait ends, so it never answers "unchanged" for data that changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use uuid::Uuid;

use crate::ids::ClientId;

pub struct ClientChanges {
    watched: Mutex<HashMap<Uuid, Watched>>,
    parked: AtomicUsize,
    per_client_max: usize,
    instance_max: usize,
    closing: AtomicBool,
    /// Bumped on shutdown and when every client may have changed (a lost channel).
    everyone: watch::Sender<u64>,
    /// `ledger_long_polls_parked`.
    parked_gauge: Gauge,
}

/// One client's watchers and how many of them are parked.
struct Watched {
    changes: watch::Sender<u64>,
    parked: usize,
}

/// Why a poll may not park: it is answered 429 RETRY_LATER instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkRefusal {
    /// The client already has its most parked polls on this instance.
    Client,
    /// This instance already holds its most parked polls.
    Instance,
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The client's data may have changed: look again.
    Changed,
    /// The server is shutting down: answer now.
    Closing,
}

impl ClientChanges {
    pub fn new(per_client_max: usize, instance_max: usize, parked_gauge: Gauge) -> Self {
        Self {
            parked_gauge,
            watched: Mutex::default(),
            parked: AtomicUsize::new(0),
            per_client_max,
            instance_max,
            closing: AtomicBool::new(false),
            everyone: watch::Sender::new(0),
        }
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Watched>> {
        self.watched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts watching `client`: any change reported from now on wakes the watch once
    /// it is parked, even one reported before it parks.
    pub fn watch(self: &Arc<Self>, client: ClientId) -> Watch {
        let changes = self
            .watched()
            .entry(client.0)
            .or_insert_with(|| Watched {
                changes: watch::Sender::new(0),
                parked: 0,
            })
            .changes
            .subscribe();
        Watch {
            owner: Arc::clone(self),
            client,
            changes,
            everyone: self.everyone.subscribe(),
            parked: false,
        }
    }

    /// The data of `clients` changed (a commit, here or on another instance).
    pub fn changed(&self, clients: impl IntoIterator<Item = Uuid>) {
        let watched = self.watched();
        if watched.is_empty() {
            return;
        }
        for client in clients {
            if let Some(entry) = watched.get(&client) {
                entry.changes.send_modify(|generation| *generation += 1);
            }
        }
    }

    /// Any client's data may have changed unseen (the channel that reports other
    /// instances' commits was lost): every parked poll looks again.
    pub fn everyone_changed(&self) {
        self.everyone.send_modify(|generation| *generation += 1);
    }

    /// Shutdown: every parked poll is answered now, and none parks from here on.
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.everyone_changed();
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Polls parked on this instance now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }
}

/// A long poll's watch of its client; parked, it counts against the bounds until it
/// is dropped.
pub struct Watch {
    owner: Arc<ClientChanges>,
    client: ClientId,
    changes: watch::Receiver<u64>,
    everyone: watch::Receiver<u64>,
    parked: bool,
}

impl Watch {
    /// Counts this watch as a parked poll, unless a bound is reached.
    pub fn park(&mut self) -> Result<(), ParkRefusal> {
        if self.parked {
            return Ok(());
        }
        let owner = &self.owner;
        let mut watched = owner.watched();
        let Some(entry) = watched.get_mut(&self.client.0) else {
            return Err(ParkRefusal::Instance);
        };
        if entry.parked >= owner.per_client_max {
            return Err(ParkRefusal::Client);
        }
        // Under the map's lock, so two polls cannot both take the last place.
        if owner.parked.load(Ordering::Relaxed) >= owner.instance_max {
            return Err(ParkRefusal::Instance);
        }
        owner.parked.fetch_add(1, Ordering::Relaxed);
        owner.parked_gauge.inc();
        entry.parked += 1;
        self.parked = true;
        Ok(())
    }

    /// Marks every change reported so far as seen: the caller is about to look.
    pub fn mark_seen(&mut self) {
        self.changes.borrow_and_update();
        self.everyone.borrow_and_update();
    }

    /// Waits for a change reported since the last `mark_seen`, or for shutdown.
    pub async fn next(&mut self) -> Wake {
        if self.owner.is_closing() {
            return Wake::Closing;
        }
        tokio::select! {
            _ = self.changes.changed() => Wake::Changed,
            _ = self.everyone.changed() => {
                if self.owner.is_closing() { Wake::Closing } else { Wake::Changed }
            }
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = self.owner.watched();
        if self.parked {
            self.owner.parked.fetch_sub(1, Ordering::Relaxed);
            self.owner.parked_gauge.dec();
        }
        if let Some(entry) = watched.get_mut(&self.client.0) {
            if self.parked {
                entry.parked -= 1;
            }
            // This watch's receiver is still alive here: it is the last one when the
            // sender counts one.
            if entry.changes.receiver_count() <= 1 {
                watched.remove(&self.client.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn client() -> ClientId {
        ClientId(Uuid::now_v7())
    }

    async fn woken(watch: &mut Watch) -> Option<Wake> {
        tokio::time::timeout(Duration::from_millis(50), watch.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_change_wakes_only_its_clients_watches() {
        let changes = Arc::new(ClientChanges::new(8, 8, Gauge::default()));
        let (alice, bob) = (client(), client());
        let mut of_alice = changes.watch(alice);
        let mut of_bob = changes.watch(bob);
        of_alice.mark_seen();
        of_bob.mark_seen();
        changes.changed([alice.0]);
        assert_eq!(woken(&mut of_alice).await, Some(Wake::Changed));
        assert_eq!(woken(&mut of_bob).await, None);
        // Seen once, it does not wake again.
        of_alice.mark_seen();
        assert_eq!(woken(&mut of_alice).await, None);
    }

    #[tokio::test]
    async fn a_change_between_look_and_wait_is_not_missed() {
        let changes = Arc::new(ClientChanges::new(8, 8, Gauge::default()));
        let alice = client();
        let mut watch = changes.watch(alice);
        watch.mark_seen();
        // The query ran; the change lands before the poll waits.
        changes.changed([alice.0]);
        watch.park().unwrap();
        assert_eq!(woken(&mut watch).await, Some(Wake::Changed));
    }

    #[tokio::test]
    async fn parked_polls_are_bounded_per_client_and_per_instance() {
        let changes = Arc::new(ClientChanges::new(2, 3, Gauge::default()));
        let (alice, bob) = (client(), client());
        let mut alices: Vec<Watch> = (0..3).map(|_| changes.watch(alice)).collect();
        assert_eq!(alices[0].park(), Ok(()));
        assert_eq!(alices[1].park(), Ok(()));
        assert_eq!(alices[2].park(), Err(ParkRefusal::Client));
        let mut bobs: Vec<Watch> = (0..2).map(|_| changes.watch(bob)).collect();
        assert_eq!(bobs[0].park(), Ok(()));
        assert_eq!(bobs[1].park(), Err(ParkRefusal::Instance));
        assert_eq!(changes.parked(), 3);
        // A poll that leaves makes room.
        alices.remove(0);
        assert_eq!(changes.parked(), 2);
        assert_eq!(bobs[1].park(), Ok(()));
        drop(alices);
        drop(bobs);
        assert_eq!(changes.parked(), 0);
        assert!(changes.watched().is_empty(), "nothing is left behind");
    }

    #[tokio::test]
    async fn shutdown_and_a_lost_channel_wake_everyone() {
        let changes = Arc::new(ClientChanges::new(8, 8, Gauge::default()));
        let mut watch = changes.watch(client());
        watch.mark_seen();
        changes.everyone_changed();
        assert_eq!(woken(&mut watch).await, Some(Wake::Changed));
        watch.mark_seen();
        changes.close();
        assert_eq!(woken(&mut watch).await, Some(Wake::Closing));
        assert!(changes.is_closing());
    }
}
