//! The ledger: money, accounts, payments and postings. Pure rules sit in `money`,
//! `posting`, `lifecycle` (holds, settlements, refunds), `metadata` and the request types; `service` owns transactions; `audit` re-checks every
//! invariant from the stored rows; `export` writes a client's statement.

pub mod account_lifecycle;
pub mod audit;
pub mod export;
pub mod lifecycle;
pub mod metadata;
pub mod money;
pub mod posting;
pub mod requests;
pub mod service;

pub use service::{Created, Ledger};
