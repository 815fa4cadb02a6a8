//! The `Decimal` money scalar and the `JSON` metadata scalar.

use async_graphql::{InputValueError, InputValueResult, Name, Scalar, ScalarType, Value};
use rust_decimal::Decimal;

use crate::ledger::metadata::Metadata;

/// A decimal amount of money as a string such as "12.34". JSON numbers are refused, so
/// no client can round an amount through a binary float on its way in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money(pub String);

/// A decimal number encoded as a string, such as "12.34". Amounts use exactly as many
/// fractional digits as their currency's minor unit; inputs with more are rejected.
#[Scalar(name = "Decimal")]
impl ScalarType for Money {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(text) => Ok(Self(text)),
            Value::Number(_) => Err(InputValueError::custom(
                "amounts are decimal strings such as \"12.34\", not JSON numbers",
            )),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

impl From<Decimal> for Money {
    fn from(value: Decimal) -> Self {
        Self(value.to_string())
    }
}

/// Metadata: a JSON object of string keys to string values, such as
/// `{"orderId": "1042", "channel": "web"}`. At most 50 keys of 1 to 100 bytes, values of
/// at most 500 bytes, 16 KB in all; returned as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(pub Metadata);

#[Scalar(name = "JSON")]
impl ScalarType for Json {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::Object(object) = value else {
            return Err(InputValueError::custom(
                "metadata is a JSON object of string keys to string values",
            ));
        };
        let pairs = object
            .into_iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.to_string(), text)),
                _ => Err(InputValueError::custom(format!(
                    "metadata values are strings; {key:?} is not"
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Metadata::parse(pairs)
            .map(Self)
            .map_err(|error| InputValueError::custom(error.to_string()))
    }

    fn to_value(&self) -> Value {
        Value::Object(
            self.0
                .pairs()
                .iter()
                .map(|(key, value)| (Name::new(key), Value::String(value.clone())))
                .collect(),
        )
    }
}
