//! Reading a GraphQL request off HTTP: async-graphql-axum's extractors, with a
//! rejection of ours so that a request that cannot be read answers in the GraphQL
//! error shape with a code, and the Content-Type checked before any of a body is read.

use async_graphql::{BatchRequest, ParseRequestError, Request as GraphQLRequestBody};
use async_graphql_axum::{GraphQLBatchRequest, GraphQLRequest};
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::Limited;

use super::{GRAPHQL_RESPONSE_JSON, REQUEST_BODY_BYTES_MAX, error_response};
use crate::error::AppError;

/// A POST's GraphQL request or batch, read by async-graphql-axum's extractor once the
/// Content-Type says JSON (a form or a multipart body, file uploads, which this API has
/// none of, is refused before anything of it is read) and only up to `bytes_max`.
pub(super) async fn json_batch(
    request: Request,
    bytes_max: usize,
) -> Result<BatchRequest, Response> {
    let accept = accept_only(request.headers());
    if !is_json(request.headers()) {
        return Err(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &AppError::bad_input("POST a JSON body with Content-Type: application/json"),
            &accept,
        ));
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|length| length.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > bytes_max) {
        return Err(too_large(bytes_max, &accept));
    }
    let request = request.map(|body| Body::new(Limited::new(body, bytes_max)));
    match GraphQLBatchRequest::<Unreadable>::from_request(request, &()).await {
        Ok(batch) => Ok(batch.into_inner()),
        Err(Unreadable(error)) => Err(unreadable(
            &error,
            "malformed request body: expected JSON such as {\"query\": \"{ __typename }\"}",
            bytes_max,
            &accept,
        )),
    }
}

/// A GET's GraphQL request, read from the query string by async-graphql-axum.
pub(super) struct QueryString(pub(super) GraphQLRequestBody);

impl<S: Send + Sync> FromRequest<S> for QueryString {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let accept = accept_only(request.headers());
        match GraphQLRequest::<Unreadable>::from_request(request, state).await {
            Ok(request) => Ok(Self(request.into_inner())),
            Err(Unreadable(error)) => Err(unreadable(
                &error,
                "malformed query string: expected ?query=…&variables=…",
                REQUEST_BODY_BYTES_MAX,
                &accept,
            )),
        }
    }
}

/// What async-graphql-axum's extractors could not read.
struct Unreadable(ParseRequestError);

impl From<ParseRequestError> for Unreadable {
    fn from(error: ParseRequestError) -> Self {
        Self(error)
    }
}

impl IntoResponse for Unreadable {
    fn into_response(self) -> Response {
        unreadable(
            &self.0,
            "the request could not be read",
            REQUEST_BODY_BYTES_MAX,
            &HeaderMap::new(),
        )
    }
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

fn too_large(bytes_max: usize, headers: &HeaderMap) -> Response {
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &AppError::bad_input(format!("the request body is larger than {bytes_max} bytes")),
        headers,
    )
}

/// Only what shaping an error needs of the request's headers.
fn accept_only(headers: &HeaderMap) -> HeaderMap {
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
