//! The ledger: money, accounts, payments and postings. Pure rules sit in `money`,
//! `posting`, `lifecycle` (holds, settlements, refunds), `metadata` and the request types; `service` owns transactions; `audit` re-checks every
//! invariant from the stored rows.

pub mod audit;
pub mod lifecycle;
pub mod metadata;
pub mod money;
pub mod posting;
pub mod requests;
pub mod service;

pub use service::{Created, Ledger};
