//! Opaque, typed public ids.
//!
//! A public id is a type prefix and a UUIDv7 in lower-case hex (`acc_0193…`), so
//! `node(id)` can tell what an id names, a wrong-type id is a clear error, and ids sort
//! by creation time, which keyset pagination relies on.

use std::fmt;

use uuid::Uuid;

use crate::error::AppError;

/// What kind of object an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Account,
    Payment,
    LedgerEntry,
    PaymentGroup,
}

impl IdKind {
    const ALL: [IdKind; 4] = [
        IdKind::Account,
        IdKind::Payment,
        IdKind::LedgerEntry,
        IdKind::PaymentGroup,
    ];

    fn prefix(self) -> &'static str {
        match self {
            IdKind::Account => "acc_",
            IdKind::Payment => "pay_",
            IdKind::LedgerEntry => "ent_",
            IdKind::PaymentGroup => "grp_",
        }
    }

    pub fn type_name(self) -> &'static str {
        match self {
            IdKind::Account => "Account",
            IdKind::Payment => "Payment",
            IdKind::LedgerEntry => "LedgerEntry",
            IdKind::PaymentGroup => "PaymentGroup",
        }
    }
}

/// Longest text a public id can be; anything longer is rejected before parsing.
const PUBLIC_ID_LENGTH_MAX: usize = 4 + 32;

/// Splits a public id into its kind and UUID, whatever its kind.
pub fn parse_any(text: &str) -> Result<(IdKind, Uuid), AppError> {
    let malformed = || AppError::bad_input("malformed id: expected an id returned by this API");
    if text.len() > PUBLIC_ID_LENGTH_MAX {
        return Err(malformed());
    }
    let kind = IdKind::ALL
        .into_iter()
        .find(|kind| text.starts_with(kind.prefix()))
        .ok_or_else(malformed)?;
    let hex = &text[kind.prefix().len()..];
    if hex.len() != 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(malformed());
    }
    let uuid = Uuid::try_parse(hex).map_err(|_| malformed())?;
    Ok((kind, uuid))
}

macro_rules! typed_id {
    ($name:ident, $kind:expr) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

        impl $name {
            pub const KIND: IdKind = $kind;

            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses a public id, refusing ids of another kind.
            pub fn parse(text: &str) -> Result<Self, AppError> {
                match parse_any(text)? {
                    (kind, uuid) if kind == Self::KIND => Ok(Self(uuid)),
                    (kind, _) => Err(AppError::bad_input(format!(
                        "expected {} id, got {} id",
                        Self::KIND.type_name(),
                        kind.type_name()
                    ))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", Self::KIND.prefix(), self.0.simple())
            }
        }
    };
}

typed_id!(AccountId, IdKind::Account);
typed_id!(PaymentId, IdKind::Payment);
typed_id!(LedgerEntryId, IdKind::LedgerEntry);
typed_id!(PaymentGroupId, IdKind::PaymentGroup);

/// A tenant. Not exposed through the API, so it has no public form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(pub Uuid);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_its_kind() {
        let id = AccountId::generate();
        let text = id.to_string();
        assert!(text.starts_with("acc_"));
        assert_eq!(AccountId::parse(&text).unwrap(), id);
        let error = PaymentId::parse(&text).unwrap_err();
        assert_eq!(error.code(), "BAD_USER_INPUT");
        assert!(
            error
                .to_string()
                .contains("expected Payment id, got Account id")
        );
    }

    #[test]
    fn rejects_malformed_ids_with_a_plain_message() {
        for text in [
            "",
            "acc_",
            "acc_xyz",
            "foo_0193a5b0c1d27f3e8a4b5c6d7e8f9a0b",
            "acc_0193A5B0C1D27F3E8A4B5C6D7E8F9A0B",
            "acc_0193a5b0-c1d2-7f3e-8a4b-5c6d7e8f9a0b",
            &"a".repeat(10_000),
        ] {
            let error = parse_any(text).unwrap_err();
            assert_eq!(error.code(), "BAD_USER_INPUT", "{text}");
            assert_eq!(
                error.to_string(),
                "malformed id: expected an id returned by this API"
            );
        }
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let first = PaymentId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = PaymentId::generate();
        assert!(first < second);
        assert!(first.0.as_bytes() < second.0.as_bytes());
    }
}
