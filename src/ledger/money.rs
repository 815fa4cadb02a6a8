//! Money: ISO 4217 currencies and amounts in integer minor units.
//!
//! Amounts cross the API as decimal strings and live everywhere else as `i64` minor units
//! (cents for USD, yen for JPY, fils for KWD). A decimal with more fractional digits than
//! the currency has is rejected, never rounded; arithmetic is checked, never wrapping.

use std::fmt;

use rust_decimal::Decimal;

use crate::error::AppError;

/// An ISO 4217 currency that has a minor unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    currency: iso_currency::Currency,
    /// Digits after the decimal point in the currency's minor unit.
    exponent: u32,
}

impl Currency {
    /// Parses an ISO 4217 code. Lower case is accepted and normalized.
    pub fn parse(code: &str) -> Result<Self, AppError> {
        let unknown = || {
            AppError::bad_input(format!(
                "unknown currency {:?}: expected an ISO 4217 code such as \"USD\"",
                truncate_for_message(code)
            ))
        };
        if code.len() != 3 {
            return Err(unknown());
        }
        let currency =
            iso_currency::Currency::from_code(&code.to_ascii_uppercase()).ok_or_else(unknown)?;
        // Precious metals, test and "no currency" codes have no minor unit, so an amount
        // in them has no integer representation.
        let exponent = currency.exponent().ok_or_else(|| {
            AppError::bad_input(format!(
                "currency {} has no minor unit and cannot be used for payments",
                currency.code()
            ))
        })?;
        Ok(Self {
            currency,
            exponent: u32::from(exponent),
        })
    }

    /// A currency code read back from the database. It was valid when written, so one
    /// that no longer parses is a bug, not the client's error.
    pub fn from_stored(code: &str) -> Result<Self, AppError> {
        Self::parse(code).map_err(|_| {
            AppError::internal(anyhow::anyhow!("stored currency {code:?} is not valid"))
        })
    }

    pub fn code(&self) -> &'static str {
        self.currency.code()
    }

    pub fn exponent(&self) -> u32 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Converts an API decimal to minor units of `currency`, exactly.
pub fn to_minor_units(value: Decimal, currency: Currency) -> Result<i64, AppError> {
    let value = value.normalize();
    if value.scale() > currency.exponent() {
        return Err(AppError::bad_input(format!(
            "amount {value} has more decimal places than {} allows ({})",
            currency.code(),
            currency.exponent()
        )));
    }
    let out_of_range = || {
        AppError::bad_input(format!(
            "amount {value} is too large for {}",
            currency.code()
        ))
    };
    let scaled = value
        .checked_mul(Decimal::from(10_i64.pow(currency.exponent())))
        .ok_or_else(out_of_range)?;
    // The scale check above makes `scaled` an integer.
    i64::try_from(scaled).map_err(|_| out_of_range())
}

/// Converts minor units back to a decimal with exactly the currency's scale ("12.30").
pub fn from_minor_units(minor: i64, currency: Currency) -> Decimal {
    Decimal::new(minor, currency.exponent())
}

/// Parses the text of a money value: an optional minus sign, digits, and an optional
/// fraction. No exponents, no thousands separators, no surrounding spaces, so what a
/// client sends is exactly what it means.
pub fn parse_decimal(text: &str) -> Result<Decimal, AppError> {
    const TEXT_LENGTH_MAX: usize = 64;
    let invalid = || {
        AppError::bad_input(format!(
            "invalid amount {:?}: expected a decimal string such as \"12.34\"",
            truncate_for_message(text)
        ))
    };
    if text.is_empty() || text.len() > TEXT_LENGTH_MAX {
        return Err(invalid());
    }
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let all_digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(whole) || fraction.is_some_and(|fraction| !all_digits(fraction)) {
        return Err(invalid());
    }
    // `from_str` would round past 28 significant digits ("0.0099…9" with 30 digits
    // became 0.01); an amount is taken exactly or not at all.
    Decimal::from_str_exact(text).map_err(|_| {
        AppError::bad_input(format!(
            "amount {:?} has too many digits to be taken exactly",
            truncate_for_message(text)
        ))
    })
}

/// Keeps error messages short when a client sends something huge.
fn truncate_for_message(text: &str) -> String {
    const SHOWN_CHARS_MAX: usize = 40;
    if text.chars().count() <= SHOWN_CHARS_MAX {
        text.to_owned()
    } else {
        let mut shown: String = text.chars().take(SHOWN_CHARS_MAX).collect();
        shown.push('…');
        shown
    }
}

/// A strictly positive amount of money in minor units, the only kind a payment moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositiveAmount(i64);

impl PositiveAmount {
    pub fn parse(text: &str, currency: Currency) -> Result<Self, AppError> {
        let minor = to_minor_units(parse_decimal(text)?, currency)?;
        Self::from_minor(minor).ok_or_else(|| {
            AppError::bad_input(format!("amount must be greater than 0, got {text}"))
        })
    }

    pub fn from_minor(minor: i64) -> Option<Self> {
        (minor > 0).then_some(Self(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn currencies_carry_their_iso_exponent() {
        assert_eq!(usd().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        assert_eq!(Currency::parse("eur").unwrap().code(), "EUR");
    }

    #[test]
    fn unknown_and_unit_less_currencies_are_rejected() {
        for code in ["", "US", "USDX", "ZZZ", "XAU", "XXX", "€€€", "US1"] {
            assert_eq!(
                Currency::parse(code).unwrap_err().code(),
                "BAD_USER_INPUT",
                "{code}"
            );
        }
    }

    #[test]
    fn amounts_convert_exactly() {
        assert_eq!(PositiveAmount::parse("12.34", usd()).unwrap().minor(), 1234);
        assert_eq!(PositiveAmount::parse("12.3", usd()).unwrap().minor(), 1230);
        assert_eq!(
            PositiveAmount::parse("12.340", usd()).unwrap().minor(),
            1234
        );
        assert_eq!(PositiveAmount::parse("0.01", usd()).unwrap().minor(), 1);
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(PositiveAmount::parse("500", jpy).unwrap().minor(), 500);
        assert_eq!(from_minor_units(1230, usd()).to_string(), "12.30");
        assert_eq!(from_minor_units(-5, usd()).to_string(), "-0.05");
    }

    #[test]
    fn too_many_decimals_are_rejected_not_rounded() {
        let error = PositiveAmount::parse("12.345", usd()).unwrap_err();
        assert!(error.to_string().contains("more decimal places"), "{error}");
        let jpy = Currency::parse("JPY").unwrap();
        assert!(PositiveAmount::parse("1.5", jpy).is_err());
    }

    #[test]
    fn digits_past_decimal_precision_are_rejected_not_rounded() {
        for text in [
            "0.009999999999999999999999999999",
            "1.00000000000000000000000000001",
            "0.0000000000000000000000000000001",
        ] {
            let error = PositiveAmount::parse(text, usd()).unwrap_err();
            assert_eq!(error.code(), "BAD_USER_INPUT", "{text}");
        }
    }

    #[test]
    fn zero_negative_and_malformed_amounts_are_rejected() {
        for text in [
            "0", "0.00", "-1", "-0.01", "", " 1", "1 ", "+1", "1e3", "1,000", "abc", ".5", "5.",
            "0x10", "NaN", "--1", "1.2.3",
        ] {
            assert_eq!(
                PositiveAmount::parse(text, usd()).unwrap_err().code(),
                "BAD_USER_INPUT",
                "{text:?}"
            );
        }
    }

    #[test]
    fn overflow_is_an_error_never_a_wrap() {
        // i64::MAX minor units is 92233720368547758.07 USD.
        assert_eq!(
            PositiveAmount::parse("92233720368547758.07", usd())
                .unwrap()
                .minor(),
            i64::MAX
        );
        for text in [
            "92233720368547758.08",
            "99999999999999999999999999",
            "79228162514264337593543950336",
            &"9".repeat(60),
        ] {
            let error = PositiveAmount::parse(text, usd()).unwrap_err();
            assert_eq!(error.code(), "BAD_USER_INPUT", "{text}");
        }
    }
}
