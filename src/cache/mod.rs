//! Caches in front of the database: versioned balances in L1 (moka, in process) and L2
//! (Redis, shared), and immutable objects (account settings, final payments, ledger
//! entries) in L1.
//!
//! A cached balance carries the account version it was read at, and a put never
//! replaces a newer version with an older one, at either level. After a payment commits,
//! its new balances are written through to L1 and L2 and published to every instance,
//! whose L1 upgrades its copy. Redis being down never fails a request: L2 is skipped
//! and comes back by itself. The database stays the only judge of correctness; a cache
//! can only serve a balance that was true at its version, for at most the staleness
//! bound (docs/consistency.md).

mod redis_l2;

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use moka::future::Cache;
use moka::ops::compute::Op;
use uuid::Uuid;

use crate::changes::ClientChanges;
use crate::entity::{account, ledger_entry, payment, payment_settlement};
use crate::error::AppResult;
use crate::idempotency::{Fingerprint, IdempotencyKey};
use crate::ids::ClientId;
use crate::metrics::{CacheLevel, CacheName, CacheResult, Metrics};
pub use redis_l2::RedisL2;

/// A balance as of one account state: `version` (its entries) and `hold_seq` (its
/// holds), both only ever growing, so of two copies the one with the larger pair is
/// newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionedBalance {
    pub balance_minor: i64,
    pub version: i64,
    pub hold_seq: i64,
    /// What live holds kept on the account when this copy was made.
    pub pending_minor: i64,
    /// The earliest expiry among those holds (or earlier): from then on `pending_minor`
    /// may count an expired hold, so the copy is no longer served.
    pub pending_until: Option<DateTime<Utc>>,
}

impl VersionedBalance {
    /// A balance with no holds counted.
    pub fn posted(balance_minor: i64, version: i64, hold_seq: i64) -> Self {
        Self {
            balance_minor,
            version,
            hold_seq,
            pending_minor: 0,
            pending_until: None,
        }
    }

    pub fn state(&self) -> (i64, i64) {
        (self.version, self.hold_seq)
    }

    /// Whether this copy may still be served at `now`: no hold it counts has expired.
    pub fn is_fresh_at(&self, now: DateTime<Utc>) -> bool {
        self.pending_until.is_none_or(|until| now < until)
    }
}

/// How long an immutable object stays in L1: it never goes stale, so this only lets
/// rarely read objects make room.
const L1_OBJECT_TTL: Duration = Duration::from_secs(600);

/// Sizes, lifetimes and where L2 is (built from the configuration by `startup`).
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Balances kept in L1; 0 turns the L1 balance cache off.
    pub l1_balance_capacity: u64,
    /// Immutable objects kept in L1 per kind; 0 turns those caches off.
    pub l1_object_capacity: u64,
    /// The longest an L1 balance lives without being refreshed by a write or an
    /// invalidation: the bound on staleness when invalidations are lost.
    pub l1_balance_ttl: Duration,
    /// The longest an L2 balance lives without being refreshed by a write.
    pub l2_balance_ttl: Duration,
    pub redis_url: Option<String>,
    /// A Redis operation slower than this is abandoned and L2 skipped.
    pub redis_timeout: Duration,
    /// Prefix of Redis keys and the invalidation channel: instances that share it share L2.
    pub namespace: String,
}

fn l1<K, V>(capacity: u64, ttl: Duration) -> Option<Cache<K, V>>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    (capacity > 0).then(|| {
        Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build()
    })
}

pub struct Caches {
    balances: Option<Cache<Uuid, VersionedBalance>>,
    accounts: Option<Cache<Uuid, account::Model>>,
    payments: Option<Cache<Uuid, payment::Model>>,
    payment_entries: Option<Cache<Uuid, Arc<Vec<ledger_entry::Model>>>>,
    /// Settlements by the id of the hold they settle.
    settlements: Option<Cache<Uuid, payment_settlement::Model>>,
    entries: Option<Cache<Uuid, ledger_entry::Model>>,
    /// Idempotency keys this instance has seen used: (client, key) -> (fingerprint,
    /// resource). A key's record never changes once committed.
    idempotency_keys: Option<Cache<(Uuid, String), (Fingerprint, Uuid)>>,
    l2: Option<Arc<RedisL2>>,
    /// Write-throughs to L2 running off the answer's path (see `write_through`).
    l2_writes_in_flight: Arc<tokio::sync::Semaphore>,
    /// Told of every commit, so parked long polls of its clients look again.
    changes: Arc<ClientChanges>,
    metrics: Arc<Metrics>,
}

/// How many L2 write-throughs may run in the background at once; past that a writer
/// does its own inline, so a slow Redis slows writers down instead of piling up tasks.
const L2_WRITES_IN_FLIGHT_MAX: usize = 64;

impl Caches {
    pub fn new(
        settings: &CacheSettings,
        changes: Arc<ClientChanges>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let (capacity, ttl) = (settings.l1_object_capacity, L1_OBJECT_TTL);
        let l2 = settings
            .redis_url
            .as_deref()
            .map(|url| RedisL2::new(url, settings, Arc::clone(&metrics)).map(Arc::new))
            .transpose()?;
        Ok(Self {
            balances: l1(settings.l1_balance_capacity, settings.l1_balance_ttl),
            // Settings change only through a recorded change, which every instance
            // hears of on the invalidation channel; a subscriber that reconnects (and so
            // may have missed one) clears them with the balances.
            accounts: l1(capacity, ttl),
            payments: l1(capacity, ttl),
            payment_entries: l1(capacity, ttl),
            settlements: l1(capacity, ttl),
            entries: l1(capacity, ttl),
            idempotency_keys: l1(capacity, ttl),
            l2,
            l2_writes_in_flight: Arc::new(tokio::sync::Semaphore::new(L2_WRITES_IN_FLIGHT_MAX)),
            changes,
            metrics,
        })
    }

    pub fn l2(&self) -> Option<&RedisL2> {
        self.l2.as_deref()
    }

    /// L2 for others that keep what every instance shares in Redis.
    pub fn l2_shared(&self) -> Option<Arc<RedisL2>> {
        self.l2.clone()
    }

    /// Stores `balance` in L1 unless L1 already holds the same or a newer state.
    pub async fn put_l1_balance(&self, account: Uuid, balance: VersionedBalance) {
        let Some(balances) = &self.balances else {
            return;
        };
        balances
            .entry(account)
            .and_compute_with(|existing| async move {
                match existing {
                    Some(entry) if entry.value().state() >= balance.state() => Op::Nop,
                    _ => Op::Put(balance),
                }
            })
            .await;
    }

    /// After a commit of `clients`' data: the new balances go to L1 and L2, and to every
    /// other instance with the news that those clients' data changed (in one message,
    /// balances first, so a long poll woken there reads the new balances).
    pub async fn write_through(&self, balances: &[(Uuid, VersionedBalance)], clients: &[Uuid]) {
        for (account, balance) in balances {
            self.put_l1_balance(*account, *balance).await;
        }
        self.changes.changed(clients.iter().copied());
        let Some(l2) = &self.l2 else {
            return;
        };
        // L2 and the other instances hear of the write after the answer, not before:
        // this instance's L1 already has it (read-your-writes here), other instances
        // learn of it from the invalidation as they always did (after the commit, at
        // an unknown later moment), and L2's compare-and-set keeps it from going back
        // if two write-throughs arrive out of order. The answer saves a Redis round trip.
        match Arc::clone(&self.l2_writes_in_flight).try_acquire_owned() {
            Ok(permit) => {
                let (l2, balances, clients) = (Arc::clone(l2), balances.to_vec(), clients.to_vec());
                tokio::spawn(async move {
                    l2.put_and_publish(&balances, &clients).await;
                    drop(permit);
                });
            }
            Err(_) => l2.put_and_publish(balances, clients).await,
        }
    }

    /// Forgets every L1 balance and account's settings: after missing invalidations (a
    /// lost Redis connection), nothing in L1 can be trusted to be the newest.
    pub fn clear_l1_balances(&self) {
        if let Some(balances) = &self.balances {
            balances.invalidate_all();
        }
        if let Some(accounts) = &self.accounts {
            accounts.invalidate_all();
        }
    }

    /// After an account's settings changed (status, credit limit, external ref): this
    /// instance keeps the new row, every other one drops its copy.
    pub async fn account_changed(&self, row: &account::Model) {
        if let Some(accounts) = &self.accounts {
            accounts.insert(row.id, row.clone()).await;
        }
        if let Some(l2) = &self.l2 {
            l2.publish_settings_changed(row.id).await;
        }
    }

    /// Drops an account's settings from L1 (another instance changed them).
    pub async fn forget_account(&self, account: Uuid) {
        if let Some(accounts) = &self.accounts {
            accounts.invalidate(&account).await;
        }
    }

    /// Balances of `accounts`: L1, then one L2 MGET for the misses, then `load` for the
    /// rest, filling the levels above on the way back.
    pub async fn balances<F, Fut>(
        &self,
        accounts: &[Uuid],
        load: F,
    ) -> AppResult<HashMap<Uuid, VersionedBalance>>
    where
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = AppResult<Vec<(Uuid, VersionedBalance)>>>,
    {
        let (mut found, mut missing) = l1_lookup(self.balances.as_ref(), accounts).await;
        // A copy that counts a hold which has since expired is a miss at every level.
        let now = Utc::now();
        found.retain(|account, balance| {
            let fresh = balance.is_fresh_at(now);
            if !fresh {
                missing.push(*account);
            }
            fresh
        });
        if self.balances.is_some() {
            self.count(
                CacheName::Balance,
                CacheLevel::L1,
                found.len(),
                missing.len(),
            );
        }
        if missing.is_empty() {
            return Ok(found);
        }

        if let Some(l2) = &self.l2
            && let Some(from_l2) = l2.get_balances(&missing).await
        {
            let mut still_missing = Vec::new();
            for (account, balance) in missing.iter().zip(from_l2) {
                match balance.filter(|balance| balance.is_fresh_at(now)) {
                    Some(balance) => {
                        self.put_l1_balance(*account, balance).await;
                        found.insert(*account, balance);
                    }
                    None => still_missing.push(*account),
                }
            }
            self.count(
                CacheName::Balance,
                CacheLevel::L2,
                missing.len() - still_missing.len(),
                still_missing.len(),
            );
            missing = still_missing;
            if missing.is_empty() {
                return Ok(found);
            }
        }

        let loaded = load(missing).await?;
        for (account, balance) in &loaded {
            self.put_l1_balance(*account, *balance).await;
        }
        if let Some(l2) = &self.l2 {
            l2.put_balances(&loaded).await;
        }
        found.extend(loaded);
        Ok(found)
    }

    async fn l1_balance(&self, account: &Uuid) -> Option<VersionedBalance> {
        match &self.balances {
            Some(balances) => balances
                .get(account)
                .await
                .filter(|balance| balance.is_fresh_at(Utc::now())),
            None => None,
        }
    }

    /// An L1 balance without waiting for a DataLoader batch: a hit answers at once, a
    /// miss (not counted here) goes on through the loader.
    pub async fn peek_balance(&self, account: Uuid) -> Option<VersionedBalance> {
        let found = self.l1_balance(&account).await;
        if found.is_some() {
            self.count(CacheName::Balance, CacheLevel::L1, 1, 0);
        }
        found
    }

    /// Account settings from L1 without waiting for a DataLoader batch.
    pub async fn peek_account(&self, account: Uuid) -> Option<account::Model> {
        let found = self.accounts.as_ref()?.get(&account).await;
        if found.is_some() {
            self.count(CacheName::Account, CacheLevel::L1, 1, 0);
        }
        found
    }

    fn count(&self, cache: CacheName, level: CacheLevel, hits: usize, misses: usize) {
        self.metrics
            .cache_lookup(cache, level, CacheResult::Hit, hits);
        self.metrics
            .cache_lookup(cache, level, CacheResult::Miss, misses);
    }

    /// Immutable objects of one kind by id: L1, then `load` for the misses, remembering
    /// what it returns.
    pub async fn objects<V, F, Fut>(&self, ids: &[Uuid], load: F) -> AppResult<HashMap<Uuid, V>>
    where
        V: Immutable,
        F: FnOnce(Vec<Uuid>) -> Fut,
        Fut: Future<Output = AppResult<Vec<(Uuid, V)>>>,
    {
        let Some(cache) = V::l1(self) else {
            return Ok(load(ids.to_vec()).await?.into_iter().collect());
        };
        let (mut found, missing) = l1_lookup(Some(cache), ids).await;
        self.count(V::NAME, CacheLevel::L1, found.len(), missing.len());
        if !missing.is_empty() {
            for (id, value) in load(missing).await? {
                cache.insert(id, value.clone()).await;
                found.insert(id, value);
            }
        }
        Ok(found)
    }

    /// The committed record of `key`, if this instance has seen it.
    pub async fn known_key(
        &self,
        client: ClientId,
        key: &IdempotencyKey,
    ) -> Option<(Fingerprint, Uuid)> {
        let found = self
            .idempotency_keys
            .as_ref()?
            .get(&(client.0, key.as_str().to_owned()))
            .await;
        if self.idempotency_keys.is_some() {
            let hits = usize::from(found.is_some());
            self.count(CacheName::IdempotencyKey, CacheLevel::L1, hits, 1 - hits);
        }
        found
    }

    /// Remembers a key's committed record.
    pub async fn remember_key(
        &self,
        client: ClientId,
        key: &IdempotencyKey,
        fingerprint: &Fingerprint,
        resource_id: Uuid,
    ) {
        if let Some(keys) = &self.idempotency_keys {
            keys.insert(
                (client.0, key.as_str().to_owned()),
                (fingerprint.clone(), resource_id),
            )
            .await;
        }
    }

    /// Remembers a payment just written, and its entries when they are final: a
    /// payment that posted or was declined has all it will ever have; a hold has none
    /// until it is captured.
    pub async fn remember_payment(&self, row: &payment::Model, entries: Vec<ledger_entry::Model>) {
        if let Some(payments) = &self.payments {
            payments.insert(row.id, row.clone()).await;
        }
        if let Some(payment_entries) = &self.payment_entries
            && row.status != payment::StoredStatus::Pending
        {
            payment_entries.insert(row.id, Arc::new(entries)).await;
        }
    }

    /// Remembers a hold's settlement and the entries it wrote: both are final.
    pub async fn remember_settlement(
        &self,
        settlement: &payment_settlement::Model,
        entries: Vec<ledger_entry::Model>,
    ) {
        if let Some(settlements) = &self.settlements {
            settlements
                .insert(settlement.payment_id, settlement.clone())
                .await;
        }
        if let Some(payment_entries) = &self.payment_entries {
            payment_entries
                .insert(settlement.payment_id, Arc::new(entries))
                .await;
        }
    }
}

/// Splits `ids` into what L1 holds and what it misses (everything, without L1).
async fn l1_lookup<V>(cache: Option<&Cache<Uuid, V>>, ids: &[Uuid]) -> (HashMap<Uuid, V>, Vec<Uuid>)
where
    V: Clone + Send + Sync + 'static,
{
    let mut found = HashMap::with_capacity(ids.len());
    let mut missing = Vec::new();
    for id in ids {
        match cache {
            Some(cache) => match cache.get(id).await {
                Some(value) => {
                    found.insert(*id, value);
                }
                None => missing.push(*id),
            },
            None => missing.push(*id),
        }
    }
    (found, missing)
}

/// What L1 keeps by id: payments, entries and a payment's entries never change once
/// committed; account settings (everything but the balance) change only through a
/// recorded change, which `account_changed` writes through and announces.
pub trait Immutable: Clone + Send + Sync + 'static {
    const NAME: CacheName;
    fn l1(caches: &Caches) -> Option<&Cache<Uuid, Self>>;
}

impl Immutable for account::Model {
    const NAME: CacheName = CacheName::Account;
    fn l1(caches: &Caches) -> Option<&Cache<Uuid, Self>> {
        caches.accounts.as_ref()
    }
}

impl Immutable for payment::Model {
    const NAME: CacheName = CacheName::Payment;
    fn l1(caches: &Caches) -> Option<&Cache<Uuid, Self>> {
        caches.payments.as_ref()
    }
}

/// A hold's settlement, by the hold's payment id: at most one, never changed.
impl Immutable for payment_settlement::Model {
    const NAME: CacheName = CacheName::Settlement;
    fn l1(caches: &Caches) -> Option<&Cache<Uuid, Self>> {
        caches.settlements.as_ref()
    }
}

impl Immutable for ledger_entry::Model {
    const NAME: CacheName = CacheName::Entry;
    fn l1(caches: &Caches) -> Option<&Cache<Uuid, Self>> {
        caches.entries.as_ref()
    }
}

/// The entries of a payment, by payment id: final once the payment posted, was declined
/// or its hold was settled (`Ledger::entries_by_payment_ids` never caches a live hold's
/// empty list).
impl Immutable for Arc<Vec<ledger_entry::Model>> {
    const NAME: CacheName = CacheName::PaymentEntries;
    fn l1(caches: &Caches) -> Option<&Cache<Uuid, Self>> {
        caches.payment_entries.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1_only() -> Caches {
        let settings = CacheSettings {
            l1_balance_capacity: 100,
            l1_object_capacity: 100,
            l1_balance_ttl: Duration::from_secs(60),
            l2_balance_ttl: Duration::from_secs(60),
            redis_url: None,
            redis_timeout: Duration::from_millis(100),
            namespace: "test".to_owned(),
        };
        Caches::new(
            &settings,
            Arc::new(ClientChanges::new(1, 1, Default::default())),
            Arc::new(Metrics::new()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_older_version_never_replaces_a_newer_one_in_l1() {
        let caches = l1_only();
        let account = Uuid::now_v7();
        let put = |version, hold_seq| {
            caches.put_l1_balance(
                account,
                VersionedBalance::posted(version * 10, version, hold_seq),
            )
        };
        put(5, 0).await;
        put(3, 9).await;
        assert_eq!(caches.l1_balance(&account).await.unwrap().state(), (5, 0));
        put(5, 1).await;
        assert_eq!(caches.l1_balance(&account).await.unwrap().state(), (5, 1));
        put(5, 0).await;
        put(6, 0).await;
        assert_eq!(
            caches.l1_balance(&account).await,
            Some(VersionedBalance::posted(60, 6, 0))
        );
    }

    #[tokio::test]
    async fn a_copy_counting_an_expired_hold_is_not_served() {
        let caches = l1_only();
        let account = Uuid::now_v7();
        let held = |until| VersionedBalance {
            pending_minor: 500,
            pending_until: Some(until),
            ..VersionedBalance::posted(1000, 1, 1)
        };
        caches
            .put_l1_balance(account, held(Utc::now() + chrono::Duration::minutes(5)))
            .await;
        assert!(caches.peek_balance(account).await.is_some());
        let other = Uuid::now_v7();
        caches
            .put_l1_balance(other, held(Utc::now() - chrono::Duration::seconds(1)))
            .await;
        assert_eq!(caches.peek_balance(other).await, None);
        let loaded = caches
            .balances(&[account, other], |missing| async move {
                assert_eq!(missing, [other], "only the stale copy is loaded again");
                Ok(vec![(other, VersionedBalance::posted(1000, 1, 2))])
            })
            .await
            .unwrap();
        assert_eq!(loaded[&other].pending_minor, 0);
        assert_eq!(loaded[&account].pending_minor, 500);
    }
}
