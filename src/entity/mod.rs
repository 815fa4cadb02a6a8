//! sea-orm entities: one per table, plain rows with no behaviour. The rules live in
//! `ledger`; these only say how rows are shaped.

pub mod account;
pub mod client;
pub mod idempotency_key;
pub mod ledger_entry;
pub mod payment;
