//! Metadata: a client's own key/value pairs on accounts, payments and payment groups.
//! Stored as given (keys in the order the client sent them), fingerprinted in one
//! canonical form, and bounded so no request can store more than a few kilobytes.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{AppError, AppResult};

/// An object of string keys to string values, within the limits below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    pub const KEYS_MAX: usize = 50;
    pub const KEY_BYTES_MAX: usize = 100;
    pub const VALUE_BYTES_MAX: usize = 500;
    /// The whole object, as JSON text.
    pub const TOTAL_BYTES_MAX: usize = 16 * 1024;

    /// `pairs` in the client's order; a key given twice is refused rather than one of
    /// its values silently kept.
    pub fn parse(pairs: Vec<(String, String)>) -> AppResult<Self> {
        if pairs.len() > Self::KEYS_MAX {
            return Err(AppError::bad_input(format!(
                "metadata has {} keys; the maximum is {}",
                pairs.len(),
                Self::KEYS_MAX
            )));
        }
        let mut seen = std::collections::HashSet::with_capacity(pairs.len());
        for (key, value) in &pairs {
            if key.is_empty() || key.len() > Self::KEY_BYTES_MAX {
                return Err(AppError::bad_input(format!(
                    "metadata keys are 1 to {} bytes; {key:?} is {}",
                    Self::KEY_BYTES_MAX,
                    key.len()
                )));
            }
            if value.len() > Self::VALUE_BYTES_MAX {
                return Err(AppError::bad_input(format!(
                    "metadata value of {key:?} is {} bytes; the maximum is {}",
                    value.len(),
                    Self::VALUE_BYTES_MAX
                )));
            }
            if key.chars().chain(value.chars()).any(char::is_control) {
                return Err(AppError::bad_input(format!(
                    "metadata {key:?} must not contain control characters"
                )));
            }
            if !seen.insert(key.as_str()) {
                return Err(AppError::bad_input(format!(
                    "metadata key {key:?} is given twice"
                )));
            }
        }
        let metadata = Self(pairs);
        let total = metadata.to_json().len();
        if total > Self::TOTAL_BYTES_MAX {
            return Err(AppError::bad_input(format!(
                "metadata is {total} bytes as JSON; the maximum is {}",
                Self::TOTAL_BYTES_MAX
            )));
        }
        Ok(metadata)
    }

    /// The stored form: the object as JSON text, keys in the client's order.
    pub fn to_json(&self) -> String {
        let object: Map<String, Value> = self
            .0
            .iter()
            .map(|(key, value)| (key.clone(), Value::String(value.clone())))
            .collect();
        Value::Object(object).to_string()
    }

    /// Reads the stored form back, keys in the order they were stored.
    pub fn from_stored(text: &str) -> AppResult<Self> {
        let pairs: Vec<(String, String)> = serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|value| match value {
                Value::Object(object) => object
                    .into_iter()
                    .map(|(key, value)| match value {
                        Value::String(value) => Some((key, value)),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            })
            .ok_or_else(|| {
                AppError::internal(anyhow::anyhow!(
                    "stored metadata is not an object of strings"
                ))
            })?;
        Ok(Self(pairs))
    }

    /// One text for the same pairs in any order: the fingerprint's.
    pub fn fingerprint_text(&self) -> String {
        let sorted: BTreeMap<&str, &str> = self
            .0
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        serde_json::to_string(&sorted).unwrap_or_default()
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_keeps_the_clients_order_and_fingerprints_any_order_alike() {
        let given = Metadata::parse(pairs(&[("orderId", "1042"), ("channel", "web")])).unwrap();
        assert_eq!(given.to_json(), r#"{"orderId":"1042","channel":"web"}"#);
        assert_eq!(Metadata::from_stored(&given.to_json()).unwrap(), given);
        let reordered = Metadata::parse(pairs(&[("channel", "web"), ("orderId", "1042")])).unwrap();
        assert_eq!(given.fingerprint_text(), reordered.fingerprint_text());
        let other = Metadata::parse(pairs(&[("channel", "web"), ("orderId", "1043")])).unwrap();
        assert_ne!(given.fingerprint_text(), other.fingerprint_text());
        assert_eq!(Metadata::parse(Vec::new()).unwrap().to_json(), "{}");
    }

    #[test]
    fn metadata_limits_are_enforced_at_their_edges() {
        let many = |count: usize| {
            (0..count)
                .map(|index| (format!("k{index}"), "v".to_owned()))
                .collect::<Vec<_>>()
        };
        assert!(Metadata::parse(many(Metadata::KEYS_MAX)).is_ok());
        let value = |bytes: usize| pairs(&[("k", &"é".repeat(bytes / 2))]);
        assert!(Metadata::parse(value(Metadata::VALUE_BYTES_MAX)).is_ok());
        let key = |bytes: usize| vec![("k".repeat(bytes), String::new())];
        assert!(Metadata::parse(key(Metadata::KEY_BYTES_MAX)).is_ok());
        // 40 values of 500 bytes: each within its limit, 20 KB in all.
        let large = (0..40)
            .map(|index| (format!("k{index}"), "x".repeat(500)))
            .collect::<Vec<_>>();
        for refused in [
            many(Metadata::KEYS_MAX + 1),
            value(Metadata::VALUE_BYTES_MAX + 2),
            key(Metadata::KEY_BYTES_MAX + 1),
            key(0),
            large,
            pairs(&[("a", "1"), ("a", "2")]),
            pairs(&[("a", "line\u{0}break")]),
        ] {
            let error = Metadata::parse(refused).unwrap_err();
            assert_eq!(error.code(), "BAD_USER_INPUT", "{error}");
        }
    }
}
