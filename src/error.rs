//! The one error type of the server and its single mapping to GraphQL error codes.
//!
//! Every failure a client can see is an `AppError`; its variant decides
//! `extensions.code`, and each code says one thing about a write: nothing happened
//! (everything but the two below), its outcome is unknown (`OutcomeUnknown`,
//! `Timeout`), or a bug (`Internal`, with a generic message: its cause is logged once,
//! here, never sent to the client).

use std::sync::Arc;

use async_graphql::ErrorExtensions;
use sea_orm::DbErr;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadUserInput(String),
    #[error("{0}")]
    CurrencyMismatch(String),
    #[error(
        "idempotency key was already used with a different request; use a new key for a new request"
    )]
    IdempotencyKeyReused,
    /// A capture or void of a payment that is not a live hold: captured, voided,
    /// expired, declined, or never a hold.
    #[error("{0}")]
    PaymentNotPending(String),
    #[error("{0}")]
    CaptureExceedsHold(String),
    /// A refund larger than what is left of its payment's posted amount, or of a
    /// payment that did not post.
    #[error("{0}")]
    RefundExceedsPayment(String),
    /// A change or capture that needs an ACTIVE account met a FROZEN one.
    #[error("{0}")]
    AccountFrozen(String),
    /// Anything but reading met a CLOSED account.
    #[error("{0}")]
    AccountClosed(String),
    /// `closeAccount` of an account with a balance or live holds.
    #[error("{0}")]
    AccountNotEmpty(String),
    /// A freeze of a FROZEN account, an unfreeze of an ACTIVE one.
    #[error("{0}")]
    AccountStatusConflict(String),
    /// A credit limit lowered below what the account already uses.
    #[error("{0}")]
    CreditLimitBelowBalance(String),
    #[error("the ledger is busy; retry the same request with the same idempotency key")]
    RetryLater,
    /// The request ran out of time (`REQUEST_TIMEOUT_SECONDS`). A write may still have
    /// committed: its outcome is unknown until the same key is sent again.
    #[error(
        "the request ran out of time and its outcome is unknown: send it again with the same idempotency key, or ask paymentByIdempotencyKey"
    )]
    Timeout,
    /// The connection to the database broke after a write's COMMIT was sent, and the
    /// server could not reach the database again to learn whether it committed.
    #[error(
        "the database connection failed while this write was committing, so its outcome is unknown: send it again with the same idempotency key, or ask paymentByIdempotencyKey"
    )]
    OutcomeUnknown,
    /// A document named by a hash this server does not know: send it in full (APQ).
    /// The message is the one Apollo Client and urql match to do that.
    #[error("PersistedQueryNotFound")]
    PersistedQueryNotFound,
    #[error("the persisted query's sha256Hash is not the SHA-256 of the document sent with it")]
    PersistedQueryHashMismatch,
    #[error("only version 1 of extensions.persistedQuery is supported")]
    PersistedQueryNotSupported,
    #[error(
        "this server runs only trusted documents (GRAPHQL_DOCUMENTS=trusted), and this one is not in its manifest"
    )]
    DocumentNotTrusted,
    #[error("internal error")]
    Internal(Arc<anyhow::Error>),
}

pub type AppResult<T> = Result<T, AppError>;

impl AppError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadUserInput(message.into())
    }

    /// A bad input's message prefixed with where in the input it is, such as
    /// `payments[2]`; other errors as they are.
    pub fn at(self, place: &str) -> Self {
        match self {
            Self::BadUserInput(message) => Self::BadUserInput(format!("{place}: {message}")),
            other => other,
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(Arc::new(error.into()))
    }

    /// The value of `extensions.code` this error carries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::NotFound(_) => "NOT_FOUND",
            Self::BadUserInput(_) => "BAD_USER_INPUT",
            Self::CurrencyMismatch(_) => "CURRENCY_MISMATCH",
            Self::IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::PaymentNotPending(_) => "PAYMENT_NOT_PENDING",
            Self::CaptureExceedsHold(_) => "CAPTURE_EXCEEDS_HOLD",
            Self::RefundExceedsPayment(_) => "REFUND_EXCEEDS_PAYMENT",
            Self::AccountFrozen(_) => "ACCOUNT_FROZEN",
            Self::AccountClosed(_) => "ACCOUNT_CLOSED",
            Self::AccountNotEmpty(_) => "ACCOUNT_NOT_EMPTY",
            Self::AccountStatusConflict(_) => "ACCOUNT_STATUS_CONFLICT",
            Self::CreditLimitBelowBalance(_) => "CREDIT_LIMIT_BELOW_BALANCE",
            Self::RetryLater => "RETRY_LATER",
            Self::Timeout => "TIMEOUT",
            Self::OutcomeUnknown => "OUTCOME_UNKNOWN",
            Self::PersistedQueryNotFound => "PERSISTED_QUERY_NOT_FOUND",
            Self::PersistedQueryHashMismatch => "PERSISTED_QUERY_HASH_MISMATCH",
            Self::PersistedQueryNotSupported => "PERSISTED_QUERY_NOT_SUPPORTED",
            Self::DocumentNotTrusted => "DOCUMENT_NOT_TRUSTED",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<DbErr> for AppError {
    fn from(error: DbErr) -> Self {
        match error {
            // The pool had no connection to give: the database is down or saturated.
            // Nothing happened, so the client may safely retry.
            DbErr::ConnectionAcquire(_) => {
                tracing::warn!(error = %error, "database connection unavailable");
                Self::RetryLater
            }
            // Writes never get here with a lost connection (`Writer::run` settles
            // them); for a read, a lost connection changed nothing.
            lost if crate::db::is_connection_lost(&lost) => {
                tracing::warn!(error = %lost, "database connection lost");
                Self::RetryLater
            }
            // A write that reached a standby (the primary moved): nothing happened.
            read_only if crate::db::is_read_only_refusal(&read_only) => {
                tracing::warn!(error = %read_only, "the database refused a write as read-only");
                Self::RetryLater
            }
            other => Self::internal(other),
        }
    }
}

impl AppError {
    /// What a client is told: the code and the message. An internal error's cause is
    /// logged here, never sent.
    pub fn told(&self) -> (&'static str, String) {
        if let Self::Internal(cause) = self {
            tracing::error!(error = ?cause, "internal error");
        }
        (self.code(), self.to_string())
    }
}

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let (_, message) = self.told();
        async_graphql::Error::new(message).extend_with(|_, extensions| {
            extensions.set("code", self.code());
        })
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(error: AppError) -> Self {
        error.extend()
    }
}
