//! L2: balances in Redis, shared by every instance, and the invalidation channel.
//!
//! Every operation has a short timeout. A failure opens a one-second window in which L2
//! is skipped altogether, so a dead Redis costs requests nothing; after it, the next
//! operation tries again and L2 comes back by itself. Warnings are rate-limited.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use uuid::Uuid;

use crate::cache::{CacheSettings, Caches, VersionedBalance};
use crate::metrics::Metrics;

/// Sets KEYS[1] to ARGV[3] (an encoded balance, which starts "version:hold_seq:") with
/// a TTL, unless it already holds the same or a newer state (version, then hold_seq).
/// One atomic step in Redis: no GET-then-SET race between instances.
const PUT_IF_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local version, hold_seq = string.match(current, '^(-?%d+):(-?%d+):')
  version = tonumber(version)
  hold_seq = tonumber(hold_seq)
  local new_version = tonumber(ARGV[1])
  local new_hold_seq = tonumber(ARGV[2])
  if version and hold_seq and (version > new_version
      or (version == new_version and hold_seq >= new_hold_seq)) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
";

/// Registers a persisted document: KEYS[1] (the document) set to ARGV[2] for ARGV[3]
/// seconds, its hash ARGV[1] added to the index KEYS[2] at time ARGV[4]; past ARGV[5]
/// entries the oldest registrations (keys ARGV[6] .. hash) go. One atomic step.
const REGISTER_DOCUMENT: &str = r"
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #oldest, 2 do
    redis.call('DEL', ARGV[6] .. oldest[i])
  end
end
return 1
";

const FAILURE_BACKOFF: Duration = Duration::from_secs(1);
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

pub struct RedisL2 {
    client: redis::Client,
    connection: ConnectionManager,
    namespace: String,
    ttl_milliseconds: u64,
    timeout: Duration,
    /// This instance's id, so it can ignore its own invalidations.
    instance: Uuid,
    skip_until: Mutex<Option<Instant>>,
    last_warning: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

/// "version:hold_seq:balance:pending:until", `until` in microseconds or empty.
fn encode(balance: VersionedBalance) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        balance.version,
        balance.hold_seq,
        balance.balance_minor,
        balance.pending_minor,
        balance
            .pending_until
            .map(|until| until.timestamp_micros().to_string())
            .unwrap_or_default()
    )
}

fn decode(text: &str) -> Option<VersionedBalance> {
    let mut fields = text.split(':');
    let mut number = || fields.next()?.parse::<i64>().ok();
    let (version, hold_seq, balance_minor, pending_minor) =
        (number()?, number()?, number()?, number()?);
    let pending_until = match fields.next()? {
        "" => None,
        micros => Some(chrono::DateTime::from_timestamp_micros(
            micros.parse().ok()?,
        )?),
    };
    if fields.next().is_some() {
        return None;
    }
    Some(VersionedBalance {
        balance_minor,
        version,
        hold_seq,
        pending_minor,
        pending_until,
    })
}

impl RedisL2 {
    pub fn new(url: &str, settings: &CacheSettings, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.redis_timeout))
            .set_response_timeout(Some(settings.redis_timeout))
            .set_number_of_retries(1);
        // Lazy: the server starts even while Redis is down.
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        Ok(Self {
            client,
            connection,
            namespace: settings.namespace.clone(),
            ttl_milliseconds: u64::try_from(settings.l2_balance_ttl.as_millis())
                .unwrap_or(u64::MAX),
            timeout: settings.redis_timeout,
            instance: Uuid::new_v4(),
            skip_until: Mutex::new(None),
            last_warning: Mutex::new(None),
            metrics,
        })
    }

    fn key(&self, account: Uuid) -> String {
        format!("{}:balance:{}", self.namespace, account.simple())
    }

    fn document_key_prefix(&self) -> String {
        format!("{}:document:", self.namespace)
    }

    /// A persisted document registered by any instance.
    pub async fn get_document(&self, hash: &str) -> Option<String> {
        let key = format!("{}{hash}", self.document_key_prefix());
        self.call("GET document", |mut connection| async move {
            redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await
        })
        .await
        .flatten()
    }

    /// Registers a persisted document for `ttl_seconds`, keeping at most `most`.
    pub async fn put_document(&self, hash: &str, text: &str, ttl_seconds: u64, most: u64) {
        let prefix = self.document_key_prefix();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        let mut invocation = redis::cmd("EVAL");
        invocation
            .arg(REGISTER_DOCUMENT)
            .arg(2)
            .arg(format!("{prefix}{hash}"))
            .arg(format!("{}:documents", self.namespace))
            .arg(hash)
            .arg(text)
            .arg(ttl_seconds)
            .arg(now.to_string())
            .arg(most)
            .arg(prefix);
        let _: Option<i64> = self
            .call("register document", |mut connection| async move {
                invocation.query_async(&mut connection).await
            })
            .await;
    }

    fn channel(&self) -> String {
        format!("{}:balance-invalidations", self.namespace)
    }

    fn is_skipped(&self) -> bool {
        let skip_until = self
            .skip_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        skip_until.is_some_and(|until| Instant::now() < until)
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        self.metrics.cache_l2_errors.inc();
        let now = Instant::now();
        *self
            .skip_until
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(now + FAILURE_BACKOFF);
        warn_rate_limited(&self.last_warning, now, what, error);
    }

    /// Runs one Redis call with the timeout; `None` when L2 is skipped or failed.
    async fn call<T, Fut>(
        &self,
        what: &str,
        call: impl FnOnce(ConnectionManager) -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.is_skipped() {
            return None;
        }
        match tokio::time::timeout(self.timeout, call(self.connection.clone())).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(error)) => {
                self.failed(what, &error);
                None
            }
            Err(_) => {
                self.failed(what, &"timed out");
                None
            }
        }
    }

    /// One MGET for all `accounts`; `None` when L2 is unavailable.
    pub async fn get_balances(&self, accounts: &[Uuid]) -> Option<Vec<Option<VersionedBalance>>> {
        let keys: Vec<String> = accounts.iter().map(|account| self.key(*account)).collect();
        let values: Vec<Option<String>> = self
            .call("MGET", |mut connection| async move {
                redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Some(
            values
                .iter()
                .map(|value| value.as_deref().and_then(decode))
                .collect(),
        )
    }

    fn put_pipeline(&self, balances: &[(Uuid, VersionedBalance)]) -> redis::Pipeline {
        let mut pipeline = redis::pipe();
        for (account, balance) in balances {
            pipeline
                .cmd("EVAL")
                .arg(PUT_IF_NEWER)
                .arg(1)
                .arg(self.key(*account))
                .arg(balance.version)
                .arg(balance.hold_seq)
                .arg(encode(*balance))
                .arg(self.ttl_milliseconds)
                .ignore();
        }
        pipeline
    }

    /// Compare-and-set each balance, all in one round trip.
    pub async fn put_balances(&self, balances: &[(Uuid, VersionedBalance)]) {
        if balances.is_empty() {
            return;
        }
        let pipeline = self.put_pipeline(balances);
        let _: Option<()> = self
            .call("put balances", |mut connection| async move {
                pipeline.query_async(&mut connection).await
            })
            .await;
    }

    /// After a commit: compare-and-set each balance and tell every instance about them
    /// and about the clients whose data changed, so their L1 upgrades its copies and
    /// their long polls look again; one round trip.
    pub async fn put_and_publish(&self, balances: &[(Uuid, VersionedBalance)], clients: &[Uuid]) {
        if balances.is_empty() && clients.is_empty() {
            return;
        }
        let mut pipeline = self.put_pipeline(balances);
        pipeline
            .cmd("PUBLISH")
            .arg(self.channel())
            .arg(encode_invalidation(self.instance, balances, clients))
            .ignore();
        let published: Option<()> = self
            .call("put and publish balances", |mut connection| async move {
                pipeline.query_async(&mut connection).await
            })
            .await;
        if published.is_some() {
            self.metrics
                .invalidations_sent
                .inc_by(balances.len() as u64);
        }
    }

    /// Tells every instance that `account`'s settings changed.
    pub async fn publish_settings_changed(&self, account: Uuid) {
        let message = format!(
            "{} {}:{SETTINGS_CHANGED}",
            self.instance.simple(),
            account.simple()
        );
        let channel = self.channel();
        let published: Option<()> = self
            .call("publish settings", |mut connection| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(message)
                    .query_async(&mut connection)
                    .await
            })
            .await;
        if published.is_some() {
            self.metrics.invalidations_sent.inc();
        }
    }

    /// Follows the invalidation channel until `caches` is dropped, reconnecting after
    /// any failure. After a reconnect L1 balances are cleared: messages sent while
    /// disconnected are lost.
    pub fn spawn_subscriber(caches: &Arc<Caches>) -> Option<tokio::task::JoinHandle<()>> {
        let l2 = caches.l2()?;
        let (client, channel, instance) = (l2.client.clone(), l2.channel(), l2.instance);
        let caches: Weak<Caches> = Arc::downgrade(caches);
        Some(tokio::spawn(async move {
            let last_warning = Mutex::new(None);
            let mut backoff = Duration::from_millis(100);
            let mut was_connected = false;
            loop {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    redis::RedisResult::Ok(pubsub)
                };
                match subscribed.await {
                    Ok(mut pubsub) => {
                        let Some(live) = caches.upgrade() else { return };
                        if was_connected {
                            live.clear_l1_balances();
                            live.changes.everyone_changed();
                            tracing::info!("reconnected to the Redis invalidation channel");
                        }
                        drop(live);
                        was_connected = true;
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Some(live) = caches.upgrade() else { return };
                            let Ok(payload) = message.get_payload::<String>() else {
                                continue;
                            };
                            apply_invalidation(&live, instance, &payload).await;
                        }
                        warn_rate_limited(
                            &last_warning,
                            Instant::now(),
                            "invalidation channel",
                            &"connection lost",
                        );
                    }
                    Err(error) => {
                        if caches.upgrade().is_none() {
                            return;
                        }
                        warn_rate_limited(&last_warning, Instant::now(), "subscribe", &error);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }))
    }
}

fn warn_rate_limited(
    last_warning: &Mutex<Option<Instant>>,
    now: Instant,
    what: &str,
    error: &dyn std::fmt::Display,
) {
    let mut last = last_warning
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.is_none_or(|at| now.duration_since(at) >= WARNING_INTERVAL) {
        *last = Some(now);
        tracing::warn!(error = %error, "Redis {what} failed; serving without L2 until it is back");
    }
}

/// "<instance> <account>:<encoded balance> … client:<client> …"
/// In place of a balance in an invalidation: the account's settings changed, so every
/// instance drops its copy (instances from before this read it as an unknown balance and
/// skip it; their copy lives out its TTL).
const SETTINGS_CHANGED: &str = "settings";

/// In place of an account: a client whose data changed (instances from before long
/// polls read it as an unknown account and skip it).
const CLIENT: &str = "client";

fn encode_invalidation(
    instance: Uuid,
    balances: &[(Uuid, VersionedBalance)],
    clients: &[Uuid],
) -> String {
    let mut message = instance.simple().to_string();
    for (account, balance) in balances {
        message.push(' ');
        message.push_str(&format!("{}:{}", account.simple(), encode(*balance)));
    }
    for client in clients {
        message.push_str(&format!(" {CLIENT}:{}", client.simple()));
    }
    message
}

async fn apply_invalidation(caches: &Caches, own_instance: Uuid, payload: &str) {
    let mut parts = payload.split(' ');
    let Some(sender) = parts.next().and_then(|text| Uuid::try_parse(text).ok()) else {
        return;
    };
    if sender == own_instance {
        return;
    }
    let mut clients = Vec::new();
    for part in parts {
        let Some((account, balance)) = part.split_once(':') else {
            continue;
        };
        if account == CLIENT {
            clients.extend(Uuid::try_parse(balance).ok());
            continue;
        }
        let Ok(account) = Uuid::try_parse(account) else {
            continue;
        };
        if balance == SETTINGS_CHANGED {
            caches.metrics.invalidations_received.inc();
            caches.forget_account(account).await;
            continue;
        }
        let Some(balance) = decode(balance) else {
            continue;
        };
        caches.metrics.invalidations_received.inc();
        caches.put_l1_balance(account, balance).await;
    }
    // After the balances: a poll woken now reads them.
    caches.changes.changed(clients);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_round_trip() {
        let instance = Uuid::new_v4();
        let account = Uuid::now_v7();
        let balance = VersionedBalance {
            pending_minor: 300,
            pending_until: chrono::DateTime::from_timestamp_micros(1_800_000_000_123_456),
            ..VersionedBalance::posted(-1250, 42, 7)
        };
        let client = Uuid::now_v7();
        let message = encode_invalidation(instance, &[(account, balance)], &[client]);
        let mut parts = message.split(' ');
        assert_eq!(parts.next(), Some(instance.simple().to_string().as_str()));
        let (id, encoded) = parts.next().unwrap().split_once(':').unwrap();
        assert_eq!(Uuid::try_parse(id).unwrap(), account);
        assert_eq!(decode(encoded), Some(balance));
        let (marker, id) = parts.next().unwrap().split_once(':').unwrap();
        assert_eq!((marker, Uuid::try_parse(id).unwrap()), (CLIENT, client));
        assert_eq!(parts.next(), None);
        assert_eq!(decode("garbage"), None);
        // The format before holds: read as a miss, never as a wrong balance.
        assert_eq!(decode("42:-1250"), None);
        let unheld = VersionedBalance::posted(5, 1, 0);
        assert_eq!(decode(&encode(unheld)), Some(unheld));
    }
}
