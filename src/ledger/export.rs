//! Statements: one client's ledger entries, with their payment, metadata and running
//! balance, written as CSV or JSON for reconciliation (`payments-ledger export`).
//!
//! Streams in constant memory: the client's accounts are read a page at a time (by
//! id), and each account's entries in the window a page at a time through the
//! `(account_id, created_at, account_version)` index; each page's payments come with
//! one more query. Entries are written account by account, oldest first, so each
//! row's `balance_after` is the running balance of its account.

use std::collections::HashMap;
use std::io::Write;

use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde::Serialize;
use uuid::Uuid;

use crate::entity::{account, client, ledger_entry, payment};
use crate::ids::{AccountId, ClientId, LedgerEntryId, PaymentId};
use crate::ledger::money::{Currency, from_minor_units};

/// Rows read per query; what the export holds in memory at once.
const PAGE_ROWS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON array, one entry object per line.
    Json,
}

/// What to export: whose entries, and created in `[since, until)`.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub client: ClientId,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub format: Format,
}

/// The CSV header: `StatementRow`'s fields, in order.
const CSV_HEADER: [&str; 15] = [
    "entry_id",
    "created_at",
    "account_id",
    "account_external_ref",
    "currency",
    "direction",
    "amount",
    "signed_amount",
    "balance_after",
    "account_version",
    "payment_id",
    "payment_idempotency_key",
    "payment_description",
    "payment_metadata",
    "counterparty_account_id",
];

/// One line of a statement.
#[derive(Debug, Serialize)]
struct StatementRow {
    entry_id: String,
    created_at: String,
    account_id: String,
    account_external_ref: String,
    currency: String,
    direction: &'static str,
    amount: String,
    /// The entry's effect on the balance: negative for a DEBIT.
    signed_amount: String,
    balance_after: String,
    account_version: i64,
    payment_id: String,
    payment_idempotency_key: String,
    payment_description: String,
    /// The payment's metadata as JSON text, empty when it has none.
    payment_metadata: String,
    counterparty_account_id: String,
}

/// Finds a client by id or by name; a name two clients share is refused.
pub async fn find_client(db: &DatabaseConnection, id_or_name: &str) -> anyhow::Result<ClientId> {
    if let Ok(id) = Uuid::try_parse(id_or_name) {
        return client::Entity::find_by_id(id)
            .one(db)
            .await?
            .map(|row| ClientId(row.id))
            .ok_or_else(|| anyhow::anyhow!("no client has id {id}"));
    }
    let rows = client::Entity::find()
        .filter(client::Column::Name.eq(id_or_name))
        .limit(2)
        .all(db)
        .await?;
    match rows.as_slice() {
        [row] => Ok(ClientId(row.id)),
        [] => anyhow::bail!("no client is named {id_or_name:?}"),
        _ => anyhow::bail!("more than one client is named {id_or_name:?}: pass its id instead"),
    }
}

/// Writes the statement to `out`; returns how many entries it wrote.
pub async fn export(
    db: &DatabaseConnection,
    request: &ExportRequest,
    out: impl Write,
) -> anyhow::Result<u64> {
    let mut writer = RowWriter::new(request.format, out)?;
    let mut after_account: Option<Uuid> = None;
    loop {
        let mut accounts = account::Entity::find()
            .filter(account::Column::ClientId.eq(request.client.0))
            .order_by_asc(account::Column::Id)
            .limit(PAGE_ROWS);
        if let Some(after) = after_account {
            accounts = accounts.filter(account::Column::Id.gt(after));
        }
        let accounts = accounts.all(db).await?;
        let Some(last) = accounts.last() else {
            break;
        };
        after_account = Some(last.id);
        for account in &accounts {
            export_account(db, request, account, &mut writer).await?;
        }
    }
    writer.finish()
}

async fn export_account(
    db: &DatabaseConnection,
    request: &ExportRequest,
    account: &account::Model,
    writer: &mut RowWriter<impl Write>,
) -> anyhow::Result<()> {
    let currency = Currency::from_stored(&account.currency)?;
    let mut after: Option<(DateTime<Utc>, i64)> = None;
    loop {
        let mut select = ledger_entry::Entity::find()
            .filter(ledger_entry::Column::AccountId.eq(account.id))
            .filter(ledger_entry::Column::ClientId.eq(request.client.0));
        if let Some(since) = request.since {
            select = select.filter(ledger_entry::Column::CreatedAt.gte(since));
        }
        if let Some(until) = request.until {
            select = select.filter(ledger_entry::Column::CreatedAt.lt(until));
        }
        if let Some((at, version)) = after {
            // The entries after the last one written: later, or at the same time and a
            // higher version (older ledgers may have entries sharing a time).
            select = select.filter(
                sea_orm::Condition::any()
                    .add(ledger_entry::Column::CreatedAt.gt(at))
                    .add(
                        sea_orm::Condition::all()
                            .add(ledger_entry::Column::CreatedAt.eq(at))
                            .add(ledger_entry::Column::AccountVersion.gt(version)),
                    ),
            );
        }
        let entries = select
            .order_by_asc(ledger_entry::Column::CreatedAt)
            .order_by_asc(ledger_entry::Column::AccountVersion)
            .limit(PAGE_ROWS)
            .all(db)
            .await?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        after = Some((last.created_at, last.account_version));
        let payment_ids: Vec<Uuid> = entries.iter().map(|entry| entry.payment_id).collect();
        let payments: HashMap<Uuid, payment::Model> = payment::Entity::find()
            .filter(payment::Column::Id.is_in(payment_ids))
            .filter(payment::Column::ClientId.eq(request.client.0))
            .all(db)
            .await?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        for entry in &entries {
            let payment = payments.get(&entry.payment_id);
            let counterparty = payment.map(|payment| {
                if payment.from_account_id == account.id {
                    payment.to_account_id
                } else {
                    payment.from_account_id
                }
            });
            let money = |minor| from_minor_units(minor, currency).to_string();
            writer.write(&StatementRow {
                entry_id: LedgerEntryId(entry.id).to_string(),
                created_at: entry
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                account_id: AccountId(account.id).to_string(),
                account_external_ref: account.external_ref.clone().unwrap_or_default(),
                currency: account.currency.clone(),
                direction: match entry.direction {
                    ledger_entry::EntryDirection::Debit => "DEBIT",
                    ledger_entry::EntryDirection::Credit => "CREDIT",
                },
                amount: money(entry.amount_minor),
                signed_amount: money(entry.direction.signed(entry.amount_minor)),
                balance_after: money(entry.balance_after_minor),
                account_version: entry.account_version,
                payment_id: PaymentId(entry.payment_id).to_string(),
                payment_idempotency_key: payment
                    .map(|payment| payment.idempotency_key.clone())
                    .unwrap_or_default(),
                payment_description: payment
                    .and_then(|payment| payment.description.clone())
                    .unwrap_or_default(),
                payment_metadata: payment
                    .and_then(|payment| payment.metadata.clone())
                    .unwrap_or_default(),
                counterparty_account_id: counterparty
                    .map(|id| AccountId(id).to_string())
                    .unwrap_or_default(),
            })?;
        }
    }
}

/// Writes rows in one format as they come.
enum RowWriter<W: Write> {
    Csv(Box<csv::Writer<W>>, u64),
    Json(W, u64),
}

impl<W: Write> RowWriter<W> {
    fn new(format: Format, out: W) -> anyhow::Result<Self> {
        Ok(match format {
            Format::Csv => {
                // The header is written even when no entry follows.
                let mut writer = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(out);
                writer.write_record(CSV_HEADER)?;
                Self::Csv(Box::new(writer), 0)
            }
            Format::Json => {
                let mut out = out;
                out.write_all(b"[")?;
                Self::Json(out, 0)
            }
        })
    }

    fn write(&mut self, row: &StatementRow) -> anyhow::Result<()> {
        match self {
            Self::Csv(writer, count) => {
                writer.serialize(row)?;
                *count += 1;
            }
            Self::Json(out, count) => {
                out.write_all(if *count == 0 { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *out, row)?;
                *count += 1;
            }
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<u64> {
        match self {
            Self::Csv(mut writer, count) => {
                writer.flush()?;
                Ok(count)
            }
            Self::Json(mut out, count) => {
                out.write_all(b"\n]\n")?;
                out.flush()?;
                Ok(count)
            }
        }
    }
}
