//! Relay connections for every paged list: one helper parses a field's arguments into a
//! keyset page request, runs the ledger's query for it, and builds the connection.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{OutputType, Result};

use crate::entity::{account, ledger_entry, payment};
use crate::error::AppResult;
use crate::pagination::{
    CursorKind, FeedKey, PAGE_SIZE_DEFAULT, Page, PageArguments, PageKey, PageRequest, TimeKey,
    encode_cursor,
};

/// A GraphQL type listed in pages, built from the row it wraps.
pub trait Listed: OutputType + Sized {
    type Row;
    fn from_row(row: Self::Row) -> AppResult<Self>;
}

/// `listed!(GraphQL type, row type)`: implements `Listed` beside the type.
macro_rules! listed {
    ($type:ty, $row:ty) => {
        impl Listed for $type {
            type Row = $row;
            fn from_row(row: $row) -> $crate::error::AppResult<Self> {
                <$type>::from_row(row)
            }
        }
    };
}

pub(crate) use listed;

/// A key rows of `Row` are listed by, and the cursor kind of that list: a cursor from
/// one list is refused by every other.
pub trait Keyset<Row>: PageKey {
    const CURSOR: CursorKind;
    fn of(row: &Row) -> Self;
}

macro_rules! feed_keyset {
    ($row:ty, $cursor:expr) => {
        impl Keyset<$row> for FeedKey {
            const CURSOR: CursorKind = $cursor;
            fn of(row: &$row) -> Self {
                FeedKey {
                    seq: row.feed_seq,
                    id: row.id,
                }
            }
        }
    };
}

feed_keyset!(account::Model, CursorKind::Account);
feed_keyset!(payment::Model, CursorKind::Payment);
feed_keyset!(ledger_entry::Model, CursorKind::EntryFeed);

/// One account's entries, in posting order.
impl Keyset<ledger_entry::Model> for i64 {
    const CURSOR: CursorKind = CursorKind::LedgerEntry;
    fn of(row: &ledger_entry::Model) -> Self {
        row.account_version
    }
}

/// One account's entries as its balance history, by time.
impl Keyset<ledger_entry::Model> for TimeKey {
    const CURSOR: CursorKind = CursorKind::BalanceHistory;
    fn of(row: &ledger_entry::Model) -> Self {
        TimeKey {
            at: row.created_at,
            version: row.account_version,
        }
    }
}

/// One page of `T` keyed by `K`: the arguments are checked (page size, cursors of this
/// list only) before `fetch` runs the query.
pub async fn page_of<T, K, F, Fut>(
    arguments: PageArguments,
    fetch: F,
) -> Result<Connection<String, T>>
where
    T: Listed,
    K: Keyset<T::Row>,
    F: FnOnce(PageRequest<K>) -> Fut,
    Fut: Future<Output = AppResult<Page<T::Row>>>,
{
    let request = PageRequest::parse(K::CURSOR, arguments)?;
    let page = fetch(request).await?;
    let mut connection = Connection::new(page.has_previous_page, page.has_next_page);
    for row in page.rows {
        let cursor = encode_cursor(K::CURSOR, &K::of(&row));
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
