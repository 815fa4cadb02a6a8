//! Reading GraphQL operations off HTTP, by hand rather than with async-graphql-axum's
//! extractors: they drop `documentId` (persisted documents) and a GET's
//! `operationName`, and cannot tell a hash-only request from an empty one. A request
//! that cannot be read answers in the GraphQL error shape with a code, and the
//! Content-Type is checked before any of a body is read.

use async_graphql::{Extensions, ParseRequestError, Request as GraphQLRequestBody, Variables};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use std::time::Duration;

use super::{GRAPHQL_RESPONSE_JSON, error_response};
use crate::documents::Naming;
use crate::error::AppError;

/// One GraphQL operation as sent over HTTP: the GraphQL-over-HTTP fields, and
/// `documentId` for a document named by its hash (persisted documents).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Operation {
    #[serde(default)]
    pub(super) query: Option<String>,
    #[serde(default)]
    pub(super) operation_name: Option<String>,
    #[serde(default)]
    pub(super) variables: Variables,
    #[serde(default)]
    pub(super) extensions: Extensions,
    #[serde(default)]
    pub(super) document_id: Option<String>,
}

impl Operation {
    /// How the operation names its document; `extensions.persistedQuery` leaves the
    /// extensions, which go on to execution.
    pub(super) fn take_naming(&mut self) -> Naming {
        Naming {
            document_id: self.document_id.take(),
            persisted_query: self.extensions.0.remove("persistedQuery"),
        }
    }

    /// The request async-graphql runs, its document resolved into `query`.
    pub(super) fn into_request(self) -> GraphQLRequestBody {
        let mut request =
            GraphQLRequestBody::new(self.query.unwrap_or_default()).variables(self.variables);
        request.operation_name = self.operation_name;
        request.extensions = self.extensions;
        request
    }
}

/// What a POST carries: one operation, or a batch of them.
pub(super) enum Operations {
    Single(Operation),
    Batch(Vec<Operation>),
}

/// A POST's operation or batch, read once the Content-Type says JSON (a form or a
/// multipart body, file uploads, which this API has none of, is refused before
/// anything of it is read) and only up to `bytes_max`.
pub(super) async fn json_operations(
    request: Request,
    bytes_max: usize,
) -> Result<Operations, Response> {
    let accept = accept_only(request.headers());
    if !is_json(request.headers()) {
        return Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &AppError::bad_input("POST a JSON body with Content-Type: application/json"),
            &accept,
        ));
    }
    if declares_more_than(request.headers(), bytes_max) {
        return Err(refuse_too_large(request, bytes_max).await);
    }
    let body = Body::new(Limited::new(request.into_body(), bytes_max));
    let malformed = "malformed request body: expected JSON such as {\"query\": \"{ __typename }\"}";
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(error) => {
            let error = ParseRequestError::Io(std::io::Error::other(error.to_string()));
            return Err(unreadable(&error, malformed, bytes_max, &accept));
        }
    };
    // A batch is a JSON array; anything else is read as one operation.
    let is_batch = bytes
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|byte| *byte == b'[');
    let parsed = if is_batch {
        serde_json::from_slice(&bytes).map(Operations::Batch)
    } else {
        serde_json::from_slice(&bytes).map(Operations::Single)
    };
    parsed.map_err(|_| {
        error_response(
            StatusCode::BAD_REQUEST,
            &AppError::bad_input(malformed),
            &accept,
        )
    })
}

/// A GET's operation, read from the query string: `query` (or `documentId`, or
/// `extensions` with a persisted query), `operationName`, and `variables` and
/// `extensions` as JSON.
pub(super) fn query_string(query: Option<&str>) -> Result<Operation, AppError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Parameters {
        query: Option<String>,
        operation_name: Option<String>,
        variables: Option<String>,
        extensions: Option<String>,
        document_id: Option<String>,
    }
    let malformed = |what: &str| {
        AppError::bad_input(format!(
            "malformed query string: {what}; expected ?query=…&variables=… (or documentId=…)"
        ))
    };
    let parameters: Parameters = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| malformed("it does not decode"))?;
    // `variables` and `extensions` are JSON objects; empty means none.
    fn object<T: serde::de::DeserializeOwned + Default>(text: Option<String>) -> Option<T> {
        match text.filter(|text| !text.is_empty()) {
            None => Some(T::default()),
            Some(text) => serde_json::from_str(&text).ok(),
        }
    }
    let variables =
        object(parameters.variables).ok_or_else(|| malformed("variables is not a JSON object"))?;
    let extensions = object(parameters.extensions)
        .ok_or_else(|| malformed("extensions is not a JSON object"))?;
    Ok(Operation {
        query: parameters.query,
        operation_name: parameters.operation_name.filter(|name| !name.is_empty()),
        variables,
        extensions,
        document_id: parameters.document_id,
    })
}

/// A body over the limit (refused while it was read, when it came without a length)
/// is 413 like one refused up front; anything else is a malformed request.
fn unreadable(
    error: &ParseRequestError,
    malformed: &str,
    bytes_max: usize,
    headers: &HeaderMap,
) -> Response {
    let too_large_read = match error {
        ParseRequestError::PayloadTooLarge => true,
        ParseRequestError::Io(io) => io.to_string().contains("length limit exceeded"),
        _ => false,
    };
    if too_large_read {
        return too_large(bytes_max, headers);
    }
    error_response(
        StatusCode::BAD_REQUEST,
        &AppError::bad_input(malformed),
        headers,
    )
}

/// The most of a body refused for its declared length that is still read, and for how
/// long, before the 413 goes out. A server that answers while the client is still
/// sending closes the connection with bytes unread, the kernel then resets it, and the
/// client may see "connection reset" instead of the answer (nginx's lingering close
/// exists for this). Reading the refused body and dropping it as it comes costs a
/// copy and lets the client read why; a body declared larger than this is not worth
/// reading, and its sender may see the reset.
const REFUSED_BODY_READ_BYTES_MAX: usize = 8 * 1024 * 1024;
const REFUSED_BODY_READ_TIME: Duration = Duration::from_secs(5);

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse().ok())
}

/// Answers 413 to a request whose Content-Length is over `bytes_max`, when its body has
/// been read (and dropped) as far as is reasonable, so that the client reads the answer.
pub(super) async fn refuse_too_large(request: Request, bytes_max: usize) -> Response {
    let accept = accept_only(request.headers());
    if declared_length(request.headers())
        .is_some_and(|length| length <= REFUSED_BODY_READ_BYTES_MAX)
    {
        let mut body = request.into_body();
        let read_through = async {
            let mut bytes_read = 0;
            while bytes_read <= REFUSED_BODY_READ_BYTES_MAX {
                match body.frame().await {
                    Some(Ok(frame)) => bytes_read += frame.data_ref().map_or(0, |data| data.len()),
                    Some(Err(_)) | None => break,
                }
            }
        };
        // A client that stops sending has its connection closed at the end of the time.
        let _ = tokio::time::timeout(REFUSED_BODY_READ_TIME, read_through).await;
    }
    too_large(bytes_max, &accept)
}

/// Whether a request declares a body longer than `bytes_max`.
pub(super) fn declares_more_than(headers: &HeaderMap, bytes_max: usize) -> bool {
    declared_length(headers).is_some_and(|length| length > bytes_max)
}

fn too_large(bytes_max: usize, headers: &HeaderMap) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &body_too_large(bytes_max),
        headers,
    )
}

pub(super) fn body_too_large(bytes_max: usize) -> AppError {
    AppError::bad_input(format!("the request body is larger than {bytes_max} bytes"))
}

/// Only what shaping an error needs of the request's headers.
pub(super) fn accept_only(headers: &HeaderMap) -> HeaderMap {
    let mut accept = HeaderMap::new();
    if let Some(value) = headers.get(header::ACCEPT) {
        accept.insert(header::ACCEPT, value.clone());
    }
    accept
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|content_type| {
            let media_type = content_type.split(';').next().unwrap_or("").trim();
            media_type.eq_ignore_ascii_case("application/json")
                || media_type.eq_ignore_ascii_case(GRAPHQL_RESPONSE_JSON)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_string_reads_every_field_and_refuses_garbage() {
        let operation = query_string(Some(
            "query=query%20A%20%7B%20__typename%20%7D&operationName=A&variables=%7B%22n%22%3A1%7D&documentId=sha256%3Aab&extensions=%7B%22x%22%3A1%7D",
        ))
        .unwrap();
        assert_eq!(operation.query.as_deref(), Some("query A { __typename }"));
        assert_eq!(operation.operation_name.as_deref(), Some("A"));
        assert_eq!(operation.variables.len(), 1);
        assert_eq!(operation.document_id.as_deref(), Some("sha256:ab"));
        assert!(operation.extensions.contains_key("x"));

        // Empty parameters are absent ones; a hash-only request has no query at all.
        let operation = query_string(Some("variables=&operationName=&extensions=")).unwrap();
        assert!(operation.query.is_none() && operation.operation_name.is_none());
        assert!(operation.variables.is_empty());
        assert!(query_string(None).unwrap().query.is_none());

        for garbage in ["variables=%7Bnope", "variables=5", "extensions=%5B1%5D"] {
            let error = query_string(Some(garbage)).unwrap_err();
            assert_eq!(error.code(), "BAD_USER_INPUT", "{garbage}");
        }
    }
}
