//! sea-orm entities: one per table, plain rows with no behaviour. Stored enums (balance
//! rule, payment status, entry direction) are declared with their tables and decoded
//! here, once, so the rest of the server sees typed values; the rules about them live
//! in `ledger::posting`.

pub mod account;
pub mod account_change;
pub mod api_key;
pub mod client;
pub mod idempotency_key;
pub mod ledger_entry;
pub mod live_hold;
pub mod payment;
pub mod payment_group;
pub mod payment_metadata;
pub mod payment_settlement;

/// The current time as the database stores it (PostgreSQL keeps microseconds), so a
/// timestamp a client got from a response or the cache equals the stored one, and a
/// `since:` filter at it includes the row it came from.
pub fn stored_now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(6)
}
