//! Write transactions: how one begins, the in-process gate in front of it, the retry
//! loop around it, and the one error type a write answers with.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, SqlErr, TransactionTrait,
};
use uuid::Uuid;

use super::write_gate::WriteGate;
use crate::config::WriteIsolation;
use crate::db::{self, Backend};
use crate::error::AppError;
use crate::metrics::Metrics;

/// How many times one write transaction is attempted before the client is told to retry.
const WRITE_ATTEMPTS_MAX: u32 = 12;
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(2);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// Why a write did not take effect for one request. `Ledger::create_once` turns each
/// variant into the client's answer.
#[derive(Debug)]
pub(super) enum WriteError {
    /// Another request committed this idempotency key first: replay its outcome.
    KeyTaken,
    /// The request cannot be carried out (unknown account, currency mismatch); nothing
    /// was stored for it, but its key may still name an earlier request.
    Invalid(AppError),
    /// The request failed and nothing was stored (retries exhausted, a bug).
    Failed(AppError),
    /// A row lock was not granted within `lock_timeout`: nothing was stored. A batch
    /// that meets it runs its payments one by one, so only those on the locked account
    /// answer RETRY_LATER.
    Blocked,
    /// Every attempt lost to a concurrent transaction (serialization failures or
    /// deadlocks; SQLite: a busy database): nothing was stored. Contention, not a
    /// fault: a batch that meets it runs its payments one per transaction, which
    /// conflict less than one large one; a single write answers RETRY_LATER.
    Contended,
    /// A database error inside an attempt; `Writer::run` retries the retryable ones
    /// and turns the rest into `Failed` or `Blocked`, so it never leaves the write path.
    Db(DbErr),
    /// A batch whose jobs depend on one another in a way a key owned by another request
    /// changed (see `batch::decide_and_claim`): nothing was written; its jobs run again one per
    /// transaction.
    Tangled,
    /// The COMMIT was sent and its answer lost with the connection: the attempt may
    /// have committed. `Writer::run` runs the write again, whose key claim finds out.
    CommitUnanswered(DbErr),
}

impl From<DbErr> for WriteError {
    fn from(error: DbErr) -> Self {
        Self::Db(error)
    }
}

impl From<AppError> for WriteError {
    fn from(error: AppError) -> Self {
        Self::Failed(error)
    }
}

impl WriteError {
    /// The error a client sees when this write was the request's last word.
    pub(super) fn into_app_error(self) -> AppError {
        match self {
            Self::KeyTaken => AppError::internal(anyhow::anyhow!(
                "an idempotency key was taken where no key was claimed"
            )),
            Self::Tangled => AppError::internal(anyhow::anyhow!(
                "a batch of one job depended on another job"
            )),
            Self::Invalid(error) | Self::Failed(error) => error,
            Self::Blocked | Self::Contended => AppError::RetryLater,
            Self::Db(error) => error.into(),
            Self::CommitUnanswered(_) => AppError::OutcomeUnknown,
        }
    }
}

/// Commits, telling a COMMIT the database refused (nothing happened) from one whose
/// answer never came (it may have committed).
///
/// On PostgreSQL the COMMIT is sent as `COMMIT AND CHAIN`, and a refused one is followed
/// by `BEGIN`: sqlx counts a transaction as open until its COMMIT succeeds, so after a
/// refused COMMIT (a serialization failure is one) it would send ROLLBACK to a session
/// with no transaction, which PostgreSQL answers with the warning "there is no
/// transaction in progress", logged on both sides for what is a routine rerun. Either
/// way a transaction is open when this one is dropped, and its ROLLBACK ends an empty
/// transaction; it travels with the ping the pool sends when the connection comes back,
/// so a commit costs no more round trips than before.
pub(super) async fn commit(transaction: DatabaseTransaction) -> Result<(), WriteError> {
    if Backend::of(&transaction) == Backend::Sqlite {
        return transaction.commit().await.map_err(commit_error);
    }
    match transaction.execute_unprepared("COMMIT AND CHAIN").await {
        Ok(_) => Ok(()),
        Err(error) => {
            if db::has_database_answer(&error) {
                // The refused COMMIT ended the transaction on the server.
                if let Err(begin) = transaction.execute_unprepared("BEGIN").await {
                    tracing::debug!(error = %begin, "no transaction reopened after a refused COMMIT");
                }
            }
            Err(commit_error(error))
        }
    }
}

fn commit_error(error: DbErr) -> WriteError {
    if db::has_database_answer(&error) {
        WriteError::Db(error)
    } else {
        WriteError::CommitUnanswered(error)
    }
}

pub(super) fn is_unique_violation(error: &DbErr) -> bool {
    matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Opens write transactions for one database, one at a time per account lane.
pub(super) struct Writer {
    db: DatabaseConnection,
    backend: Backend,
    isolation: WriteIsolation,
    gate: WriteGate,
    metrics: Arc<Metrics>,
}

impl Writer {
    pub(super) fn new(
        db: DatabaseConnection,
        isolation: WriteIsolation,
        metrics: Arc<Metrics>,
    ) -> Self {
        let backend = Backend::of(&db);
        Self {
            gate: WriteGate::new(backend.write_lanes()),
            db,
            backend,
            isolation,
            metrics,
        }
    }

    pub(super) fn backend(&self) -> Backend {
        self.backend
    }

    /// The write pool, for a batch sent as one statement outside any transaction.
    pub(super) fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Waits for the gate lanes of `accounts` (sorted, distinct), then runs `write`
    /// once: a write that is never rerun here (its caller falls back instead).
    pub(super) async fn run_once<T>(&self, accounts: &[Uuid], write: impl Future<Output = T>) -> T {
        let _lanes = self.gate.enter(accounts).await;
        write.await
    }

    pub(super) async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.db
            .begin_with_options(self.backend.write_transaction_options(self.isolation))
            .await
    }

    /// Waits for the gate lanes of `accounts` (sorted, distinct), then runs `attempt`
    /// (one whole transaction) again while it fails in a retryable way, with jittered
    /// backoff, a bounded number of times.
    ///
    /// Running a write again is always safe, even after a COMMIT whose answer was lost:
    /// every write claims its idempotency key in its own transaction, so a rerun of a
    /// write that did commit finds its key taken by itself (`Ledger::create_once`
    /// answers it as this request's own, not as a replay). Until a rerun settles such a
    /// write, no failure may say "nothing happened": it says OUTCOME_UNKNOWN.
    pub(super) async fn run<T, F, Fut>(
        &self,
        accounts: &[Uuid],
        attempt: F,
    ) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
    {
        self.run_from(accounts, false, attempt).await
    }

    /// Like `run`, for a write that an earlier try outside this loop may have committed
    /// (a statement whose answer was lost with its connection): its key claims settle
    /// it, and until one does, no failure may say "nothing happened".
    pub(super) async fn settle<T, F, Fut>(
        &self,
        accounts: &[Uuid],
        attempt: F,
    ) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
    {
        self.run_from(accounts, true, attempt).await
    }

    async fn run_from<T, F, Fut>(
        &self,
        accounts: &[Uuid],
        mut may_have_committed: bool,
        mut attempt: F,
    ) -> Result<T, WriteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, WriteError>>,
    {
        let _lanes = self.gate.enter(accounts).await;
        let mut attempt_number = 1;
        let failed = loop {
            let error = match attempt().await {
                Err(WriteError::CommitUnanswered(error)) => {
                    tracing::warn!(error = %error, "a COMMIT got no answer; running the write again to learn its outcome");
                    may_have_committed = true;
                    error
                }
                Err(WriteError::Db(error))
                    if self.backend.is_retryable(&error)
                        || db::is_connection_lost(&error)
                        || db::is_read_only_refusal(&error) =>
                {
                    error
                }
                Err(WriteError::Db(error)) if self.backend.is_lock_timeout(&error) => {
                    tracing::warn!(error = %error, "a row lock was not granted in time");
                    break WriteError::Blocked;
                }
                Err(WriteError::Db(error)) => break WriteError::Failed(error.into()),
                Err(failed @ (WriteError::Failed(_) | WriteError::Blocked)) => break failed,
                settled => return settled,
            };
            if attempt_number >= WRITE_ATTEMPTS_MAX {
                self.metrics.write_retries_exhausted.inc();
                if self.backend.is_retryable(&error) {
                    // The caller decides whether this is the request's last word.
                    tracing::info!(error = %error, attempts = attempt_number, "write retries exhausted on conflicts");
                    break WriteError::Contended;
                }
                tracing::warn!(error = %error, attempts = attempt_number, "write retries exhausted");
                break WriteError::Failed(AppError::RetryLater);
            }
            self.metrics.write_retries.inc();
            tracing::debug!(error = %error, attempt = attempt_number, "retrying write");
            tokio::time::sleep(retry_backoff(attempt_number)).await;
            attempt_number += 1;
        };
        if may_have_committed {
            tracing::warn!(error = ?failed, "a write whose COMMIT got no answer could not be run again");
            return Err(WriteError::Failed(AppError::OutcomeUnknown));
        }
        Err(failed)
    }
}

/// Exponential backoff with full jitter, so retrying requests spread out.
fn retry_backoff(attempt_number: u32) -> Duration {
    let ceiling = RETRY_BACKOFF_BASE
        .saturating_mul(1 << attempt_number.min(16))
        .min(RETRY_BACKOFF_MAX);
    let ceiling_micros = u64::try_from(ceiling.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_micros(rand::rng().random_range(0..ceiling_micros))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{ConnectOptions, Database};

    /// A file database on which every `BEGIN IMMEDIATE` fails at once while `holder`
    /// keeps its write lock: a real busy error, the SQLite form of losing to a
    /// concurrent writer.
    async fn locked_database() -> (tempfile::TempDir, DatabaseConnection, DatabaseConnection) {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let url = format!(
            "sqlite://{}?mode=rwc",
            directory.path().join("ledger.db").display()
        );
        let holder = Database::connect(url.as_str()).await.expect("the holder");
        holder
            .execute_unprepared("CREATE TABLE t (x INTEGER)")
            .await
            .expect("a table");
        let mut options = ConnectOptions::new(url);
        options
            .max_connections(1)
            .map_sqlx_sqlite_opts(|options| options.busy_timeout(Duration::ZERO));
        let writer = Database::connect(options).await.expect("the writer");
        (directory, holder, writer)
    }

    /// Runs `sql` through `Writer::run` on `db`; its outcome and how many attempts it took.
    async fn run_counting(db: &DatabaseConnection, sql: &str) -> (Result<(), WriteError>, u32) {
        let writer = Writer::new(
            db.clone(),
            WriteIsolation::Serializable,
            Arc::new(Metrics::new()),
        );
        let mut attempts = 0;
        let outcome = writer
            .run(&[Uuid::nil()], || {
                attempts += 1;
                let db = db.clone();
                async move {
                    db.execute_unprepared(sql).await?;
                    Ok(())
                }
            })
            .await;
        (outcome, attempts)
    }

    #[tokio::test]
    async fn losing_every_attempt_to_other_writers_is_contention_not_a_failure() {
        let (_directory, holder, db) = locked_database().await;
        let lock = holder.begin().await.expect("a transaction");
        lock.execute_unprepared("INSERT INTO t VALUES (1)")
            .await
            .expect("the write lock");
        let (outcome, attempts) = run_counting(&db, "INSERT INTO t VALUES (2)").await;
        assert!(matches!(outcome, Err(WriteError::Contended)), "{outcome:?}");
        assert_eq!(attempts, WRITE_ATTEMPTS_MAX);
        assert_eq!(WriteError::Contended.into_app_error().code(), "RETRY_LATER");
        lock.rollback().await.expect("the lock released");
    }

    #[tokio::test]
    async fn an_error_that_no_rerun_can_fix_fails_at_once() {
        let (_directory, _holder, db) = locked_database().await;
        let (outcome, attempts) = run_counting(&db, "INSERT INTO no_such_table VALUES (1)").await;
        assert!(matches!(outcome, Err(WriteError::Failed(_))), "{outcome:?}");
        assert_eq!(attempts, 1);
    }
}
