//! Relay cursor pagination, keyset-based.
//!
//! A page is "rows after/before a key, in key order, limit n + 1": it costs the same on
//! the first page as on the millionth. Client-wide lists are ordered by `FeedKey`, under
//! which nothing can commit behind a cursor a poller holds (docs/consistency.md).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, SimpleExpr};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Order, QueryFilter, QueryOrder, QuerySelect,
    Select,
};
use uuid::Uuid;

use crate::error::{AppError, AppResult};

pub const PAGE_SIZE_DEFAULT: u64 = 20;
pub const PAGE_SIZE_MAX: u64 = 100;

/// What a cursor of a given list points into; a cursor from another list is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorKind {
    /// A client's accounts, in feed order.
    Account,
    /// Payments in feed order, client-wide or of one account.
    Payment,
    /// One account's entries, by account version.
    LedgerEntry,
    /// A client's entries in feed order.
    EntryFeed,
    /// One account's balance history, by entry time.
    BalanceHistory,
}

impl CursorKind {
    fn tag(self) -> &'static str {
        match self {
            Self::Account => "A",
            Self::Payment => "P",
            Self::LedgerEntry => "e",
            Self::EntryFeed => "E",
            Self::BalanceHistory => "h",
        }
    }
}

/// A value rows are ordered and paged by: one value per ordering column.
pub trait PageKey: Sized + Clone {
    fn encode(&self) -> String;
    fn decode(text: &str) -> Option<Self>;
    fn values(&self) -> Vec<sea_orm::Value>;
}

impl PageKey for i64 {
    fn encode(&self) -> String {
        self.to_string()
    }
    fn decode(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn values(&self) -> Vec<sea_orm::Value> {
        vec![(*self).into()]
    }
}

/// A row's place in a feed: `(feed_seq, id)`. Rows of one transaction share a
/// `feed_seq`, and the id orders them among themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeedKey {
    pub seq: i64,
    pub id: Uuid,
}

impl PageKey for FeedKey {
    fn encode(&self) -> String {
        format!("{}.{}", self.seq, self.id.simple())
    }
    fn decode(text: &str) -> Option<Self> {
        let (seq, id) = text.split_once('.')?;
        Some(Self {
            seq: seq.parse().ok()?,
            id: Uuid::try_parse(id).ok()?,
        })
    }
    fn values(&self) -> Vec<sea_orm::Value> {
        vec![self.seq.into(), self.id.into()]
    }
}

/// An entry's place in its account's history: `(created_at, account_version)`. An
/// account's entries never go back in time, so this is also version order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeKey {
    pub at: DateTime<Utc>,
    pub version: i64,
}

impl PageKey for TimeKey {
    fn encode(&self) -> String {
        format!("{}.{}", self.at.timestamp_micros(), self.version)
    }
    fn decode(text: &str) -> Option<Self> {
        let (micros, version) = text.split_once('.')?;
        Some(Self {
            at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            version: version.parse().ok()?,
        })
    }
    fn values(&self) -> Vec<sea_orm::Value> {
        vec![self.at.into(), self.version.into()]
    }
}

pub fn encode_cursor<K: PageKey>(kind: CursorKind, key: &K) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", kind.tag(), key.encode()))
}

fn decode_cursor<K: PageKey>(kind: CursorKind, cursor: &str) -> AppResult<K> {
    const CURSOR_LENGTH_MAX: usize = 128;
    let invalid = || AppError::bad_input("invalid cursor: pass a cursor returned by this list");
    if cursor.len() > CURSOR_LENGTH_MAX {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (tag, key) = text.split_once(':').ok_or_else(invalid)?;
    if tag != kind.tag() {
        return Err(invalid());
    }
    K::decode(key).ok_or_else(invalid)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// A validated page request: `first`/`after` or `last`/`before`, within bounds.
#[derive(Debug, Clone)]
pub struct PageRequest<K> {
    pub direction: Direction,
    pub size: u64,
    pub after: Option<K>,
    pub before: Option<K>,
}

/// The raw Relay arguments, as a client sent them.
#[derive(Debug, Clone, Default)]
pub struct PageArguments {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
}

impl PageArguments {
    pub fn new(
        first: Option<i32>,
        after: Option<String>,
        last: Option<i32>,
        before: Option<String>,
    ) -> Self {
        Self {
            first,
            after,
            last,
            before,
        }
    }
}

impl<K: PageKey> PageRequest<K> {
    pub fn parse(kind: CursorKind, arguments: PageArguments) -> AppResult<Self> {
        let size = |name: &str, value: i32| -> AppResult<u64> {
            match u64::try_from(value) {
                Ok(size) if size <= PAGE_SIZE_MAX => Ok(size),
                Ok(_) => Err(AppError::bad_input(format!(
                    "{name} is {value}; the maximum page size is {PAGE_SIZE_MAX}"
                ))),
                Err(_) => Err(AppError::bad_input(format!(
                    "{name} must not be negative, got {value}"
                ))),
            }
        };
        let (direction, size) = match (arguments.first, arguments.last) {
            (Some(_), Some(_)) => {
                return Err(AppError::bad_input("pass either first or last, not both"));
            }
            (Some(first), None) => (Direction::Forward, size("first", first)?),
            (None, Some(last)) => (Direction::Backward, size("last", last)?),
            (None, None) if arguments.before.is_some() => (Direction::Backward, PAGE_SIZE_DEFAULT),
            (None, None) => (Direction::Forward, PAGE_SIZE_DEFAULT),
        };
        let after = arguments
            .after
            .as_deref()
            .map(|cursor| decode_cursor(kind, cursor))
            .transpose()?;
        let before = arguments
            .before
            .as_deref()
            .map(|cursor| decode_cursor(kind, cursor))
            .transpose()?;
        Ok(Self {
            direction,
            size,
            after,
            before,
        })
    }
}

/// One page of rows in ascending key order.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub rows: Vec<T>,
    pub has_previous_page: bool,
    pub has_next_page: bool,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            rows: self.rows.into_iter().map(f).collect(),
            has_previous_page: self.has_previous_page,
            has_next_page: self.has_next_page,
        }
    }
}

impl<K: PageKey> PageRequest<K> {
    /// `select` narrowed to this page: past the cursors, ordered by `columns` (the
    /// key's, in order) in the page's direction, one row more than the page size so the
    /// result tells whether more follow.
    pub fn narrow<E: EntityTrait>(&self, select: Select<E>, columns: &[E::Column]) -> Select<E> {
        let mut select = select;
        if let Some(after) = &self.after {
            select = select.filter(compare(columns, after, Comparison::Greater));
        }
        if let Some(before) = &self.before {
            select = select.filter(compare(columns, before, Comparison::Less));
        }
        let order = self.order();
        for column in columns {
            select = select.order_by(*column, order.clone());
        }
        select.limit(self.size + 1)
    }

    /// The order rows are fetched in: the page's direction.
    pub fn order(&self) -> Order {
        match self.direction {
            Direction::Forward => Order::Asc,
            Direction::Backward => Order::Desc,
        }
    }

    /// The page made of `rows`, fetched (in `order()`) by a query this request narrowed.
    pub fn page_of<T>(&self, mut rows: Vec<T>) -> Page<T> {
        let has_more = rows.len() as u64 > self.size;
        rows.truncate(self.size as usize);
        // The row a cursor names exists, so a cursor on the other side means a neighbour page.
        match self.direction {
            Direction::Forward => Page {
                rows,
                has_previous_page: self.after.is_some(),
                has_next_page: has_more,
            },
            Direction::Backward => {
                rows.reverse();
                Page {
                    rows,
                    has_previous_page: has_more,
                    has_next_page: self.before.is_some(),
                }
            }
        }
    }
}

enum Comparison {
    Greater,
    Less,
}

/// `(columns) > (key)` or `<`, as one row-value comparison, which both PostgreSQL and
/// SQLite turn into an index range.
fn compare<C: ColumnTrait, K: PageKey>(
    columns: &[C],
    key: &K,
    comparison: Comparison,
) -> SimpleExpr {
    let left = Expr::tuple(columns.iter().map(|column| Expr::col(*column)));
    let right = Expr::tuple(key.values().into_iter().map(Expr::val));
    match comparison {
        Comparison::Greater => left.gt(right),
        Comparison::Less => left.lt(right),
    }
}

/// Runs `select` as one keyset page over `columns`.
pub async fn fetch_page<E, K>(
    connection: &impl ConnectionTrait,
    select: Select<E>,
    columns: &[E::Column],
    request: &PageRequest<K>,
) -> Result<Page<E::Model>, DbErr>
where
    E: EntityTrait,
    K: PageKey,
{
    let rows = request.narrow(select, columns).all(connection).await?;
    Ok(request.page_of(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arguments(first: Option<i32>, last: Option<i32>) -> PageArguments {
        PageArguments {
            first,
            last,
            ..Default::default()
        }
    }

    #[test]
    fn cursors_round_trip_and_stay_in_their_list() {
        let cursor = encode_cursor(CursorKind::LedgerEntry, &42_i64);
        let request = PageRequest::<i64>::parse(
            CursorKind::LedgerEntry,
            PageArguments {
                after: Some(cursor.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(request.after, Some(42));
        let foreign = PageRequest::<FeedKey>::parse(
            CursorKind::Account,
            PageArguments {
                after: Some(cursor),
                ..Default::default()
            },
        );
        assert_eq!(foreign.unwrap_err().code(), "BAD_USER_INPUT");
    }

    #[test]
    fn time_keys_round_trip() {
        let key = TimeKey {
            at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            version: 42,
        };
        let cursor = encode_cursor(CursorKind::BalanceHistory, &key);
        let request = PageRequest::<TimeKey>::parse(
            CursorKind::BalanceHistory,
            PageArguments {
                after: Some(cursor),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(request.after, Some(key));
    }

    #[test]
    fn malformed_cursors_get_a_plain_message() {
        for cursor in ["", "!!!", "YTp4", "bm90LWEtY3Vyc29y", &"A".repeat(500)] {
            let error = PageRequest::<FeedKey>::parse(
                CursorKind::Account,
                PageArguments {
                    before: Some(cursor.to_owned()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert_eq!(error.code(), "BAD_USER_INPUT");
            assert_eq!(
                error.to_string(),
                "invalid cursor: pass a cursor returned by this list"
            );
        }
    }

    #[test]
    fn page_sizes_are_bounded() {
        let parse =
            |first, last| PageRequest::<i64>::parse(CursorKind::Payment, arguments(first, last));
        assert_eq!(parse(None, None).unwrap().size, PAGE_SIZE_DEFAULT);
        assert_eq!(parse(Some(100), None).unwrap().size, 100);
        assert_eq!(parse(None, Some(0)).unwrap().direction, Direction::Backward);
        for (first, last) in [
            (Some(101), None),
            (None, Some(1000)),
            (Some(-1), None),
            (Some(1), Some(1)),
        ] {
            assert_eq!(parse(first, last).unwrap_err().code(), "BAD_USER_INPUT");
        }
    }
}
