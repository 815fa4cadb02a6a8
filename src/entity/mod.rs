//! sea-orm entities: one per table, plain rows with no behaviour. Stored enums (balance
//! rule, payment status, entry direction) are declared with their tables and decoded
//! here, once, so the rest of the server sees typed values; the rules about them live
//! in `ledger::posting`.

pub mod account;
pub mod client;
pub mod idempotency_key;
pub mod ledger_entry;
pub mod payment;
