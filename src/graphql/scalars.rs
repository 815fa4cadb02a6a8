//! The `Decimal` money scalar.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use rust_decimal::Decimal;

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
