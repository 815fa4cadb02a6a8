//! Metadata on the way out (as stored) and in (a filter to find payments by).

use async_graphql::InputObject;

use crate::error::{AppError, AppResult};
use crate::graphql::scalars::Json;
use crate::ledger::metadata::Metadata;

/// Metadata as stored, for output.
pub(super) fn stored_metadata(text: Option<&str>) -> AppResult<Option<Json>> {
    text.map(|text| Metadata::from_stored(text).map(Json))
        .transpose()
}

/// One key/value pair to find payments by.
#[derive(InputObject)]
pub struct MetadataFilter {
    pub key: String,
    pub value: String,
}

impl MetadataFilter {
    pub(crate) fn into_pair(self) -> AppResult<(String, String)> {
        if self.key.is_empty()
            || self.key.len() > Metadata::KEY_BYTES_MAX
            || self.value.len() > Metadata::VALUE_BYTES_MAX
        {
            return Err(AppError::bad_input(format!(
                "a metadata key is 1 to {} bytes and a value at most {}",
                Metadata::KEY_BYTES_MAX,
                Metadata::VALUE_BYTES_MAX
            )));
        }
        Ok((self.key, self.value))
    }
}
