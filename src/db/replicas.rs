//! Streaming replicas for reads that may be a bounded time behind the primary.
//!
//! How far behind a replica is comes from WAL positions, not timestamps: every
//! `CHECK_INTERVAL` the primary's current WAL position is sampled with the instant it
//! was read, and each replica's replay position is compared with those samples. A
//! replica that has replayed past the sample taken at `t` holds every transaction that
//! had committed on the primary at `t`, so it is "fresh as of `t`". Reads go to it only
//! while `now - t` is within the bound; a replica that stops replaying (it lost its
//! primary, its replay is paused, it is unreachable) stops being fresh as of anything
//! newer and ages out by itself, whether or not anything is still being written. A
//! replica not streaming from the primary's timeline (one still following a primary
//! that was replaced) is never fresh.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// How often positions are sampled: the freshest a caught-up replica can be judged.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// A replica that does not answer a check in this long counts as not replaying.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// The primary's WAL position at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimarySample {
    pub at: Instant,
    pub timeline: u32,
    pub lsn: u64,
}

/// What a replica reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaPosition {
    /// The timeline it streams, or `None` when it is not streaming.
    pub streaming_timeline: Option<u32>,
    pub replayed_lsn: u64,
}

/// The primary's recent positions, oldest first.
#[derive(Debug, Default)]
pub struct Samples {
    samples: VecDeque<PrimarySample>,
}

impl Samples {
    /// Keeps `sample`, and drops samples older than `keep` (they can only say that a
    /// replica is fresh as of a moment too old to serve anyway).
    pub fn push(&mut self, sample: PrimarySample, keep: Duration) {
        self.samples.push_back(sample);
        while self
            .samples
            .front()
            .is_some_and(|oldest| sample.at.duration_since(oldest.at) > keep)
        {
            self.samples.pop_front();
        }
    }

    /// The latest instant as of which a replica at `position` holds everything the
    /// primary had: the newest sample on its timeline it has replayed past.
    pub fn fresh_as_of(&self, position: ReplicaPosition) -> Option<Instant> {
        let timeline = position.streaming_timeline?;
        self.samples
            .iter()
            .rev()
            .find(|sample| sample.timeline == timeline && sample.lsn <= position.replayed_lsn)
            .map(|sample| sample.at)
    }
}

struct Replica {
    label: String,
    connection: DatabaseConnection,
    /// Nanoseconds after `ReplicaSet::base` of the moment it is fresh as of; 0: never.
    fresh_as_of: AtomicU64,
}

/// The replicas of one instance, and which of them may serve now.
pub struct ReplicaSet {
    base: Instant,
    max_lag: Duration,
    replicas: Vec<Replica>,
    next: AtomicUsize,
}

impl ReplicaSet {
    pub fn new(max_lag: Duration, replicas: Vec<(String, DatabaseConnection)>) -> Self {
        Self {
            base: Instant::now(),
            max_lag,
            replicas: replicas
                .into_iter()
                .map(|(label, connection)| Replica {
                    label,
                    connection,
                    fresh_as_of: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.replicas.iter().map(|replica| replica.label.as_str())
    }

    /// A replica fresh within the bound now, taking turns among those that are.
    pub fn pick(&self) -> Option<(&str, &DatabaseConnection)> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.replicas.len();
        (0..count)
            .map(|offset| (start + offset) % count)
            .find(|&index| self.is_fresh(index, Instant::now()))
            .map(|index| {
                let replica = &self.replicas[index];
                (replica.label.as_str(), &replica.connection)
            })
    }

    fn is_fresh(&self, index: usize, now: Instant) -> bool {
        self.lag(index, now).is_some_and(|lag| lag <= self.max_lag)
    }

    /// How far behind the primary replica `index` may be now; `None` when it was
    /// never known to be fresh.
    fn lag(&self, index: usize, now: Instant) -> Option<Duration> {
        let nanos = self.replicas[index].fresh_as_of.load(Ordering::Relaxed);
        (nanos != 0).then(|| now.saturating_duration_since(self.base + Duration::from_nanos(nanos)))
    }

    fn mark_fresh(&self, index: usize, as_of: Instant) {
        let nanos = u64::try_from(as_of.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        // Replay only moves forward: never mark a replica older than it was known to be.
        self.replicas[index]
            .fresh_as_of
            .fetch_max(nanos, Ordering::Relaxed);
    }

    /// Samples the primary and checks every replica until `primary` is closed; logs and
    /// reports (`on_change`) each replica that starts or stops serving.
    pub fn spawn_monitor(
        self: &Arc<Self>,
        primary: DatabaseConnection,
        on_change: impl Fn(&str, Option<Duration>) + Send + 'static,
    ) {
        let set = Arc::clone(self);
        tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut serving = vec![false; set.replicas.len()];
            let keep = set.max_lag * 2 + CHECK_INTERVAL * 10;
            let mut interval = tokio::time::interval(CHECK_INTERVAL);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if Arc::strong_count(&set) == 1 {
                    break;
                }
                match tokio::time::timeout(CHECK_TIMEOUT, primary_sample(&primary)).await {
                    Ok(Ok(sample)) => samples.push(sample, keep),
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "no WAL position from the primary")
                    }
                    Err(_) => tracing::debug!("the primary gave no WAL position in time"),
                }
                let positions = futures::future::join_all(set.replicas.iter().map(|replica| {
                    tokio::time::timeout(CHECK_TIMEOUT, replica_position(&replica.connection))
                }))
                .await;
                let now = Instant::now();
                for (index, position) in positions.into_iter().enumerate() {
                    if let Ok(Ok(position)) = position
                        && let Some(as_of) = samples.fresh_as_of(position)
                    {
                        set.mark_fresh(index, as_of);
                    }
                    let fresh = set.is_fresh(index, now);
                    if fresh != serving[index] {
                        serving[index] = fresh;
                        on_change(
                            &set.replicas[index].label,
                            fresh.then(|| set.lag(index, now)).flatten(),
                        );
                    }
                }
            }
        });
    }
}

async fn primary_sample(primary: &DatabaseConnection) -> Result<PrimarySample, sea_orm::DbErr> {
    let row = primary
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint AS lsn, \
             pg_walfile_name(pg_current_wal_lsn()) AS walfile",
        ))
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("a WAL position".to_owned()))?;
    let at = Instant::now();
    let lsn: i64 = row.try_get("", "lsn")?;
    let walfile: String = row.try_get("", "walfile")?;
    Ok(PrimarySample {
        at,
        timeline: timeline_of(&walfile).unwrap_or(0),
        lsn: u64::try_from(lsn).unwrap_or(0),
    })
}

/// A WAL file's name begins with its timeline, eight hex digits.
fn timeline_of(walfile: &str) -> Option<u32> {
    u32::from_str_radix(walfile.get(..8)?, 16).ok()
}

async fn replica_position(replica: &DatabaseConnection) -> Result<ReplicaPosition, sea_orm::DbErr> {
    let row = replica
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_is_in_recovery() AS in_recovery, \
             (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint AS replayed, \
             (SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming') AS timeline",
        ))
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("a replay position".to_owned()))?;
    let in_recovery: bool = row.try_get("", "in_recovery")?;
    let replayed: Option<i64> = row.try_get("", "replayed")?;
    let timeline: Option<i32> = row.try_get("", "timeline")?;
    Ok(ReplicaPosition {
        // A server out of recovery is no replica of anything any more.
        streaming_timeline: timeline
            .filter(|_| in_recovery)
            .and_then(|timeline| u32::try_from(timeline).ok()),
        replayed_lsn: replayed
            .and_then(|lsn| u64::try_from(lsn).ok())
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, timeline: u32, lsn: u64) -> PrimarySample {
        PrimarySample { at, timeline, lsn }
    }

    fn streaming(timeline: u32, replayed_lsn: u64) -> ReplicaPosition {
        ReplicaPosition {
            streaming_timeline: Some(timeline),
            replayed_lsn,
        }
    }

    #[test]
    fn a_replica_is_fresh_as_of_the_newest_sample_it_replayed_past() {
        let start = Instant::now();
        let mut samples = Samples::default();
        for (millis, lsn) in [(0, 100), (100, 200), (200, 300)] {
            samples.push(
                sample(start + Duration::from_millis(millis), 1, lsn),
                Duration::from_secs(10),
            );
        }
        assert_eq!(
            samples.fresh_as_of(streaming(1, 250)),
            Some(start + Duration::from_millis(100))
        );
        assert_eq!(
            samples.fresh_as_of(streaming(1, 300)),
            Some(start + Duration::from_millis(200))
        );
        assert_eq!(samples.fresh_as_of(streaming(1, 99)), None);
    }

    #[test]
    fn writes_stopping_do_not_stop_the_clock() {
        // No writes: the primary's position stays put, and a caught-up replica stays
        // fresh as of each new sample.
        let start = Instant::now();
        let mut samples = Samples::default();
        for millis in [0, 100, 200, 300] {
            samples.push(
                sample(start + Duration::from_millis(millis), 1, 500),
                Duration::from_secs(10),
            );
        }
        assert_eq!(
            samples.fresh_as_of(streaming(1, 500)),
            Some(start + Duration::from_millis(300))
        );
    }

    #[test]
    fn a_replica_off_the_primarys_timeline_or_not_streaming_is_never_fresh() {
        let start = Instant::now();
        let mut samples = Samples::default();
        samples.push(sample(start, 2, 100), Duration::from_secs(10));
        assert_eq!(samples.fresh_as_of(streaming(1, 1_000)), None);
        let stopped = ReplicaPosition {
            streaming_timeline: None,
            replayed_lsn: 1_000,
        };
        assert_eq!(samples.fresh_as_of(stopped), None);
    }

    #[test]
    fn old_samples_are_dropped() {
        let start = Instant::now();
        let mut samples = Samples::default();
        samples.push(sample(start, 1, 100), Duration::from_secs(1));
        samples.push(
            sample(start + Duration::from_secs(2), 1, 200),
            Duration::from_secs(1),
        );
        assert_eq!(samples.fresh_as_of(streaming(1, 150)), None);
    }

    #[test]
    fn timelines_come_from_wal_file_names() {
        assert_eq!(timeline_of("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of("0000000A0000000000000003"), Some(10));
        assert_eq!(timeline_of("zz"), None);
    }
}
