//! Relay connections for every paged list: one helper parses a field's arguments into a
//! keyset page request, runs the ledger's query for it, and builds the connection.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{OutputType, Result};

use crate::error::AppResult;
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

/// `listed!(GraphQL type, row type, key type, cursor kind, |row| key)`: implements
/// `Listed` beside the type (`graphql::types`).
macro_rules! listed {
    ($type:ty, $row:ty, $key:ty, $cursor:expr, |$each:ident| $key_of:expr) => {
        impl Listed for $type {
            type Row = $row;
            type Key = $key;
            const CURSOR: $crate::pagination::CursorKind = $cursor;
            fn key($each: &$row) -> $key {
                $key_of
            }
            fn from_row(row: $row) -> $crate::error::AppResult<Self> {
                <$type>::from_row(row)
            }
        }
    };
}

pub(crate) use listed;

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
