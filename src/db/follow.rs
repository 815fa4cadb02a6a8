//! Following the server that `target_session_attrs` names among several hosts, as libpq
//! clients do, but for the life of a pool rather than one connection: a failover tool
//! (pg_auto_failover, Patroni) or a person promotes a standby, and the pool finds it.
//!
//! A probe connection of its own asks the current host every `PROBE_INTERVAL` whether it
//! still qualifies. When it does not (refused, reset, in recovery, made read-only), the
//! hosts are probed again in their listed order and the pool opens its new connections
//! on the first that qualifies. Connections opened before that are retired as they come
//! back to the pool: a statement on the old primary could only fail.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use sea_orm::sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use sea_orm::sqlx::{self, Connection as _, Row as _};

use super::hosts::{ServerRole, SessionAttrs};

/// How often the current host is asked whether it still qualifies. A lost primary is
/// noticed within this (plus a probe's timeout when the host stops answering at all).
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// A host that neither answers nor refuses is given up on after this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The hosts a pool may use, in order, and which of them qualifies.
#[derive(Clone)]
pub struct Candidates {
    pub options: Vec<PgConnectOptions>,
    pub labels: Vec<String>,
    pub attrs: SessionAttrs,
}

/// The moment before which a pool's connections are retired: they were opened on a
/// host the pool has left.
#[derive(Debug)]
pub struct RetireMark {
    base: Instant,
    /// Nanoseconds after `base`; 0 while nothing is retired.
    retired_before: AtomicU64,
}

impl Default for RetireMark {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            retired_before: AtomicU64::new(0),
        }
    }
}

impl RetireMark {
    pub fn retire_all_now(&self) {
        let since_base = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.retired_before
            .store(since_base.max(1), Ordering::Relaxed);
    }

    /// Whether a connection opened `age` ago was opened before the mark.
    pub fn is_retired(&self, age: Duration) -> bool {
        let retired_before = self.retired_before.load(Ordering::Relaxed);
        if retired_before == 0 {
            return false;
        }
        let opened = self.base.elapsed().saturating_sub(age);
        opened < Duration::from_nanos(retired_before)
    }
}

/// Why no host could be used.
#[derive(Debug)]
pub struct NoHostQualifies {
    pub attrs: SessionAttrs,
    /// Each host and what it said.
    pub tried: Vec<(String, String)>,
}

impl std::fmt::Display for NoHostQualifies {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "no host qualifies for target_session_attrs={}:",
            self.attrs
        )?;
        for (host, said) in &self.tried {
            write!(formatter, " {host}: {said};")?;
        }
        Ok(())
    }
}

impl std::error::Error for NoHostQualifies {}

/// Probes the hosts in order and returns the first that qualifies, with the connection
/// that probed it.
pub async fn locate(candidates: &Candidates) -> Result<(usize, PgConnection), NoHostQualifies> {
    let mut tried = Vec::new();
    let mut fallback = None;
    for (index, options) in candidates.options.iter().enumerate() {
        let label = candidates.labels[index].clone();
        match probe_new(options).await {
            Ok((connection, role)) if candidates.attrs.accepts(role) => {
                return Ok((index, connection));
            }
            Ok((connection, role)) => {
                if candidates.attrs.accepts_on_second_pass() && fallback.is_none() {
                    fallback = Some((index, connection));
                } else {
                    connection.close().await.ok();
                }
                tried.push((label, describe(role)));
            }
            Err(error) => tried.push((label, error)),
        }
    }
    fallback.ok_or(NoHostQualifies {
        attrs: candidates.attrs,
        tried,
    })
}

fn describe(role: ServerRole) -> String {
    match (role.in_recovery, role.read_only) {
        (true, _) => "in recovery (a standby)".to_owned(),
        (false, true) => "a primary whose sessions are read-only".to_owned(),
        (false, false) => "a read-write primary".to_owned(),
    }
}

async fn probe_new(options: &PgConnectOptions) -> Result<(PgConnection, ServerRole), String> {
    let connect = tokio::time::timeout(PROBE_TIMEOUT, PgConnection::connect_with(options));
    let mut connection = match connect.await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(_) => return Err(format!("no answer in {PROBE_TIMEOUT:?}")),
    };
    let role = probe(&mut connection).await?;
    Ok((connection, role))
}

/// What the server on `connection` is now.
pub async fn probe(connection: &mut PgConnection) -> Result<ServerRole, String> {
    // The simple protocol, one round trip: through a transaction-mode pooler an
    // extended-protocol statement outside a transaction could be split between two
    // server sessions.
    let query =
        sqlx::raw_sql("SELECT pg_is_in_recovery()::text, current_setting('transaction_read_only')")
            .fetch_one(connection);
    match tokio::time::timeout(PROBE_TIMEOUT, query).await {
        Ok(Ok(row)) => Ok(ServerRole {
            in_recovery: row
                .try_get::<String, _>(0)
                .map_err(|error| error.to_string())?
                == "true",
            read_only: row
                .try_get::<String, _>(1)
                .map_err(|error| error.to_string())?
                == "on",
        }),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer in {PROBE_TIMEOUT:?}")),
    }
}

/// Keeps `pool` on a host that qualifies until the pool is closed.
pub fn spawn(
    pool: PgPool,
    candidates: Candidates,
    current: usize,
    probe_connection: PgConnection,
    retire: Arc<RetireMark>,
    switches: Counter,
) {
    tokio::spawn(async move {
        let mut current = current;
        let mut probe_connection = Some(probe_connection);
        let mut without_host_logged = false;
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if pool.is_closed() {
                break;
            }
            let still_qualifies = match probe_connection.as_mut() {
                Some(connection) => probe(connection)
                    .await
                    .is_ok_and(|role| candidates.attrs.accepts(role)),
                None => false,
            };
            if still_qualifies {
                continue;
            }
            probe_connection = None;
            match locate(&candidates).await {
                Ok((found, connection)) => {
                    pool.set_connect_options(candidates.options[found].clone());
                    // Even on the same host: its server restarted, so every pooled
                    // connection to it is broken.
                    retire.retire_all_now();
                    if found != current {
                        switches.inc();
                        tracing::warn!(
                            from = %candidates.labels[current],
                            to = %candidates.labels[found],
                            target_session_attrs = %candidates.attrs,
                            "the database host moved: new connections go to the new host"
                        );
                    } else {
                        tracing::info!(host = %candidates.labels[found], "the database host answers again");
                    }
                    current = found;
                    probe_connection = Some(connection);
                    without_host_logged = false;
                }
                Err(error) => {
                    if !without_host_logged {
                        tracing::warn!(%error, "no database host qualifies; probing every second");
                        without_host_logged = true;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_opened_before_the_mark_are_retired_and_later_ones_kept() {
        let mark = RetireMark::default();
        assert!(!mark.is_retired(Duration::from_secs(3600)));
        std::thread::sleep(Duration::from_millis(20));
        mark.retire_all_now();
        // Opened 10 ms before the mark, and opened just now.
        assert!(mark.is_retired(Duration::from_millis(10)));
        assert!(!mark.is_retired(Duration::ZERO));
    }
}
