//! Conditional GETs and long polls: what lets a dashboard poll without being sent, or
//! making the server build, the same answer again.
//!
//! - Every 200 answer to a GET carries a strong `ETag`, a hash of the caller and the
//!   body (so one client's tag never matches another's answer), with
//!   `Cache-Control: private, no-cache` and `Vary: Authorization, Accept`.
//!   `If-None-Match` naming the current tag answers `304 Not Modified`, no body
//!   (RFC 9110).
//! - With `Prefer: wait=N` (RFC 7240; N capped at `WAIT_SECONDS_MAX`) as well, a
//!   client's GET whose answer still has that tag parks until the client's data
//!   changes and the answer differs, or N seconds pass; the answer says
//!   `Preference-Applied: wait=N`. See `changes` for what wakes it.

use std::cmp::Ordering;
use std::time::Duration;

use async_graphql::PathSegment;
use axum::http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

/// The longest wait a long poll is granted, whatever it asks for.
pub const WAIT_SECONDS_MAX: u64 = 60;

/// Cache headers of every answer to a GET, 200 or 304.
pub(super) const CACHE_CONTROL: HeaderValue = HeaderValue::from_static("private, no-cache");
pub(super) const VARY: HeaderValue = HeaderValue::from_static("Authorization, Accept");

/// The strong ETag of `body` as answered to the caller `who` (a client id, or a fixed
/// name for callers without one).
pub(super) fn etag(who: &[u8], body: &[u8]) -> HeaderValue {
    let mut hasher = Sha256::new();
    hasher.update((who.len() as u64).to_be_bytes());
    hasher.update(who);
    hasher.update(body);
    let digest = hasher.finalize();
    HeaderValue::try_from(format!("\"{}\"", hex::encode(&digest[..16])))
        .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

/// Puts an answer in one order. async-graphql 7 inserts a query's fields in the order
/// they finish, and adds field errors as they happen (fields resolve concurrently), so
/// the same answer could come out in different byte orders and so with different
/// ETags; in name order, errors by path, equal answers are equal bytes.
pub(super) fn in_stable_order(response: &mut async_graphql::Response) {
    objects_in_name_order(&mut response.data);
    response.errors.sort_by(|one, other| {
        path_order(&one.path, &other.path)
            .then_with(|| one.message.cmp(&other.message))
            .then_with(|| {
                let at = |error: &async_graphql::ServerError| {
                    error
                        .locations
                        .iter()
                        .map(|position| (position.line, position.column))
                        .collect::<Vec<_>>()
                };
                at(one).cmp(&at(other))
            })
    });
}

fn objects_in_name_order(value: &mut async_graphql::Value) {
    match value {
        async_graphql::Value::Object(fields) => {
            fields.sort_unstable_keys();
            fields.values_mut().for_each(objects_in_name_order);
        }
        async_graphql::Value::List(items) => items.iter_mut().for_each(objects_in_name_order),
        _ => {}
    }
}

/// The order of the answer itself: by field name, list items by index.
fn path_order(one: &[PathSegment], other: &[PathSegment]) -> Ordering {
    let segment_order = |one: &PathSegment, other: &PathSegment| match (one, other) {
        (PathSegment::Index(one), PathSegment::Index(other)) => one.cmp(other),
        (PathSegment::Field(one), PathSegment::Field(other)) => one.cmp(other),
        (PathSegment::Index(_), PathSegment::Field(_)) => Ordering::Less,
        (PathSegment::Field(_), PathSegment::Index(_)) => Ordering::Greater,
    };
    one.iter()
        .zip(other)
        .map(|(one, other)| segment_order(one, other))
        .find(|order| order.is_ne())
        .unwrap_or_else(|| one.len().cmp(&other.len()))
}

/// What `If-None-Match` asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Condition {
    /// No such header: always answer in full.
    None,
    /// `*`: any current answer counts as unchanged.
    Any,
    /// The tags the caller holds.
    Tags(Vec<String>),
}

impl Condition {
    pub(super) fn of(headers: &HeaderMap) -> Self {
        let mut tags = Vec::new();
        for value in headers.get_all(header::IF_NONE_MATCH) {
            let Ok(value) = value.to_str() else { continue };
            for tag in value.split(',').map(str::trim) {
                if tag == "*" {
                    return Self::Any;
                }
                // If-None-Match compares weakly (RFC 9110, 13.1.2): W/"x" matches "x".
                let tag = tag.strip_prefix("W/").unwrap_or(tag);
                if tag.len() >= 2 && tag.starts_with('"') && tag.ends_with('"') {
                    tags.push(tag.to_owned());
                }
            }
        }
        if tags.is_empty() {
            Self::None
        } else {
            Self::Tags(tags)
        }
    }

    /// Whether an answer tagged `etag` is one the caller already has.
    pub(super) fn holds(&self, etag: &HeaderValue) -> bool {
        match self {
            Self::None => false,
            Self::Any => true,
            Self::Tags(tags) => tags.iter().any(|tag| tag.as_bytes() == etag.as_bytes()),
        }
    }
}

/// The wait `Prefer: wait=N` asks for, capped at `WAIT_SECONDS_MAX`; none when absent,
/// zero or unreadable.
pub(super) fn requested_wait(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']))
        .find_map(|preference| {
            let (name, value) = preference.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let seconds: u64 = value.trim().trim_matches('"').parse().ok()?;
            (seconds > 0).then(|| Duration::from_secs(seconds.min(WAIT_SECONDS_MAX)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn tags_depend_on_the_caller_and_the_body() {
        let tag = etag(b"alice", b"{}");
        assert_eq!(tag, etag(b"alice", b"{}"));
        assert_ne!(tag, etag(b"bob", b"{}"));
        assert_ne!(tag, etag(b"alice", b"{ }"));
        // The caller's name cannot run into the body.
        assert_ne!(etag(b"ab", b"c"), etag(b"a", b"bc"));
        let text = tag.to_str().unwrap();
        assert!(text.starts_with('"') && text.ends_with('"') && text.len() == 34);
    }

    #[test]
    fn equal_answers_and_their_errors_come_out_in_one_order() {
        use async_graphql::{Name, Value};
        let object = |pairs: &[(&str, Value)]| {
            Value::Object(
                pairs
                    .iter()
                    .map(|(name, value)| (Name::new(name), value.clone()))
                    .collect(),
            )
        };
        let inner = |a: i32, b: i32| object(&[("b", Value::from(b)), ("a", Value::from(a))]);
        let first = object(&[
            ("payments", Value::List(vec![inner(1, 2)])),
            ("accounts", inner(3, 4)),
        ]);
        let second = object(&[
            (
                "accounts",
                object(&[("a", Value::from(3)), ("b", Value::from(4))]),
            ),
            ("payments", Value::List(vec![inner(1, 2)])),
        ]);
        let answer = |data: Value, errors: &[(&[PathSegment], &str)]| {
            let mut response = async_graphql::Response::new(data);
            response.errors = errors
                .iter()
                .map(|(path, message)| {
                    let mut error = async_graphql::ServerError::new(*message, None);
                    error.path = path.to_vec();
                    error
                })
                .collect();
            response
        };
        let field = |name: &str| PathSegment::Field(name.to_owned());
        let tenth: &[PathSegment] = &[field("payments"), PathSegment::Index(10), field("to")];
        let second_item: &[PathSegment] = &[field("payments"), PathSegment::Index(2)];
        let accounts: &[PathSegment] = &[field("accounts")];
        let mut first = answer(
            first,
            &[(tenth, "not found"), (accounts, "b"), (second_item, "x")],
        );
        let mut second = answer(
            second,
            &[(accounts, "b"), (second_item, "x"), (tenth, "not found")],
        );
        in_stable_order(&mut first);
        in_stable_order(&mut second);
        let bytes = |response: &async_graphql::Response| serde_json::to_string(response).unwrap();
        assert_eq!(bytes(&first), bytes(&second));
        assert!(
            bytes(&first).starts_with(r#"{"data":{"accounts":{"a":3"#),
            "{}",
            bytes(&first)
        );
        // Errors in the answer's own order: list items by index, not as text.
        let messages: Vec<&str> = first
            .errors
            .iter()
            .map(|error| error.message.as_str())
            .collect();
        assert_eq!(messages, ["b", "x", "not found"]);
    }

    #[test]
    fn if_none_match_is_read_as_rfc_9110_says() {
        let tag = HeaderValue::from_static("\"abc\"");
        assert_eq!(Condition::of(&HeaderMap::new()), Condition::None);
        assert!(!Condition::None.holds(&tag));
        assert!(Condition::of(&headers(&[("if-none-match", "\"abc\"")])).holds(&tag));
        assert!(Condition::of(&headers(&[("if-none-match", "W/\"abc\"")])).holds(&tag));
        assert!(Condition::of(&headers(&[("if-none-match", "\"x\", \"abc\"")])).holds(&tag));
        assert!(
            Condition::of(&headers(&[
                ("if-none-match", "\"x\""),
                ("if-none-match", "\"abc\"")
            ]))
            .holds(&tag)
        );
        assert!(!Condition::of(&headers(&[("if-none-match", "\"abcd\"")])).holds(&tag));
        assert!(!Condition::of(&headers(&[("if-none-match", "abc")])).holds(&tag));
        assert_eq!(
            Condition::of(&headers(&[("if-none-match", "*")])),
            Condition::Any
        );
    }

    #[test]
    fn prefer_wait_is_capped_and_garbage_ignored() {
        let wait = |value: &'static str| requested_wait(&headers(&[("prefer", value)]));
        assert_eq!(wait("wait=25"), Some(Duration::from_secs(25)));
        assert_eq!(wait("respond-async, wait=5"), Some(Duration::from_secs(5)));
        assert_eq!(
            wait("handling=lenient; WAIT = 7"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            wait("wait=3600"),
            Some(Duration::from_secs(WAIT_SECONDS_MAX))
        );
        assert_eq!(wait("wait=0"), None);
        assert_eq!(wait("wait=-1"), None);
        assert_eq!(wait("wait=soon"), None);
        assert_eq!(wait("return=minimal"), None);
        assert_eq!(requested_wait(&HeaderMap::new()), None);
    }
}
