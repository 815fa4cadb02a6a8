//! Relay connections for every paged list: one helper parses a field's arguments into a
//! keyset page request, runs the ledger's query for it, and builds the connection.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{OutputType, Result};
use uuid::Uuid;

use crate::entity::{account, ledger_entry, payment};
use crate::error::AppResult;
use crate::graphql::types::{Account, LedgerEntry, Payment};
use crate::pagination::{
    CursorKind, PAGE_SIZE_DEFAULT, Page, PageArguments, PageKey, PageRequest, encode_cursor,
};

/// A GraphQL type listed in pages: the row it wraps and the key its list is ordered by.
pub trait Listed: OutputType + Sized {
    type Row;
    type Key: PageKey;
    const CURSOR: CursorKind;
    fn key(row: &Self::Row) -> Self::Key;
    fn from_row(row: Self::Row) -> AppResult<Self>;
}

impl Listed for Account {
    type Row = account::Model;
    type Key = Uuid;
    const CURSOR: CursorKind = CursorKind::Account;
    fn key(row: &account::Model) -> Uuid {
        row.id
    }
    fn from_row(row: account::Model) -> AppResult<Self> {
        Account::from_row(row)
    }
}

impl Listed for Payment {
    type Row = payment::Model;
    type Key = Uuid;
    const CURSOR: CursorKind = CursorKind::Payment;
    fn key(row: &payment::Model) -> Uuid {
        row.id
    }
    fn from_row(row: payment::Model) -> AppResult<Self> {
        Payment::from_row(row)
    }
}

/// Entries are listed per account, in posting order.
impl Listed for LedgerEntry {
    type Row = ledger_entry::Model;
    type Key = i64;
    const CURSOR: CursorKind = CursorKind::LedgerEntry;
    fn key(row: &ledger_entry::Model) -> i64 {
        row.account_version
    }
    fn from_row(row: ledger_entry::Model) -> AppResult<Self> {
        LedgerEntry::from_row(row)
    }
}

/// One page of `T`: the arguments are checked (page size, cursors of this list only)
/// before `fetch` runs the query.
pub async fn page_of<T, F, Fut>(arguments: PageArguments, fetch: F) -> Result<Connection<String, T>>
where
    T: Listed,
    F: FnOnce(PageRequest<T::Key>) -> Fut,
    Fut: Future<Output = AppResult<Page<T::Row>>>,
{
    let request = PageRequest::parse(T::CURSOR, arguments)?;
    let page = fetch(request).await?;
    let mut connection = Connection::new(page.has_previous_page, page.has_next_page);
    for row in page.rows {
        let cursor = encode_cursor(T::CURSOR, &T::key(&row));
        connection.edges.push(Edge::new(cursor, T::from_row(row)?));
    }
    Ok(connection)
}

/// A connection's cost: its page size times what each node costs.
pub fn page_complexity(first: Option<i32>, last: Option<i32>, child_complexity: usize) -> usize {
    let page_size = first
        .or(last)
        .and_then(|size| usize::try_from(size).ok())
        .unwrap_or(PAGE_SIZE_DEFAULT as usize);
    page_size
        .max(1)
        .saturating_mul(child_complexity)
        .saturating_add(1)
}
